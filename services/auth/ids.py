"""Opaque, time-ordered identifiers such as `acct_01JD3Q…` and `key_01JD3Q…`.

ULID layout: 48 bits of milliseconds then 80 random bits, in Crockford base32 (26 characters),
so ids sort roughly by creation and never need a database sequence to be unique.
"""

from __future__ import annotations

import re
import secrets
import time

ACCOUNT = "acct"
KEY = "key"

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_LENGTH = 26
_SHAPES = {kind: re.compile(rf"{kind}_[{_CROCKFORD}]{{{_LENGTH}}}") for kind in (ACCOUNT, KEY)}


def new_id(kind: str) -> str:
    value = ((time.time_ns() // 1_000_000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(_LENGTH):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return f"{kind}_{''.join(reversed(chars))}"


def is_id(kind: str, candidate: str) -> bool:
    """Whether `candidate` is shaped like an id of `kind`; no other string can name one."""
    return len(candidate) <= 64 and _SHAPES[kind].fullmatch(candidate) is not None
