"""API keys: how they are generated, recognised by shape, and hashed for storage.

A key is `kp_live_` followed by 32 random bytes written in base62 (43 characters). The server
keeps only an HMAC-SHA256 of it under a server secret, so a copy of the database alone neither
reveals keys nor lets anyone test guesses offline; a short visible prefix lets people tell
their keys apart in a list.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass

KEY_PREFIX = "kp_live_"
RANDOM_BYTES = 32
BASE62_ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
# Enough base62 digits for any 256-bit number (62**43 > 2**256); shorter values are zero-padded
# so every key has the same length and the shape check below can be exact.
BODY_LENGTH = 43
KEY_LENGTH = len(KEY_PREFIX) + BODY_LENGTH
# "kp_live_" plus 4 random characters: recognisable in a list, 24 bits of 256 given away.
VISIBLE_PREFIX_LENGTH = 12
# A secret short enough to guess would let a leaked database be brute-forced after all.
MIN_SECRET_LENGTH = 16
# ListKeys and ListOwnKeys return at most this many keys (every live one, then the newest
# revoked ones), so a reply stays far below gRPC's 4 MiB however many keys an account made.
# AUTH_MAX_KEYS_PER_ACCOUNT, the cap on live keys, may not exceed it.
MAX_LISTED_KEYS = 1000
# AUTH_MAX_KEYS_PER_ACCOUNT's default.
DEFAULT_MAX_KEYS_PER_ACCOUNT = 100

_KEY_SHAPE = re.compile(rf"{KEY_PREFIX}[0-9A-Za-z]{{{BODY_LENGTH}}}")


@dataclass(frozen=True)
class NewKey:
    """A freshly generated key: the plaintext to hand out once, and what may be stored."""

    plaintext: str

    @property
    def visible_prefix(self) -> str:
        return visible_prefix(self.plaintext)


def base62(value: int, width: int) -> str:
    """`value` in base62, left-padded with zeros to `width` digits."""
    if value < 0 or value >= 62**width:
        raise ValueError(f"{value} does not fit in {width} base62 digits")
    digits = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        digits.append(BASE62_ALPHABET[digit])
    return "".join(reversed(digits))


def generate_key() -> NewKey:
    random_value = int.from_bytes(secrets.token_bytes(RANDOM_BYTES), "big")
    return NewKey(plaintext=KEY_PREFIX + base62(random_value, BODY_LENGTH))


def looks_like_key(candidate: str) -> bool:
    """Whether `candidate` has the exact shape of a key; anything else cannot match one."""
    # The length test first keeps a multi-megabyte string from reaching the regex.
    return len(candidate) == KEY_LENGTH and _KEY_SHAPE.fullmatch(candidate) is not None


def visible_prefix(plaintext: str) -> str:
    return plaintext[:VISIBLE_PREFIX_LENGTH]


class KeyHasher:
    """HMAC-SHA256 of keys under the server secret: the only form in which keys are stored."""

    def __init__(self, secret: str) -> None:
        if len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(f"the key hash secret must be at least {MIN_SECRET_LENGTH} characters")
        self._secret = secret.encode()

    def hash(self, plaintext: str) -> bytes:
        return hmac.new(self._secret, plaintext.encode(), hashlib.sha256).digest()
