"""The dashboard application: pages, static files, and what every response carries."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import httpx
from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.logs import request_id_var
from services.common.web import telemetry
from services.dashboard import sessions
from services.dashboard.clients import BackendError, Backends
from services.dashboard.cookies import Cookies
from services.dashboard.pages import SECURITY_HEADERS, render
from services.dashboard.payments import PaymentProvider
from services.dashboard.previews import VoicePreviews
from services.dashboard.routes import (
    billing,
    health,
    keys,
    overview,
    people,
    playground,
    webhooks,
)
from services.dashboard.routes.playground import SessionStreams
from services.dashboard.sessions import SignedOut
from services.dashboard.settings import DashboardSettings

_log = logging.getLogger("dashboard.access")


class EdgeMiddleware:
    """Outermost: a request id for logs and gRPC metadata, the security headers, a cap on the
    body (forms here are small; a larger body is refused before it is read), an access log."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 0
        received = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = request_id
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        async def receive_capped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, "request too large")
            return message

        try:
            length = dict(scope["headers"]).get(b"content-length", b"0")
            if length.isdigit() and int(length) > self.max_body_bytes:
                await Response("Request too large.", 413)(scope, receive, send_with_headers)
                return
            await self.app(scope, receive_capped, send_with_headers)
        finally:
            _log.info(
                "%s %s %d",
                scope["method"],
                scope["path"],
                status,
                extra={"ms": round((time.perf_counter() - started) * 1e3, 1)},
            )
            request_id_var.reset(token)


def create_app(
    settings: DashboardSettings,
    backends: Backends,
    payments: PaymentProvider | None = None,
) -> FastAPI:
    """The dashboard over `backends`; `payments` sells credits (None: the operator grants them)."""
    # The playground's one upstream: the public API. Reading waits for the first audio, which
    # may queue for a model slot like any request's (the gateway's own limit is 300 s).
    gateway = httpx.AsyncClient(
        base_url=settings.gateway_url,
        timeout=httpx.Timeout(connect=5.0, read=330.0, write=30.0, pool=5.0),
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=20),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await gateway.aclose()

    app = FastAPI(
        title="kokoro-pay dashboard",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
        # A span per request while traces are on, around every middleware (its log line too).
        telemetry=telemetry(),
    )
    app.state.settings = settings
    app.state.backends = backends
    app.state.gateway = gateway
    app.state.previews = VoicePreviews(backends)
    app.state.playground_streams = SessionStreams()
    app.state.payments = payments
    app.state.cookies = Cookies(settings.cookie_secure)
    # Set when the process is asked to stop, so /readyz sends new traffic elsewhere.
    app.state.draining = asyncio.Event()
    app.mount("/static", StaticFiles(directory=Path(__file__).with_name("static")), "static")
    for router in (
        overview.router,
        keys.router,
        playground.router,
        billing.router,
        webhooks.router,
        people.router,
        health.router,
    ):
        app.include_router(router)

    @app.exception_handler(SignedOut)
    async def to_sign_in(request: Request, _: SignedOut) -> Response:
        response = RedirectResponse("/signin", status_code=303)
        sessions.end(response, app.state.cookies)
        return response

    @app.exception_handler(BackendError)
    async def backend_failed(request: Request, error: BackendError) -> Response:
        _log.warning("backend call failed: %s", error)
        unavailable = error.code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        message = (
            "The service is busy or restarting. Try again in a moment."
            if unavailable
            else "Something went wrong on our side. Try again; if it persists, contact support."
        )
        return render(
            request, "error.html", status_code=503 if unavailable else 500, message=message
        )

    @app.exception_handler(404)
    async def not_found(request: Request, _: Exception) -> Response:
        return render(request, "error.html", status_code=404, message="There is no such page.")

    app.add_middleware(EdgeMiddleware, max_body_bytes=64 * 1024)
    return app
