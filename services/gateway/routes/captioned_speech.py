"""`POST /v1/captioned_speech` and Kokoro-FastAPI's `POST /dev/captioned_speech`: speech's body,
answered as JSON, the audio in base64 with when each word is spoken. Sold exactly as
/v1/audio/speech is (serve_speech): the same price, hold and settlement, the same key limits."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import StreamingResponse

from services.gateway.delivery import DeliveryResponse
from services.gateway.protocol import (
    JSON_LINES_CONTENT_TYPE,
    CaptionedSpeech,
    CaptionedSpeechRequest,
    DevCaptionedSpeechRequest,
)
from services.gateway.routes.common import Credentials, IdempotencyKey, Seller, error_responses
from services.gateway.routes.speech import SPEECH_HEADERS, SPEECH_TERMS, serve_speech

router = APIRouter(tags=["speech"])

_LINES_EXAMPLE = (
    '{"audio":"SUQzBAAAAAAAI1RTU0UAAAAP…","audio_format":"audio/mpeg","timestamps":'
    '[{"word":"Hello","start_time":0.275,"end_time":0.6}]}\n'
    '{"audio":"//NkxAAAAANIAAAAAExBTUUz…","audio_format":"audio/mpeg","timestamps":'
    '[{"word":"from","start_time":0.6,"end_time":0.8},'
    '{"word":"kokoro-pay.","start_time":0.8,"end_time":1.525}]}\n'
)
_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "`stream: false`: one JSON object once synthesis is over. `stream: true`: JSON lines, "
            "one object per piece of audio as it is spoken; concatenating their decoded `audio` "
            "gives one file of `response_format`. A body cut before its end means synthesis "
            "failed midway and the charge was refunded."
        ),
        # The model is documented as the application/json body.
        "model": CaptionedSpeech,
        "content": {
            JSON_LINES_CONTENT_TYPE: {"schema": {"type": "string"}, "example": _LINES_EXAMPLE},
        },
        "headers": SPEECH_HEADERS,
    }
}
_RESPONSES = {**_OK, **error_responses(400, 401, 402, 409, 429, 502, 503, 504, limited=True)}
_WHAT = (
    "Speech with word timestamps: the same body as /v1/audio/speech, answered with the audio in "
    "base64 and, for each word of `input` as written (its punctuation included: `$5.20,`, "
    "`Dr.`), when it starts and ends, in seconds from the start of the audio. Only for voices "
    "whose `word_timestamps` is true in /v1/audio/voices (English); others are a 400. "
)


@router.post(
    "/v1/captioned_speech",
    summary="Speak text, with word timestamps",
    description=_WHAT + "`stream` defaults to false. " + SPEECH_TERMS,
    response_class=StreamingResponse,
    responses=_RESPONSES,
)
async def create_captioned_speech(
    body: CaptionedSpeechRequest,
    request: Request,
    credentials: Credentials,
    seller: Seller,
    idempotency_key: IdempotencyKey = None,
) -> DeliveryResponse:
    return await serve_speech(body, request, credentials, seller, idempotency_key)


@router.post(
    "/dev/captioned_speech",
    summary="Speak text, with word timestamps (Kokoro-FastAPI's path)",
    description=_WHAT
    + "Kokoro-FastAPI's path and defaults: `stream` defaults to true. "
    + SPEECH_TERMS,
    response_class=StreamingResponse,
    responses=_RESPONSES,
)
async def create_captioned_speech_dev(
    body: DevCaptionedSpeechRequest,
    request: Request,
    credentials: Credentials,
    seller: Seller,
    idempotency_key: IdempotencyKey = None,
) -> DeliveryResponse:
    return await serve_speech(body, request, credentials, seller, idempotency_key)
