"""The outermost layer of every HTTP exchange: request id, retry hint, timings, access log,
and the request's metrics.

It wraps the whole application, Starlette's own error middleware included, so even a 500 or a
413 carries `x-request-id`, and the request id is in `request_id_var` for everything below it:
log lines and the metadata of every gRPC call (services/common/channels.py). Phases timed with
`timed()` before the response starts are reported in a `server-timing` header, so a client can
tell the gateway's own cost (auth, reserve) from the wait for the model (synth). Headers that
the serving layer learns on the way and that belong on the answer whatever it turns out to be
(the key's rate-limit counts: a 200, a 400, a 429 alike) are added with
`add_response_headers()`.

Each exchange is counted once its response is over, by route template (`scope["route"]`, which
routing sets; a request refused before routing, such as a 413, is matched against the routes
here; one that matches none is `other`), method and status, and timed from its arrival to its
response's last byte (metrics.py). The arrival time is left in the request's state
(`ARRIVED_AT`) for the first-audio histogram (delivery.py).
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.logs import request_id_var
from services.gateway import metrics
from services.gateway.errors import error_response, should_retry

REQUEST_ID_HEADER = "x-request-id"
# The request's state key of its arrival, in time.perf_counter() seconds.
ARRIVED_AT = "arrived_at"
# Forwarded into gRPC metadata, logs and ledger keys (at most 128 characters), so only short,
# plain tokens are taken from clients.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")

_log = logging.getLogger("gateway.access")
# Milliseconds per phase of the current request; the dict is shared with the request's tasks.
_timings: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar(
    "gateway_timings", default=None
)

# Headers for the current request's answer, whatever its status; shared like the timings.
_extra_headers: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "gateway_extra_headers", default=None
)


def add_response_headers(headers: Mapping[str, str]) -> None:
    """Put `headers` on the current request's answer, an error answer included; a header the
    response sets itself wins."""
    extra = _extra_headers.get()
    if extra is not None:
        extra.update(headers)


@contextmanager
def timed(phase: str) -> Iterator[None]:
    """Adds the block's duration to the request's `server-timing` entry for `phase`."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings = _timings.get()
        if timings is not None:
            elapsed = (time.perf_counter() - started) * 1e3
            timings[phase] = timings.get(phase, 0.0) + elapsed


def _server_timing(timings: dict[str, float]) -> str:
    return ", ".join(f"{phase};dur={ms:.2f}" for phase, ms in timings.items())


def request_id_of(scope: Scope) -> tuple[str, bool]:
    """The request's id and whether the gateway generated it (rather than the client)."""
    state = scope.get("state", {})
    return state.get("request_id", ""), state.get("request_id_is_ours", True)


def route_template(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The template of the route that served the request (`/v1/prediction/{prediction_id}`),
    never its path: a path a client makes up must not become a series of its own."""
    route = scope.get("route")
    if route is None:
        # Refused before routing (a 413), or no route at all (a 404): match the routes here.
        route = next((r for r in routes if r.matches(scope)[0] is not Match.NONE), None)
    template = getattr(route, "path_format", None)
    return template if isinstance(template, str) else metrics.OTHER_ROUTE


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute] = ()) -> None:
        self.app = app
        # The application's routes, for naming a request refused before routing.
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get(REQUEST_ID_HEADER)
        is_ours = incoming is None or not _SANE_REQUEST_ID.match(incoming)
        request_id = uuid.uuid4().hex if is_ours else str(incoming)
        started = time.perf_counter()
        scope.setdefault("state", {}).update(
            request_id=request_id, request_id_is_ours=is_ours, **{ARRIVED_AT: started}
        )
        token = request_id_var.set(request_id)
        timings: dict[str, float] = {}
        timings_token = _timings.set(timings)
        extra_headers: dict[str, str] = {}
        extra_headers_token = _extra_headers.set(extra_headers)
        status = 0
        ended: float | None = None

        async def send_with_headers(message: Message) -> None:
            nonlocal status, ended
            if message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    ended = time.perf_counter()
            elif message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
                retry = should_retry(status)
                if retry is not None and "x-should-retry" not in headers:
                    headers["x-should-retry"] = "true" if retry else "false"
                if timings:
                    headers["server-timing"] = _server_timing(timings)
                for name, value in extra_headers.items():
                    headers.setdefault(name, value)
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            # A stream cut short has no last message: it ended when the application returned.
            finished = time.perf_counter() if ended is None else ended
            route = route_template(scope, self.routes)
            metrics.record_request(route, scope["method"], status, finished - started)
            _log.info(
                "%s %s %d",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1e3, 2),
                },
            )
            _extra_headers.reset(extra_headers_token)
            _timings.reset(timings_token)
            request_id_var.reset(token)


class BodyLimitMiddleware:
    """Refuses a request body over `limit` bytes with 413 in the path's error envelope.

    A Content-Length over the limit is refused before a byte of the body is read; a chunked
    body is counted as it arrives and refused as soon as it passes the limit (FastAPI passes an
    HTTPException raised while it reads the body on to the error handlers, which answer JSON).
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _detail(self) -> str:
        return f"request body is larger than {self.limit} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            response = error_response(413, self._detail(), path=scope["path"])
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, self._detail())
            return message

        await self.app(scope, counted, send)
