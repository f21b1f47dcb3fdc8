"""Hold identifiers: a prefix, then a ULID (time-ordered, so new rows land at the index's end)."""

from __future__ import annotations

import secrets
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_hold_id() -> str:
    """`hold_` and 26 Crockford base32 characters: 48 bits of milliseconds, 80 random bits."""
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    chars = [_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5)]
    return "hold_" + "".join(chars)
