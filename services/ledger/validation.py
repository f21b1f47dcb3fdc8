"""Checks on request fields, before anything reaches the database: bad input writes nothing."""

from __future__ import annotations

import unicodedata

from services.common.errors import InvalidArgument
from services.ledger.store import KeyedRequest

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


def _printable(value: str, field: str, max_length: int) -> str:
    if not value:
        raise InvalidArgument(f"{field} is required")
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


def page_size(requested: int) -> int:
    """0 means the default; sizes above the maximum are lowered to it (AIP-158)."""
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)
