"""`POST /v1/audio/speech`: the audio stream, paid per character; `serve_speech` is the flow
every speech endpoint shares (captioned speech's too)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import StreamingResponse

from services.gateway.clients import KeyUse
from services.gateway.delivery import DeliveryResponse
from services.gateway.middleware import request_id_of
from services.gateway.protocol import CONTENT_TYPES, SSE_CONTENT_TYPE, SpeechBody, SpeechRequest
from services.gateway.routes.common import (
    RATE_LIMIT_HEADERS,
    Credentials,
    IdempotencyKey,
    Seller,
    error_responses,
)

router = APIRouter(tags=["speech"])

_AUDIO_SCHEMA = {"type": "string", "format": "binary"}
# With `stream_format: sse`: deltas of base64 audio (with `timestamps: word`, each piece's
# preceded by its words), then the usage.
_SSE_EXAMPLE = (
    'data: {"type":"speech.audio.words","words":[{"word":"Hello","start_time":0.275,'
    '"end_time":0.6},{"word":"from","start_time":0.6,"end_time":0.8},{"word":"kokoro-pay.",'
    '"start_time":0.8,"end_time":1.525}]}\n\n'
    'data: {"type":"speech.audio.delta","audio":"SUQzBAAAAAAAI1RTU0UAAAAP…"}\n\n'
    'data: {"type":"speech.audio.done","usage":{"input_tokens":22,"output_tokens":0,'
    '"total_tokens":22,"characters":22}}\n\n'
)
# What every speech endpoint's successful answer carries, whatever its body.
SPEECH_HEADERS: dict[str, dict[str, Any]] = {
    "x-request-id": {"schema": {"type": "string"}, "description": "The request's id."},
    "x-billed-characters": {
        "schema": {"type": "integer"},
        "description": "The most this response costs, in code points: len(input); "
        "with an Idempotency-Key, what the key still owes (0 for a free replay).",
    },
    "server-timing": {
        "schema": {"type": "string"},
        "description": "Milliseconds spent on auth, catalog, reserve and the wait for "
        "the model's first audio (synth), e.g. `auth;dur=1.9, synth;dur=1480.2`.",
    },
    **RATE_LIMIT_HEADERS,
}
# How idempotency and the key's limits work, the same on every speech endpoint.
SPEECH_TERMS = (
    "Cost is one credit per input character (Unicode code point). "
    "With an `Idempotency-Key`, the key names one request for 24 hours: retries are "
    "charged only for what they deliver, never more than len(input) in all; a retry while "
    "another runs is a 409; the same key on a different request is a 400; after the whole "
    "audio was delivered, two retries are served again free, then 409. "
    "A key may make so many requests a minute and have so many streams open at once: over "
    "either, 429 with `Retry-After`; every answer once the key is verified carries "
    "`x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests` and "
    "`x-ratelimit-reset-requests`."
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
        "headers": SPEECH_HEADERS,
    }
}


@router.post(
    "/v1/audio/speech",
    summary="Speak text",
    description=(
        "Send input text and a voice; the response body is the raw audio stream (with "
        "`stream_format: sse`, events of base64 audio; add `timestamps: word` for when each "
        "word is spoken). " + SPEECH_TERMS
    ),
    response_class=StreamingResponse,
    responses={
        **_OK,
        **error_responses(400, 401, 402, 409, 429, 502, 503, 504, limited=True),
    },
)
async def create_speech(
    body: SpeechRequest,
    request: Request,
    credentials: Credentials,
    seller: Seller,
    idempotency_key: IdempotencyKey = None,
) -> DeliveryResponse:
    return await serve_speech(body, request, credentials, seller, idempotency_key)


async def serve_speech(
    body: SpeechBody,
    request: Request,
    credentials: Credentials,
    seller: Seller,
    idempotency_key: str | None,
) -> DeliveryResponse:
    """Admit, validate, hold and start the synthesis; the response delivers it."""
    # The key is checked here rather than in a dependency so that a malformed body is a 400
    # whoever sends it (docs/architecture.md: parse and validate, then VerifyKey), and checks that
    # need synth's lists run only for customers.
    admitted = await seller.admit(credentials.key(), credentials.address, KeyUse.SPEECH)
    # The key's stream slot is held from here: given back at once if the request fails before
    # it streams (400, 402, 409, 502, a cancelled request), else by the delivery when it ends.
    with admitted.slot.given_back_on_failure():
        order = await seller.validate(body)
        request_id, request_id_is_ours = request_id_of(request.scope)
        delivery = await seller.sell(
            admitted.principal,
            order,
            request_id=request_id,
            request_id_is_ours=request_id_is_ours,
            idempotency_key=idempotency_key,
            slot=admitted.slot,
        )
    return DeliveryResponse(delivery, seller.send_timeout_seconds)
