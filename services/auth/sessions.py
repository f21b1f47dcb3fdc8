"""Sessions: the token a browser keeps as its cookie, and the only form auth keeps of it.

A token is 32 random bytes (`secrets.token_urlsafe`, 43 characters); the database keeps its
SHA-256. Unlike an API key's, that hash needs no secret key: 256 random bits cannot be guessed
offline from a stolen table. Nothing longer than 128 characters can be a token, so such strings
are refused before the database is asked.

A session ends at the earlier of two deadlines: `idle` after its last use, `max` after sign-in.
Use is written at most once a minute (less often would let an idle session outlive `idle` by
the difference; every use would turn each dashboard page into a write).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

TOKEN_BYTES = 32
MAX_TOKEN_LENGTH = 128
# How stale `last_seen_time` may get before a use writes it again: a minute, or a quarter of
# the idle lifetime when that is shorter, so an active session never looks idle.
MAX_TOUCH_INTERVAL = timedelta(minutes=1)
# No session may last longer, sign-in to absolute deadline: the database's CHECK (migration
# 0003) and the bound on AUTH_SESSION_MAX_SECONDS.
MAX_SESSION_SECONDS = 400 * 24 * 3600
# AUTH_SESSION_IDLE_SECONDS' and AUTH_SESSION_MAX_SECONDS' defaults: a day unused, a week in all.
DEFAULT_IDLE = timedelta(days=1)
DEFAULT_MAX = timedelta(days=7)


@dataclass(frozen=True)
class NewToken:
    """A fresh token: the plaintext for the response, the digest for the database."""

    plaintext: str
    digest: bytes


def new_token() -> NewToken:
    plaintext = secrets.token_urlsafe(TOKEN_BYTES)
    return NewToken(plaintext, token_digest(plaintext))


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def could_be_token(token: str) -> bool:
    """Whether `token` is worth a lookup; an empty or overlong one names no session."""
    return 0 < len(token) <= MAX_TOKEN_LENGTH


@dataclass(frozen=True)
class Lifetimes:
    idle: timedelta
    max: timedelta

    @classmethod
    def of_seconds(cls, idle: float, max_: float) -> Lifetimes:
        return cls(timedelta(seconds=idle), timedelta(seconds=max_))

    @property
    def touch_interval(self) -> timedelta:
        return min(MAX_TOUCH_INTERVAL, self.idle / 4)
