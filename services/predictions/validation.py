"""Checks on request fields, before anything is reserved or written: bad input costs nothing.

Every refusal is INVALID_ARGUMENT with reason FIELD_INVALID and ErrorInfo metadata `field`
naming the field as the proto spells it (`input.text`, `webhook_url`, …), so the gateway can
say which one without parsing a message.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass

from services.common.errors import InvalidArgument
from services.common.voice_expressions import (
    MAX_EXPRESSION_CHARS,
    VoiceExpressionError,
    parse_voice_expression,
)
from services.predictions.outputs import CONTENT_TYPES

MAX_ID_LENGTH = 128
MAX_KEY_ID_LENGTH = 64
MAX_WEBHOOK_URL_LENGTH = 2048
# The gateway's Idempotency-Key cap; a fingerprint is a digest per field, never the request.
MAX_IDEMPOTENCY_KEY_LENGTH = 128
MAX_FINGERPRINT_LENGTH = 1024
DEFAULT_VOICE = "af"
DEFAULT_FORMAT = "mp3"
MIN_SPEED, MAX_SPEED = 0.5, 5.0
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
# The most predictions a key may be allowed queued or running at once (auth's largest).
# The hosted listing's "10 concurrent per key": what a caller that sends no limit gets.
LISTING_MAX_ACTIVE = 10
MAX_ACTIVE_LIMIT = 10_000


class FieldInvalid(InvalidArgument):
    """A request field that is missing or malformed; metadata `field` names it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}", reason="FIELD_INVALID", metadata={"field": field})


@dataclass(frozen=True)
class Input:
    """PredictionInput, checked and with its defaults filled in."""

    text: str
    voice: str
    speed: float
    output_format: str


@dataclass(frozen=True)
class IdempotencyKey:
    """A create's idempotency key and the request it names (the caller's fingerprint)."""

    account_id: str
    key: str
    fingerprint: str


def _has_control(value: str) -> bool:
    return any(unicodedata.category(char) == "Cc" for char in value)


def require_id(value: str, field: str) -> str:
    """An account or prediction id: 1–128 characters, no control characters."""
    if not value:
        raise FieldInvalid(field, "is required")
    if len(value) > MAX_ID_LENGTH or _has_control(value):
        raise FieldInvalid(field, f"must be 1–{MAX_ID_LENGTH} characters without control ones")
    return value


def key_id(value: str) -> str:
    """The gateway's verified key id: required, since what a key may have queued or running
    is counted per key."""
    if not value:
        raise FieldInvalid("key_id", "is required")
    if len(value) > MAX_KEY_ID_LENGTH or _has_control(value):
        raise FieldInvalid("key_id", f"must be at most {MAX_KEY_ID_LENGTH} characters")
    return value


def max_active(value: int) -> int:
    """The key's limit on predictions queued or running, from auth's admission: 1–10,000. 0 is
    a gateway older than the field (during a rollout): the hosted listing's 10 then, never "no
    limit", and never a refusal that would fail every create until the rollout ends."""
    if value == 0:
        return LISTING_MAX_ACTIVE
    if not 1 <= value <= MAX_ACTIVE_LIMIT:
        raise FieldInvalid("max_active", f"must be between 1 and {MAX_ACTIVE_LIMIT:,}")
    return value


def prediction_input(
    text: str, voice: str, speed: float, output_format: str, max_chars: int
) -> Input:
    if not text:
        raise FieldInvalid("input.text", "is required")
    # len() counts code points: what the customer is charged for.
    if len(text) > max_chars:
        raise FieldInvalid("input.text", f"must be at most {max_chars} characters")
    if "\x00" in text:
        raise FieldInvalid("input.text", "must not contain NUL characters")
    voice = voice.strip() or DEFAULT_VOICE
    if len(voice) > MAX_EXPRESSION_CHARS:
        raise FieldInvalid("input.voice", f"must be at most {MAX_EXPRESSION_CHARS} characters")
    try:
        parse_voice_expression(voice)
    except VoiceExpressionError as error:
        raise FieldInvalid("input.voice", f"is not a voice: {error}") from error
    if speed == 0:
        speed = 1.0
    if not math.isfinite(speed) or not MIN_SPEED <= speed <= MAX_SPEED:
        raise FieldInvalid("input.speed", f"must be between {MIN_SPEED:g} and {MAX_SPEED:g}")
    output_format = output_format or DEFAULT_FORMAT
    if output_format not in CONTENT_TYPES:
        raise FieldInvalid("input.output_format", f"must be one of {', '.join(CONTENT_TYPES)}")
    return Input(text=text, voice=voice, speed=speed, output_format=output_format)


def webhook_url_shape(value: str) -> str | None:
    """An http(s) URL of at most 2,048 characters, or None; where it points is checked apart
    (webhooks.check_webhook_url)."""
    if not value:
        return None
    if len(value) > MAX_WEBHOOK_URL_LENGTH:
        raise FieldInvalid("webhook_url", f"must be at most {MAX_WEBHOOK_URL_LENGTH} characters")
    if _has_control(value) or any(char.isspace() for char in value):
        raise FieldInvalid("webhook_url", "must not contain spaces or control characters")
    return value


def idempotency_key(account_id: str, key: str, fingerprint: str) -> IdempotencyKey | None:
    """The create's idempotency key and the request it names, or None without a key. The
    gateway admits printable ASCII only; here, as the ledger checks its keys, 1–128 characters
    without control ones."""
    if not key:
        return None
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH or _has_control(key):
        raise FieldInvalid(
            "idempotency_key",
            f"must be at most {MAX_IDEMPOTENCY_KEY_LENGTH} characters without control ones",
        )
    if not fingerprint:
        raise FieldInvalid("request_fingerprint", "is required with an idempotency_key")
    if len(fingerprint) > MAX_FINGERPRINT_LENGTH or _has_control(fingerprint):
        raise FieldInvalid(
            "request_fingerprint",
            f"must be at most {MAX_FINGERPRINT_LENGTH} characters without control ones",
        )
    return IdempotencyKey(account_id, key, fingerprint)


def page_size(requested: int) -> int:
    """0 means the default; sizes above the maximum are lowered to it (AIP-158)."""
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def byte_range(offset: int, length: int) -> tuple[int, int]:
    if offset < 0:
        raise FieldInvalid("offset", "must not be negative")
    if length < 0:
        raise FieldInvalid("length", "must not be negative")
    return offset, length
