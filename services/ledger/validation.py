"""Checks on request fields, before anything reaches the database: bad input writes nothing."""

from __future__ import annotations

import unicodedata

from services.common.errors import InvalidArgument
from services.ledger.store import TOP_UP_KEY_PREFIX, KeyedRequest, UsageLabels

__all__ = ["InvalidArgument"]  # raised by every check here

# Identifiers and idempotency keys are stored as given; longer ones are a caller's bug.
MAX_ID_LENGTH = 128
MAX_KEY_LENGTH = 128
# A keyed request's fingerprint: a caller's digest of the request, never the request itself.
MAX_FINGERPRINT_LENGTH = 1024
# One request moves at most this many credits: far above any real grant or synthesis, far
# below where sums of them could overflow a BIGINT balance.
MAX_AMOUNT = 10**12
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# Holds are wider rows than entries (labels), and a dashboard shows a screenful.
MAX_HOLDS_PAGE_SIZE = 200
# Usage labels: caps match the columns' CHECKs (migration 0005). A voice may be a blend
# expression (services/common/voice_expressions.MAX_EXPRESSION_CHARS); an API key id is
# auth's "key_" and a ULID.
MAX_LABEL_LENGTHS = {"key_id": 64, "voice": 400, "response_format": 16, "model": 64}
# SummarizeUsage reaches back at most this many UTC days; 0 asks for the default.
DEFAULT_USAGE_DAYS = 30
MAX_USAGE_DAYS = 90


def _printable(value: str, field: str, max_length: int) -> str:
    if not value:
        raise InvalidArgument(f"{field} is required")
    return _within(value, field, max_length)


def _within(value: str, field: str, max_length: int) -> str:
    if len(value) > max_length:
        raise InvalidArgument(f"{field} is longer than {max_length} characters")
    # PostgreSQL text cannot hold NUL, and control characters in an id are always a bug.
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise InvalidArgument(f"{field} contains control characters")
    return value


def require_id(value: str, field: str) -> str:
    """An account or hold id: 1–128 characters, no control characters."""
    return _printable(value, field, MAX_ID_LENGTH)


def require_key(value: str) -> str:
    """An idempotency key: 1–128 characters, no control characters."""
    return _printable(value, "idempotency_key", MAX_KEY_LENGTH)


def require_grant_key(value: str) -> str:
    """A Grant's idempotency key: as any key, outside the top-ups' `topup:` keys, so that no
    grant by hand can take the key of a payment event not yet granted."""
    key = require_key(value)
    if key.startswith(TOP_UP_KEY_PREFIX):
        raise InvalidArgument(
            f"idempotency_key may not start with {TOP_UP_KEY_PREFIX!r}: GrantTopUp's keys do"
        )
    return key


def require_payment_event_id(value: str) -> str:
    """A payment provider's event id: 1–128 printable characters (no control, format or
    separator characters but the space, so no invisible character sets apart two ids that
    read the same)."""
    event_id = _printable(value, "payment_event_id", MAX_ID_LENGTH)
    if not event_id.isprintable():
        raise InvalidArgument("payment_event_id contains characters that are not printable")
    return event_id


def top_up_credits(value: int, maximum: int) -> int:
    """The credits one payment event grants: positive, at most LEDGER_MAX_TOP_UP_CREDITS."""
    if value <= 0:
        raise InvalidArgument(f"credits must be positive, got {value}")
    if value > maximum:
        raise InvalidArgument(f"credits must be at most {maximum} per top-up, got {value}")
    return value


def require_amount(value: int) -> int:
    if value <= 0:
        raise InvalidArgument(f"amount must be positive, got {value}")
    if value > MAX_AMOUNT:
        raise InvalidArgument(f"amount must be at most {MAX_AMOUNT}, got {value}")
    return value


def keyed_request(
    key: str, fingerprint: str, price: int, late_charge: bool, amount: int
) -> KeyedRequest:
    """The customer's keyed request a Reserve pays an attempt of; `amount` at most its price."""
    request = KeyedRequest(
        key=_printable(key, "keyed.key", MAX_KEY_LENGTH),
        fingerprint=_printable(fingerprint, "keyed.fingerprint", MAX_FINGERPRINT_LENGTH),
        price=require_amount(price),
        late_charge=late_charge,
    )
    if amount > request.price:
        raise InvalidArgument(f"amount {amount} exceeds keyed.price {request.price}")
    return request


def usage_labels(key_id: str, voice: str, response_format: str, model: str) -> UsageLabels:
    """A Reserve's labels: each optional (empty is not given: None), capped, no control
    characters. Stored as given; the ledger never reads meaning into them."""
    given = {
        "key_id": key_id,
        "voice": voice,
        "response_format": response_format,
        "model": model,
    }
    return UsageLabels(
        **{
            name: _within(value, f"labels.{name}", MAX_LABEL_LENGTHS[name]) if value else None
            for name, value in given.items()
        }
    )


def usage_days(requested: int) -> int:
    """SummarizeUsage's window in UTC days, today included: 0 means 30; above 90 is refused
    (the report reads every hold of the window; an unbounded one is a slow query)."""
    if requested == 0:
        return DEFAULT_USAGE_DAYS
    if requested > MAX_USAGE_DAYS:
        raise InvalidArgument(f"days must be at most {MAX_USAGE_DAYS}, got {requested}")
    return requested


def checkpoint_amount(value: int) -> int:
    """Credits delivered so far: zero or more (a checkpoint may only extend the deadline)."""
    if value < 0:
        raise InvalidArgument(f"delivered must not be negative, got {value}")
    if value > MAX_AMOUNT:
        raise InvalidArgument(f"delivered must be at most {MAX_AMOUNT}, got {value}")
    return value


def capture_amount(value: int) -> int | None:
    """Credits a Capture spends: 0 means the whole hold (None); else positive."""
    if value == 0:
        return None
    return require_amount(value)


def hold_ttl(requested: int, default: int, maximum: int) -> int:
    """Seconds a hold lives: 0 asks for the server's default; above `maximum` is refused."""
    if requested == 0:
        return default
    if requested > maximum:
        raise InvalidArgument(f"ttl_seconds must be at most {maximum}, got {requested}")
    return requested


def page_size(requested: int, maximum: int = MAX_PAGE_SIZE) -> int:
    """0 means the default; sizes above the maximum are lowered to it (AIP-158)."""
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, maximum)
