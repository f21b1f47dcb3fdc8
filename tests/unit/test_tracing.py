"""Traces (services/common/tracing.py): off by default with nothing installed; on, one trace
across client and server over a real mutual-TLS socket, HTTP spans named by route with no key,
header or query value in them, and trace ids in the log lines. Spans are read back from an
in-memory exporter; the whole mesh exporting over OTLP is tests/e2e/test_tracing.py."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import grpc
import httpx
import pytest
from google.protobuf import wrappers_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from services.common import tracing
from services.common.logs import JsonFormatter
from services.common.server import build_server, server_credentials
from tests.support.gateway_fakes import GOOD_KEY, fake_mesh
from tests.support.otlp import otlp_receiver
from tests.support.paths import REPO_ROOT
from tests.support.pki import channel, identity
from tests.support.probe_service import SERVICE, call, probe_spec, stream

SPEECH = {"model": "tts-1", "input": "Hello there.", "voice": "alloy"}
# A client's own trace context, which the edge must not believe.
CLIENTS_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENTS_TRACEPARENT = f"00-{CLIENTS_TRACE}-b7ad6b7169203331-01"


class Records(logging.Handler):
    """The JSON lines written, formatted as the services format them, when they are written."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter("test"))
        self.written: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.written.append(json.loads(self.format(record)))

    def lines(self, logger: str) -> list[dict[str, object]]:
        return [line for line in self.written if line["logger"] == logger]


@pytest.fixture
def logs() -> Iterator[Records]:
    """Log records at INFO; installed before traces are, as the services' mains do."""
    root = logging.getLogger()
    handler, level = Records(), root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


def _exporting_to(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(tracing.redact_queries())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def spans(logs: Records) -> Iterator[InMemorySpanExporter]:
    """Traces on, for what is built in the test; the spans as they end."""
    exporter = InMemorySpanExporter()
    tracing.use_provider(_exporting_to(exporter))
    yield exporter
    tracing.use_provider(None)


@pytest.fixture
async def probe(spans: InMemorySpanExporter) -> AsyncIterator[grpc.aio.Channel]:
    """The probe service served as every service is, and a channel to it as the gateway, both
    built while traces are on."""
    built = build_server(probe_spec())
    built.readiness.ready = True
    port = built.server.add_secure_port("127.0.0.1:0", server_credentials(identity("ledger")))
    await built.server.start()
    gateway = channel(f"127.0.0.1:{port}", "gateway")
    yield gateway
    await gateway.close()
    await built.server.stop(None)


def _one(spans: InMemorySpanExporter, kind: SpanKind, name: str) -> ReadableSpan:
    [found] = [s for s in spans.get_finished_spans() if s.kind == kind and s.name == name]
    return found


def _trace_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


def test_traces_are_on_only_with_an_otlp_endpoint() -> None:
    assert tracing.endpoint({}) is None
    general = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}
    assert tracing.endpoint(general) == "http://collector:4317"
    just_traces = {**general, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4317"}
    assert tracing.endpoint(just_traces) == "http://traces:4317"
    assert tracing.endpoint({**just_traces, "OTEL_SDK_DISABLED": "true"}) is None


# Run in a process of its own: what is imported and installed there is what the mesh runs.
_TRACES_OFF = """
import asyncio, sys
import httpx
from google.protobuf import wrappers_pb2
from services.common import tracing
from services.common.server import build_server, server_credentials
from tests.support.gateway_fakes import GOOD_KEY, fake_mesh
from tests.support.pki import channel, identity
from tests.support.probe_service import call, probe_spec

async def main():
    with tracing.traces("gateway", edge=True) as provider:
        assert provider is None
        assert tracing.server_interceptors() == [] and tracing.client_interceptors() == []
        built = build_server(probe_spec())
        built.readiness.ready = True
        port = built.server.add_secure_port("127.0.0.1:0", server_credentials(identity("ledger")))
        await built.server.start()
        probe = channel(f"127.0.0.1:{port}", "gateway")
        app = fake_mesh().app
        loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk",
            "opentelemetry.instrumentation", "opentelemetry.exporter")))
        assert not loaded, loaded

        # Someone else's provider, set after the fact, sees nothing from what was built off.
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        exporter = InMemorySpanExporter()
        late = TracerProvider()
        late.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(late)
        await call(probe, "Echo")(wrappers_pb2.StringValue(), timeout=5)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
            answer = await http.post("/v1/audio/speech", json={"model": "tts-1",
                "input": "Hi.", "voice": "alloy"}, headers={"Authorization": "Bearer " + GOOD_KEY})
            assert answer.status_code == 200, answer.text
        await probe.close()
        await built.server.stop(None)
        assert exporter.get_finished_spans() == (), exporter.get_finished_spans()
    print("nothing traced")

asyncio.run(main())
"""


def test_with_traces_off_nothing_is_installed_and_nothing_traced() -> None:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", _TRACES_OFF],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "nothing traced" in result.stdout


_TRACES_ON = """
import logging
from services.common import tracing
from services.common.logs import configure_logging

configure_logging("probe-process")
with tracing.traces("probe-process") as provider:
    assert provider is not None
    with tracing.span("run prediction", {"kokoropay.prediction_id": "pred_1"}):
        logging.getLogger("probe").info("inside")
"""


async def test_the_standard_variables_turn_traces_on_and_a_stop_flushes_them() -> None:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    async with otlp_receiver() as receiver:
        # A batch delay far longer than the run: only the flush at stop can deliver the span.
        environment |= {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "600000",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _TRACES_ON,
            cwd=REPO_ROOT,
            env=environment,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 0, stderr.decode()[-3000:]
    [span] = receiver.spans
    assert (span.service, span.name, span.parent_id) == ("probe-process", "run prediction", "")
    assert span.attributes["resource.service.namespace"] == "kokoropay"
    assert span.attributes["kokoropay.prediction_id"] == "pred_1"
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    [inside] = [line for line in lines if line["msg"] == "inside"]
    assert (inside["trace_id"], inside["span_id"]) == (span.trace_id, span.span_id)


def test_spans_do_nothing_while_traces_are_off() -> None:
    with tracing.span("run prediction") as opened:
        assert opened is None


async def test_a_call_is_one_trace_from_the_client_span_to_the_server_span(
    probe: grpc.aio.Channel, spans: InMemorySpanExporter, logs: Records
) -> None:
    echoed = await call(probe, "Echo")(wrappers_pb2.StringValue(), timeout=5)

    client = _one(spans, SpanKind.CLIENT, f"/{SERVICE}/Echo")
    server = _one(spans, SpanKind.SERVER, f"/{SERVICE}/Echo")
    assert server.context is not None and client.context is not None
    assert server.context.trace_id == client.context.trace_id
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    assert server.attributes is not None and server.attributes["rpc.method"] == "Echo"
    # The access interceptor let the traceparent through; the request id still travels.
    [line] = [line for line in logs.lines("rpc") if line.get("request_id") == echoed.value]
    assert line["trace_id"] == _trace_id(server)
    assert line["span_id"] == format(server.context.span_id, "016x")


async def test_each_side_reports_the_status_the_call_ended_with(
    probe: grpc.aio.Channel, spans: InMemorySpanExporter
) -> None:
    for method in ("Crash", "Refuse"):  # a bug (INTERNAL), a domain refusal (rich status)
        with pytest.raises(grpc.aio.AioRpcError):
            await call(probe, method)(wrappers_pb2.StringValue(), timeout=5)

    crashed = _one(spans, SpanKind.SERVER, f"/{SERVICE}/Crash")
    assert crashed.status.status_code == StatusCode.ERROR
    assert crashed.attributes is not None
    assert crashed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]
    refused = _one(spans, SpanKind.SERVER, f"/{SERVICE}/Refuse")
    # The caller's fault is no error of the server's; the client sees a failed call.
    assert refused.status.status_code != StatusCode.ERROR
    assert refused.attributes is not None
    expected = grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert refused.attributes["rpc.grpc.status_code"] == expected
    assert _one(spans, SpanKind.CLIENT, f"/{SERVICE}/Refuse").status.status_code == StatusCode.ERROR


async def test_a_stream_read_to_its_end_ends_both_spans(
    probe: grpc.aio.Channel, spans: InMemorySpanExporter
) -> None:
    counting = stream(probe, "Count")(wrappers_pb2.StringValue(value="3"), timeout=5)
    # read(), as the gateway reads Synthesize.
    values = []
    while (message := await counting.read()) is not grpc.aio.EOF:
        values.append(message.value)
    assert values == ["0", "1", "2"]
    client = _one(spans, SpanKind.CLIENT, f"/{SERVICE}/Count")
    server = _one(spans, SpanKind.SERVER, f"/{SERVICE}/Count")
    assert server.parent is not None and client.context is not None
    assert server.parent.span_id == client.context.span_id


async def test_health_checks_are_not_traced(
    probe: grpc.aio.Channel, spans: InMemorySpanExporter
) -> None:
    checked = await health_pb2_grpc.HealthStub(probe).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    assert checked.status == health_pb2.HealthCheckResponse.SERVING
    assert spans.get_finished_spans() == ()


@pytest.fixture
def edge_spans(logs: Records, monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Traces on at an edge, with an operator asking OpenTelemetry for every header."""
    for side in ("REQUEST", "RESPONSE"):
        monkeypatch.setenv(f"OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_{side}", ".*")
    exporter = InMemorySpanExporter()
    tracing.use_provider(_exporting_to(exporter), edge=True)
    yield exporter
    tracing.use_provider(None)


@pytest.fixture
async def traced_gateway(edge_spans: InMemorySpanExporter) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=fake_mesh().app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        yield client


async def test_an_http_request_is_a_new_trace_named_by_its_route_with_no_secret_in_it(
    traced_gateway: httpx.AsyncClient, edge_spans: InMemorySpanExporter, logs: Records
) -> None:
    answer = await traced_gateway.post(
        "/v1/audio/speech",
        json=SPEECH,
        headers={
            "Authorization": f"Bearer {GOOD_KEY}",
            "Cookie": "session=secret",
            "traceparent": CLIENTS_TRACEPARENT,
        },
    )
    assert answer.status_code == 200, answer.text

    request = _one(edge_spans, SpanKind.SERVER, "POST /v1/audio/speech")
    attributes = dict(request.attributes or {})
    assert attributes["http.route"] == "/v1/audio/speech"
    assert attributes["http.response.status_code"] == 200
    # The edge starts the trace: the client's traceparent is not believed.
    assert request.parent is None and _trace_id(request) != CLIENTS_TRACE
    text = json.dumps(attributes)
    for secret in (GOOD_KEY, "secret", "Hello there", "header"):
        assert secret not in text, attributes
    # The access log line names the trace beside the request id.
    [line] = logs.lines("gateway.access")
    assert line["request_id"] == answer.headers["x-request-id"]
    assert line["trace_id"] == _trace_id(request)


async def test_an_output_urls_signature_never_reaches_a_span(
    traced_gateway: httpx.AsyncClient, edge_spans: InMemorySpanExporter
) -> None:
    await traced_gateway.get("/v1/prediction/pred_1/output?expires=1&signature=c0ffee")

    download = _one(edge_spans, SpanKind.SERVER, "GET /v1/prediction/{prediction_id}/output")
    attributes = dict(download.attributes or {})
    assert attributes["url.query"] == "expires=REDACTED&signature=REDACTED"
    assert "c0ffee" not in json.dumps(attributes)
