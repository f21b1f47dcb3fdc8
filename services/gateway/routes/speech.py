"""`POST /v1/audio/speech`: the audio stream, paid per character."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from services.gateway.middleware import request_id_of
from services.gateway.protocol import CONTENT_TYPES, SSE_CONTENT_TYPE, SpeechRequest
from services.gateway.routes.common import Credentials, Service, error_responses
from services.gateway.speech import ClientStalled, SpeechDelivery

router = APIRouter(tags=["speech"])
_log = logging.getLogger("gateway.speech")

_AUDIO_SCHEMA = {"type": "string", "format": "binary"}
# With `stream_format: sse`: deltas of base64 audio, then the usage.
_SSE_EXAMPLE = (
    'data: {"type":"speech.audio.delta","audio":"SUQzBAAAAAAAI1RTU0UAAAAP…"}\n\n'
    'data: {"type":"speech.audio.done","usage":{"input_tokens":22,"output_tokens":0,'
    '"total_tokens":22,"characters":22}}\n\n'
)
_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "The audio, streamed (chunked) as it is synthesized; its type follows "
            "`response_format`. A stream cut before its end means synthesis failed midway "
            "and the charge was refunded."
        ),
        "content": {
            **{media_type: {"schema": _AUDIO_SCHEMA} for media_type in CONTENT_TYPES.values()},
            SSE_CONTENT_TYPE: {"schema": {"type": "string"}, "example": _SSE_EXAMPLE},
        },
        "headers": {
            "x-request-id": {"schema": {"type": "string"}, "description": "The request's id."},
            "x-billed-characters": {
                "schema": {"type": "integer"},
                "description": "What the request costs: len(input) in code points.",
            },
            "server-timing": {
                "schema": {"type": "string"},
                "description": "Milliseconds spent on auth, catalog, reserve and the wait for "
                "the model's first audio (synth), e.g. `auth;dur=1.9, synth;dur=1480.2`.",
            },
        },
    }
}


class DeliveryResponse(StreamingResponse):
    """Streams a delivery and settles its charge once the response is over, however it ended.

    Each body piece must be taken by the client within `send_timeout` seconds; a client that
    stops reading is treated as gone, so it cannot hold a synth slot forever. A cancellation
    from outside (the server shutting down) cuts the stream on our side: refunded.
    """

    def __init__(self, delivery: SpeechDelivery, send_timeout: float) -> None:
        super().__init__(
            delivery.body(),
            media_type=delivery.content_type,
            headers={
                "cache-control": "no-store",
                # Proxies such as nginx must pass audio on as it comes, not buffer it.
                "x-accel-buffering": "no",
                "x-billed-characters": str(delivery.characters),
            },
        )
        self.delivery = delivery
        self.send_timeout = send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_in_time(message: Message) -> None:
            if message["type"] != "http.response.body":
                await send(message)
                return
            try:
                async with asyncio.timeout(self.send_timeout):
                    await send(message)
            except TimeoutError as stalled:
                raise ClientStalled(f"client took no audio for {self.send_timeout}s") from stalled

        try:
            await super().__call__(scope, receive, send_in_time)
        except ClientStalled as stalled:
            # Returning without completing the response makes the server close the connection.
            _log.warning("%s; treated as gone", stalled)
        except asyncio.CancelledError:
            self.delivery.server_stopped()
            raise
        finally:
            await self.delivery.finish()


@router.post(
    "/v1/audio/speech",
    summary="Speak text",
    description=(
        "Send input text and a voice; the response body is the raw audio stream. "
        "Cost is one credit per input character (Unicode code point). "
        "With an `Idempotency-Key`, a repeat of a request still in progress is a 409."
    ),
    response_class=StreamingResponse,
    responses={**_OK, **error_responses(400, 401, 402, 409, 502, 503, 504)},
)
async def create_speech(
    body: SpeechRequest,
    request: Request,
    credentials: Credentials,
    service: Service,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="Makes retries safe: the same request with the same key is charged once.",
        ),
    ] = None,
) -> DeliveryResponse:
    # The key is checked here rather than in a dependency so that a malformed body is a 400
    # whoever sends it (DESIGN.md: parse and validate, then VerifyKey), and checks that need
    # synth's lists run only for customers.
    principal = await service.authenticate(credentials.credentials if credentials else None)
    order = await service.validate(body)
    request_id, request_id_is_ours = request_id_of(request.scope)
    delivery = await service.start(
        principal,
        order,
        request_id=request_id,
        request_id_is_ours=request_id_is_ours,
        idempotency_key=idempotency_key,
    )
    return DeliveryResponse(delivery, service.send_timeout_seconds)
