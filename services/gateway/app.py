"""The FastAPI application: routes, the error envelope, request ids, and the serving layer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from services.common.web import telemetry
from services.gateway.catalog import Catalog
from services.gateway.clients import Upstreams
from services.gateway.errors import install_error_handlers
from services.gateway.key_floods import InvalidKeyThrottle
from services.gateway.middleware import BodyLimitMiddleware, RequestContextMiddleware
from services.gateway.predictions import PredictionDesk
from services.gateway.routes import (
    account,
    captioned_speech,
    catalog,
    health,
    predictions,
    speech,
)
from services.gateway.serving import SpeechSeller
from services.gateway.settings import GatewaySettings
from services.gateway.slots import StreamSlots

DESCRIPTION = """\
OpenAI-compatible text to speech on Kokoro-82M, paid per input character from prepaid credits.
If you can call OpenAI's `/v1/audio/speech`, you can call this: change the base URL and use
your `kp_live_…` key as a Bearer token (or in an `X-API-Key` header). For when each word is
spoken, ask for `timestamps: word` with `stream_format: sse`, or call `/v1/captioned_speech`
(Kokoro-FastAPI's `/dev/captioned_speech` too), priced and limited as speech is. Errors are
`{"detail": "…"}`; every response carries `x-request-id`. Client errors carry
`x-should-retry: false`, transient ones `true`. An address that keeps sending invalid keys is
answered `429` with `Retry-After`, whatever the key, until its window has passed.

Each key has limits: `/v1/audio/speech` requests a minute and streams open at once; prediction
creates a minute and predictions queued or running at once. A request over one is answered
`429` with `Retry-After` (seconds) and `x-should-retry: true`. Every answer of those endpoints
once the key is verified (not a 401) carries OpenAI's `x-ratelimit-limit-requests`,
`x-ratelimit-remaining-requests` and `x-ratelimit-reset-requests` (e.g. `59.4s`).

The hosted Kokoro listing's asynchronous API is served too: `POST /v1/prediction/`, then poll
`GET /v1/prediction/{id}` (or receive a webhook) and download `output` without the key. Its
errors are the listing's `{"status": "error", "message": "…", "details": "<code>"}`.
"""


class GatewayApp(FastAPI):
    """FastAPI with the request-context middleware outside everything (its 500s included) and
    an OpenAPI document that says what clients really get."""

    max_input_chars = 4096
    max_body_bytes = 128 * 1024
    # The API's routes, by which the request-context middleware names a request refused before
    # routing (a 413) in its metrics.
    api_routes: Sequence[BaseRoute] = ()

    def build_middleware_stack(self) -> ASGIApp:
        inner = BodyLimitMiddleware(super().build_middleware_stack(), self.max_body_bytes)
        return RequestContextMiddleware(inner, self.api_routes)

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            _describe_the_edge(super().openapi(), self.max_input_chars)
        return self.openapi_schema or {}


def _describe_the_edge(schema: dict[str, Any], max_input_chars: int) -> None:
    """Validation failures are 400s, not FastAPI's 422; headers every response carries."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            responses.pop("422", None)
            for status, response in responses.items():
                headers = response.setdefault("headers", {})
                headers.setdefault("x-request-id", _REQUEST_ID_HEADER)
                if status.startswith(("4", "5")):
                    headers.setdefault("x-should-retry", _SHOULD_RETRY_HEADER)
    schemas = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    for body in ("SpeechRequest", "CaptionedSpeechRequest", "DevCaptionedSpeechRequest"):
        if body in schemas:
            schemas[body]["properties"]["input"]["maxLength"] = max_input_chars
    if "PredictionRequestInput" in schemas:
        schemas["PredictionRequestInput"]["properties"]["text"]["maxLength"] = max_input_chars


_REQUEST_ID_HEADER = {
    "description": "The request's id: the client's `x-request-id` when sane, else generated.",
    "schema": {"type": "string"},
}
_SHOULD_RETRY_HEADER = {
    "description": "`false` for client errors; `true` where a retry is safe and may succeed.",
    "schema": {"type": "string", "enum": ["true", "false"]},
}


def create_app(
    settings: GatewaySettings,
    clients: Upstreams,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The gateway over `clients`: gRPC ones when served, in-memory fakes in unit tests.
    `clock` times the invalid-key windows (tests pass one they move by hand)."""
    voices_and_models = Catalog(clients.synth, settings.catalog_ttl_seconds)
    key_throttle = InvalidKeyThrottle(
        settings.invalid_keys_per_address, settings.invalid_key_window_seconds, clock=clock
    )
    slots = StreamSlots(clients.auth)
    seller = SpeechSeller(clients, voices_and_models, settings, key_throttle, slots)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        # Uvicorn has drained the connections; charges still being settled finish first.
        await seller.drain()
        # Every stream is over: what slots are still held go back now, not at their lease's end.
        await slots.close()

    app = GatewayApp(
        title="kokoro-pay",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # Clients that send JSON without a Content-Type still get their audio.
        strict_content_type=False,
        servers=[{"url": "/", "description": "this gateway"}],
        # A span per request while traces are on, around every middleware (its log line too).
        telemetry=telemetry(),
    )
    app.max_input_chars = settings.max_input_chars
    app.max_body_bytes = settings.max_body_bytes
    app.state.seller = seller
    app.state.slots = slots
    app.state.predictions = PredictionDesk(clients.predictions, voices_and_models, settings)
    app.state.public_url = settings.public_url
    # Whose X-Forwarded-For names the client (routes/common.py).
    app.state.trusted_proxies = settings.trusted_networks
    app.state.upstreams = clients
    # Set when the process is asked to stop, so /readyz sends new traffic elsewhere.
    app.state.draining = asyncio.Event()
    install_error_handlers(app)
    routers = (
        speech.router,
        captioned_speech.router,
        predictions.router,
        catalog.router,
        account.router,
        health.router,
    )
    for router in routers:
        app.include_router(router)
    app.api_routes = [route for router in routers for route in router.routes]
    return app
