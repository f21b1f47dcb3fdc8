"""Traces with OpenTelemetry: off unless an OTLP endpoint is configured; then one trace per
request across every hop, exported over OTLP/gRPC.

Turned on by the standard variables, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
`OTEL_EXPORTER_OTLP_ENDPOINT` (e.g. `http://otel-collector:4317`), unless `OTEL_SDK_DISABLED` is
`true`. The SDK reads the rest of the standard environment itself: the sampler
(`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`; parent-based, always on, by default), the
batching (`OTEL_BSP_*`), the exporter's TLS, headers and timeout (`OTEL_EXPORTER_OTLP_*`), extra
resource attributes (`OTEL_RESOURCE_ATTRIBUTES`). `service.name` is the process's own.

While traces are on, a process opens:

- a SERVER span for every call each gRPC server answers (`build_server`: the first of its
  interceptors, so refusals are traced too), continuing the caller's trace from the W3C
  `traceparent` in the call's metadata;
- a CLIENT span for every call each channel makes (`open_channel`), and sends `traceparent` on;
- a SERVER span for every HTTP request of the gateway and the dashboard, named by its route
  template (`POST /v1/audio/speech`; services/common/web.py). Those two are the edges: they
  start a new trace for every request and believe no `traceparent` from outside, so no client
  chooses trace ids or forces sampling.

Health checks and reflection are never traced. Spans carry methods, routes, statuses and
durations, never a request's body, its headers (keys travel in them) or its query's values (a
signed output URL is a credential). Log lines written in a sampled span carry `trace_id` and
`span_id` beside `request_id` (services/common/logs.py).

When traces are off nothing of this is installed: no interceptor, no middleware, not even the
SDK's import; FastAPI's own telemetry is told off.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

import grpc
from opentelemetry import propagate, trace
from opentelemetry.context import Context, get_current
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)

from services.common.interceptors import ALWAYS_OPEN

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

_log = logging.getLogger("tracing")

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
NAMESPACE = "kokoropay"
# The provider while traces are on in this process; None while they are off.
_provider: trace.TracerProvider | None = None
# At an edge, the propagator that OutgoingOnly wraps, put back when traces stop.
_propagator_before_edge: TextMapPropagator | None = None


def endpoint(environ: Mapping[str, str] = os.environ) -> str | None:
    """Where spans go, or None: traces are off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    return next((environ[name] for name in ENDPOINT_VARIABLES if environ.get(name)), None)


@contextmanager
def traces(service: str, *, edge: bool = False) -> Iterator[trace.TracerProvider | None]:
    """Traces for the process `service` for the block, flushed when it ends; nothing when no
    endpoint is configured. `edge`: the process serves the internet (gateway, dashboard)."""
    provider = start_tracing(service, edge=edge)
    try:
        yield provider
    finally:
        stop_tracing()


def start_tracing(service: str, *, edge: bool = False) -> trace.TracerProvider | None:
    """Export this process's spans over OTLP when an endpoint is configured; returns the
    provider, or None when traces stay off. Call before servers and channels are built."""
    target = endpoint()
    if target is None:
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_NAMESPACE, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: service, SERVICE_NAMESPACE: NAMESPACE}),
        # Flushed by stop_tracing, after the drain, not by an atexit hook at an unknown time.
        shutdown_on_exit=False,
    )
    provider.add_span_processor(redact_queries())
    # The exporter reads the endpoint, TLS and headers from the same variables.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    use_provider(provider, edge=edge)
    _log.info("traces on: spans go to %s over OTLP", target, extra={"otlp_endpoint": target})
    return provider


def stop_tracing() -> None:
    """Export what is left (bounded by the exporter's timeout) and stop; nothing when off."""
    provider = _provider
    if provider is None:
        return
    use_provider(None)
    shutdown = getattr(provider, "shutdown", None)
    if shutdown is not None:
        shutdown()


def use_provider(provider: trace.TracerProvider | None, *, edge: bool = False) -> None:
    """Trace with `provider` (None: stop) in what is built from now on: servers, channels,
    HTTP apps; put trace ids in log lines; at an `edge`, believe no incoming trace context.
    start_tracing calls it; tests hand in a provider of their own."""
    global _provider, _propagator_before_edge
    _provider = provider
    for handler in logging.getLogger().handlers:
        if provider is None:
            handler.removeFilter(_TRACE_IDS)
        else:
            handler.addFilter(_TRACE_IDS)
    if _propagator_before_edge is not None:
        propagate.set_global_textmap(_propagator_before_edge)
        _propagator_before_edge = None
    if provider is not None and edge:
        _propagator_before_edge = propagate.get_global_textmap()
        propagate.set_global_textmap(OutgoingOnly(_propagator_before_edge))


def provider() -> trace.TracerProvider | None:
    """The provider while traces are on, else None."""
    return _provider


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """What `build_server` installs first: a SERVER span per call, an error when the call ends
    with a code that is the server's fault (INTERNAL, UNAVAILABLE, …; a refusal such as
    FAILED_PRECONDITION is not). Empty while traces are off."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(tracer_provider=_provider, filter_=_traced)]


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """What `open_channel` installs first: a CLIENT span per call, whose context travels in the
    call's metadata. Empty while traces are off."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    interceptors: list[grpc.aio.ClientInterceptor] = aio_client_interceptors(
        tracer_provider=_provider, filter_=_traced
    )
    return interceptors


def span(name: str, attributes: Mapping[str, str] | None = None) -> AbstractContextManager[object]:
    """A span of our own around work that no request opened (a prediction's run on a worker),
    the root of its calls' spans; nothing while traces are off."""
    if _provider is None:
        return nullcontext()
    tracer = _provider.get_tracer(NAMESPACE)
    return tracer.start_as_current_span(name, attributes=attributes)


def _traced(details: Any) -> bool:
    """Health checks and reflection are not traced (the probes would fill the traces)."""
    method = details.method
    if isinstance(method, bytes):
        method = method.decode()
    return not str(method).startswith(ALWAYS_OPEN)


class OutgoingOnly(TextMapPropagator):
    """Sends the current trace on (inject) and believes none that arrives (extract): what an
    edge does with a `traceparent` from the internet."""

    def __init__(self, sends: TextMapPropagator) -> None:
        self._sends = sends

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        return context if context is not None else get_current()

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        self._sends.inject(carrier, context, setter)

    @property
    def fields(self) -> set[str]:
        return self._sends.fields


class _TraceIds(logging.Filter):
    """Adds the current span's ids to each log record (a sampled span's: others are exported
    nowhere); JsonFormatter writes them beside the request id."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.trace_flags.sampled:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True


_TRACE_IDS = _TraceIds()


def redact_queries() -> SpanProcessor:
    """A span processor that keeps a URL's query parameter names but not their values: the
    output URL's `signature` opens a customer's audio to whoever reads the span."""
    from opentelemetry.sdk.trace import SpanProcessor

    class RedactQueries(SpanProcessor):
        def on_start(self, span: Span, parent_context: Context | None = None) -> None:
            query = (span.attributes or {}).get("url.query")
            if isinstance(query, str) and query:
                pairs = parse_qsl(query, keep_blank_values=True)
                span.set_attribute("url.query", urlencode([(key, "REDACTED") for key, _ in pairs]))

        def on_end(self, span: ReadableSpan) -> None:
            pass

    return RedactQueries()
