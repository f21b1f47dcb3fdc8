"""Prometheus metrics for every gRPC call we serve or make, under go-grpc-prometheus' names.

Operators' dashboards and alerts already speak these names, so we use them as they are:

| metric                                   | labels                                           |
|------------------------------------------|--------------------------------------------------|
| `grpc_server_started_total`              | grpc_service, grpc_method, grpc_type             |
| `grpc_server_handled_total`              | grpc_service, grpc_method, grpc_type, grpc_code  |
| `grpc_server_handling_seconds` histogram | grpc_service, grpc_method, grpc_type             |
| `grpc_client_…` the same three           | the same                                         |

`grpc_type` is `unary` or `server_stream` (the mesh has no client or bidirectional streams;
those pass through uncounted). `grpc_code` is spelled as Go spells it (`OK`, `NotFound`,
`Canceled`, `ResourceExhausted`, …), as go-grpc-prometheus writes it and the usual alerts match
it. A stream is handled when it ends, with the code it ended with: a stream the client
abandons is `Canceled`, one past its deadline `DeadlineExceeded`; its handling time is its whole
length, which is why the buckets reach minutes (filter on `grpc_type` to read unary latency).

Labels stay bounded: a method is counted only once a handler exists for it (an unknown method
answers UNIMPLEMENTED uncounted, so a caller cannot invent label values), and nothing from a
request (accounts, keys, text) is ever a label. Each method's labelled series are made once and
cached; a call only increments and observes.

The server interceptor is the first one `build_server` installs, so it counts every answer:
readiness and access refusals included. `open_channel` installs the client one on every channel.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from functools import partial
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from prometheus_client import Counter, Histogram

from services.common.interceptors import Continuation, wrap_handler

UNARY = "unary"
SERVER_STREAM = "server_stream"
LABELS = ("grpc_service", "grpc_method", "grpc_type")
# From a 1 ms ledger call to a synthesis streaming for minutes.
HANDLING_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)


def _go_name(code: grpc.StatusCode) -> str:
    if code is grpc.StatusCode.CANCELLED:
        return "Canceled"  # Go's spelling
    if code is grpc.StatusCode.OK:
        return "OK"
    return "".join(word.capitalize() for word in code.name.split("_"))


CODE_NAMES: dict[grpc.StatusCode, str] = {code: _go_name(code) for code in grpc.StatusCode}


class MethodSeries:
    """One method's labelled series, made once: a call only increments and observes."""

    __slots__ = ("started", "handling", "_handled", "_handled_by_code", "_labels")

    def __init__(self, side: RpcMetrics, labels: tuple[str, str, str]) -> None:
        self.started = side.started.labels(*labels)
        self.handling = side.handling.labels(*labels)
        self._handled = side.handled
        self._labels = labels
        self._handled_by_code: dict[grpc.StatusCode, Any] = {}

    def handled(self, code: grpc.StatusCode) -> Any:
        child = self._handled_by_code.get(code)
        if child is None:
            child = self._handled.labels(*self._labels, CODE_NAMES[code])
            self._handled_by_code[code] = child
        return child

    def finish(self, code: grpc.StatusCode, seconds: float) -> None:
        self.handled(code).inc()
        self.handling.observe(seconds)

    def observe_server_call(self, request: Any, context: grpc.aio.ServicerContext) -> _ServerCall:
        return _ServerCall(self, context)


class RpcMetrics:
    """The three metric families of one side (server or client), and the series per method."""

    def __init__(self, side: str) -> None:
        self.started = Counter(f"grpc_{side}_started", f"RPCs started on the {side}.", LABELS)
        self.handled = Counter(
            f"grpc_{side}_handled",
            f"RPCs completed on the {side}, whatever their status.",
            (*LABELS, "grpc_code"),
        )
        self.handling = Histogram(
            f"grpc_{side}_handling_seconds",
            f"Seconds from the start of an RPC to its status, on the {side}"
            " (a stream: its whole length).",
            LABELS,
            buckets=HANDLING_BUCKETS,
        )
        # Keyed by the method path as gRPC hands it over (str or bytes) and the RPC type.
        self._series: dict[tuple[str | bytes, str], MethodSeries] = {}

    def series(self, method: str | bytes, rpc_type: str) -> MethodSeries:
        found = self._series.get((method, rpc_type))
        if found is None:
            service, name = _split(method)
            found = MethodSeries(self, (service, name, rpc_type))
            self._series[(method, rpc_type)] = found
        return found


def _split(method: str | bytes) -> tuple[str, str]:
    """`/package.Service/Method` → (`package.Service`, `Method`)."""
    path = method.decode() if isinstance(method, bytes) else method
    service, _, name = path.lstrip("/").rpartition("/")
    return service, name


SERVER = RpcMetrics("server")
CLIENT = RpcMetrics("client")


# --- server side ------------------------------------------------------------------------------


def _rpc_type(handler: grpc.RpcMethodHandler) -> str | None:
    if handler.unary_unary is not None:
        return UNARY
    if handler.unary_stream is not None:
        return SERVER_STREAM
    return None


class _ServerCall:
    """Entered around one served call (services/common/interceptors.wrap_handler)."""

    __slots__ = ("_series", "_context", "_started")

    def __init__(self, series: MethodSeries, context: grpc.aio.ServicerContext) -> None:
        self._series = series
        self._context = context
        self._started = 0.0

    async def __aenter__(self) -> None:
        self._series.started.inc()
        self._started = time.perf_counter()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        elapsed = time.perf_counter() - self._started
        self._series.finish(_served_code(self._context, error), elapsed)
        return False


def _served_code(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    """The status the call ends with: the one set (abort, set_code), else what the exception
    makes of it."""
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        # gRPC cancels the handler's task when the client goes or the deadline passes.
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN  # what gRPC answers for an exception nobody mapped
    return grpc.StatusCode.OK


class ServerMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every call the server answers."""

    def __init__(self, service_names: Iterable[str] = ()) -> None:
        # Each declared method's series exist from the start, at zero, so a rate reads 0 before
        # the first call instead of nothing.
        for service_name in service_names:
            service = descriptor_pool.Default().FindServiceByName(service_name)
            for method in service.methods:
                rpc_type = SERVER_STREAM if method.server_streaming else UNARY
                if not method.client_streaming:
                    path = f"/{service.full_name}/{method.name}"
                    SERVER.series(path, rpc_type).handled(grpc.StatusCode.OK)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: UNIMPLEMENTED, and its name never becomes a label
        rpc_type = _rpc_type(handler)
        if rpc_type is None:
            return handler
        series = SERVER.series(handler_call_details.method, rpc_type)
        return wrap_handler(handler, series.observe_server_call)


# --- client side ------------------------------------------------------------------------------

# Tasks reading a finished stream's status; held here so none is collected before it records.
_reading_status: set[asyncio.Task[None]] = set()


class _ClientUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        series = CLIENT.series(client_call_details.method, UNARY)
        series.started.inc()
        started = time.perf_counter()
        call = await continuation(client_call_details, request)
        # Waiting here adds no task (the interceptors already run in one of their own), and
        # the caller awaiting the same call after us gets its response or its error as before.
        try:
            await call
        except grpc.aio.AioRpcError as error:
            code = error.code()
        except BaseException as error:
            # The caller went (cancelled), or the call broke before any status: counted, raised.
            cancelled = isinstance(error, asyncio.CancelledError)
            code = grpc.StatusCode.CANCELLED if cancelled else grpc.StatusCode.UNKNOWN
            series.finish(code, time.perf_counter() - started)
            raise
        else:
            code = grpc.StatusCode.OK
        series.finish(code, time.perf_counter() - started)
        return call


class _ClientUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        series = CLIENT.series(client_call_details.method, SERVER_STREAM)
        series.started.inc()
        started = time.perf_counter()
        call = await continuation(client_call_details, request)
        # The caller reads the stream itself (read() or async for); its end, however it comes
        # (the last message, an error, a cancel), is the call's done callback.
        call.add_done_callback(partial(_stream_ended, series, started))
        return call


def _stream_ended(series: MethodSeries, started: float, call: grpc.aio.Call) -> None:
    elapsed = time.perf_counter() - started
    if call.cancelled():
        series.finish(grpc.StatusCode.CANCELLED, elapsed)
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # the loop is gone (a call collected at exit): nobody to count for
        return
    # The status is known by now, but grpc.aio only hands it out to an await.
    task = loop.create_task(_record_stream_status(series, elapsed, call))
    _reading_status.add(task)
    task.add_done_callback(_reading_status.discard)


async def _record_stream_status(series: MethodSeries, elapsed: float, call: grpc.aio.Call) -> None:
    series.finish(await call.code(), elapsed)


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """What `open_channel` installs first on every channel."""
    return [_ClientUnaryUnary(), _ClientUnaryStream()]
