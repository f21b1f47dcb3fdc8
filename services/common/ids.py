"""Opaque, time-ordered identifiers such as `acct_01JD3Q…`: a prefix, then a ULID.

ULID layout: 48 bits of milliseconds then 80 random bits, in Crockford base32 (26 characters),
so ids sort roughly by creation (new rows land at an index's end) and never need a database
sequence to be unique. Each service keeps its own prefixes.
"""

from __future__ import annotations

import re
import secrets
import time
from functools import cache

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_LENGTH = 26


def new_id(prefix: str) -> str:
    """`prefix_` and a fresh ULID."""
    value = ((time.time_ns() // 1_000_000) << 80) | secrets.randbits(80)
    chars = [_CROCKFORD[(value >> shift) & 31] for shift in range(5 * (_LENGTH - 1), -1, -5)]
    return f"{prefix}_{''.join(chars)}"


def is_id(prefix: str, candidate: str) -> bool:
    """Whether `candidate` is shaped like an id with `prefix`; no other string can name one."""
    return len(candidate) <= 64 and _shape(prefix).fullmatch(candidate) is not None


@cache
def _shape(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(prefix)}_[{_CROCKFORD}]{{{_LENGTH}}}")
