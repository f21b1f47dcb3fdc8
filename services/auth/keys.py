"""API keys: how they are generated, recognised by shape, and hashed for storage.

A key is `kp_live_` followed by 32 random bytes written in base62 (43 characters). The server
keeps only an HMAC-SHA256 of it under a server secret, so a copy of the database alone neither
reveals keys nor lets anyone test guesses offline; a short visible prefix lets people tell
their keys apart in a list.

A session's playground key has the same shape, but its 32 bytes are derived rather than drawn:
an HMAC-SHA256 of the session's token under a key of its own, itself derived from the server
secret with a purpose label. So every MintPlaygroundKey of a session returns the same plaintext
while the database keeps only its hash, as for any key. The token, not the session's id or the
token's digest, is what is derived from: neither of those may be kept secret (both are in the
database), and the token is, so even the server secret and a copy of the database together
reveal no playground key. Whoever holds the token holds the session, and could mint it anyway.
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
# What the server secret is HMAC'd with to make the playground keys' own derivation key, so that
# no derived key body is ever the HMAC of a stored key (the other use of the same secret).
PLAYGROUND_PURPOSE = b"kokoropay.auth.v1 playground key"

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
    return _key_of(secrets.token_bytes(RANDOM_BYTES))


def _key_of(body: bytes) -> NewKey:
    return NewKey(plaintext=KEY_PREFIX + base62(int.from_bytes(body, "big"), BODY_LENGTH))


def looks_like_key(candidate: str) -> bool:
    """Whether `candidate` has the exact shape of a key; anything else cannot match one."""
    # The length test first keeps a multi-megabyte string from reaching the regex.
    return len(candidate) == KEY_LENGTH and _KEY_SHAPE.fullmatch(candidate) is not None


def visible_prefix(plaintext: str) -> str:
    return plaintext[:VISIBLE_PREFIX_LENGTH]


class KeyHasher:
    """The server secret's two uses: HMAC-SHA256 of keys, the only form in which keys are
    stored; and the derivation of each session's playground key."""

    def __init__(self, secret: str) -> None:
        if len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(f"the key hash secret must be at least {MIN_SECRET_LENGTH} characters")
        self._secret = secret.encode()
        self._playground_secret = hmac.new(
            self._secret, PLAYGROUND_PURPOSE, hashlib.sha256
        ).digest()

    def hash(self, plaintext: str) -> bytes:
        return hmac.new(self._secret, plaintext.encode(), hashlib.sha256).digest()

    def playground_key(self, session_token: str) -> NewKey:
        """The playground key of the session `session_token` names: the same for every call,
        unguessable without both the token and the server secret."""
        body = hmac.new(self._playground_secret, session_token.encode(), hashlib.sha256).digest()
        return _key_of(body)
