"""Limits per API key: requests per minute and things at once, for each use of a key.

VerifyKey with a `use` admits the request under its key's limits for that use: the request is
counted in the key's window (fixed, 60 seconds, opened by the key's first request after the last
one ended) and, for speech, a stream slot is taken, leased to the gateway replica that asked
(`holder`) until it gives it back (ReleaseSlots) or stops renewing it (RenewSlots). Every replica
counts in the same rows, in auth's PostgreSQL, in the statement that finds the key (store.py,
migration 0005): limits add no round trip to the one VerifyKey already made.

An account's overrides replace auth's defaults for each of its keys. Over a limit is not an error
of the call: the key is valid, the request is refused (`admitted` false) with the counts the
caller needs for its answer.

Here: the values and their bounds, a holder's shape, and what the database's counts mean to the
caller (`admission`); no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from datetime import timedelta
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.auth.settings import AuthSettings

MAX_REQUESTS_PER_MINUTE = 1_000_000
MAX_CONCURRENT = 10_000
MAX_LEASE_SECONDS = 3600
# The length of a request window; migration 0005's auth.admit_key_use() opens windows this long.
REQUEST_WINDOW = timedelta(seconds=60)
# Slot ids one ReleaseSlots may name.
MAX_RELEASED_SLOTS = 1000

_HOLDER = re.compile(r"[A-Za-z0-9_-]{1,64}")


class KeyUse(IntEnum):
    """What a verified key is about to be used for: auth.proto's KeyUse numbers, which are also
    what the database's key_request_windows.use holds."""

    SPEECH = 1
    PREDICTION_CREATE = 2


class Refusal(IntEnum):
    """Which limit refused a request: auth.proto's LimitRefusal numbers."""

    REQUESTS = 1
    CONCURRENCY = 2


@dataclass(frozen=True)
class KeyLimits:
    """A key's limits. As an account's overrides, 0 stands for auth's default."""

    speech_requests_per_minute: int = 0
    speech_concurrent_streams: int = 0
    prediction_creates_per_minute: int = 0
    predictions_concurrent: int = 0

    def requests_per_minute(self, use: KeyUse) -> int:
        if use is KeyUse.SPEECH:
            return self.speech_requests_per_minute
        return self.prediction_creates_per_minute

    def at_once(self, use: KeyUse) -> int:
        """Streams open (speech), or predictions queued or running (prediction creates)."""
        if use is KeyUse.SPEECH:
            return self.speech_concurrent_streams
        return self.predictions_concurrent

    def overridden_by(self, overrides: KeyLimits) -> KeyLimits:
        """These limits with each override that is set (not 0) in their place."""
        return KeyLimits(
            **{
                field.name: getattr(overrides, field.name) or getattr(self, field.name)
                for field in fields(self)
            }
        )


def limit_problem(name: str, value: int, *, override: bool) -> str | None:
    """Why `value` cannot be the KeyLimits field `name` (an override may also be 0, the default),
    or None when it can."""
    if override and value == 0:
        return None
    most = MAX_CONCURRENT if name in _AT_ONCE_FIELDS else MAX_REQUESTS_PER_MINUTE
    if not 1 <= value <= most:
        return f"must be {'0 (the default) or ' if override else ''}1 to {most:,}"
    return None


# auth's defaults (AUTH_SPEECH_REQUESTS_PER_MINUTE, …) when an account overrides nothing.
DEFAULT_LIMITS = KeyLimits(
    speech_requests_per_minute=600,
    speech_concurrent_streams=8,
    prediction_creates_per_minute=100,
    predictions_concurrent=10,
)
# How long a slot is held from its admission or its last renewal.
DEFAULT_LEASE = timedelta(seconds=30)
# What a refusal for concurrency tells the caller to wait: a slot frees when any stream of the key
# ends, which nothing here can predict.
DEFAULT_CONCURRENCY_RETRY_AFTER = timedelta(seconds=1)

_AT_ONCE_FIELDS = frozenset({"speech_concurrent_streams", "predictions_concurrent"})
LIMIT_FIELDS: tuple[str, ...] = tuple(field.name for field in fields(KeyLimits))


def holder_problem(holder: str) -> str | None:
    """Why `holder` cannot name a slot's holder (a gateway replica), or None when it can."""
    if not holder:
        return "is required"
    if _HOLDER.fullmatch(holder) is None:
        return "must be 1 to 64 of A-Z a-z 0-9 _ -"
    return None


@dataclass(frozen=True)
class LimitPolicy:
    """auth's defaults for every key whose account overrides nothing, and how slots are held."""

    defaults: KeyLimits = DEFAULT_LIMITS
    lease: timedelta = DEFAULT_LEASE
    concurrency_retry_after: timedelta = DEFAULT_CONCURRENCY_RETRY_AFTER

    @classmethod
    def of(cls, settings: AuthSettings) -> LimitPolicy:
        return cls(
            defaults=KeyLimits(
                speech_requests_per_minute=settings.speech_requests_per_minute,
                speech_concurrent_streams=settings.speech_concurrent_streams,
                prediction_creates_per_minute=settings.prediction_creates_per_minute,
                predictions_concurrent=settings.predictions_concurrent,
            ),
            lease=timedelta(seconds=settings.slot_lease_seconds),
            concurrency_retry_after=timedelta(seconds=settings.concurrency_retry_after_seconds),
        )


DEFAULT_POLICY = LimitPolicy()


@dataclass(frozen=True)
class Counted:
    """What the database did with one request of a live key (auth.admit_key_use)."""

    # The key's limits for the use: its account's override, else the default.
    request_limit: int
    concurrency_limit: int
    # This request's place in its window, at most request_limit + 1 (refused ones count too).
    request_count: int
    # Until the window ends.
    requests_reset: timedelta
    # Speech within its request limit: whether a slot was free and taken; else None.
    slot_taken: bool | None


@dataclass(frozen=True)
class Admission:
    """A request admitted under its key's limits, or refused by one (auth.proto's Admission)."""

    admitted: bool
    refusal: Refusal | None
    request_limit: int
    requests_remaining: int
    requests_reset: timedelta
    # When refused: how long to wait before trying again.
    retry_after: timedelta | None
    concurrency_limit: int
    # Speech, admitted: the slot taken, and how long it is held unless renewed.
    slot_id: str | None = None
    lease: timedelta | None = None


def admission(use: KeyUse, counted: Counted, slot_id: str, policy: LimitPolicy) -> Admission:
    """What the counts mean: refused for requests past the window's limit (until the window
    ends), refused for concurrency when speech found no free slot, else admitted (with the slot
    `slot_id` for speech)."""
    reset = max(counted.requests_reset, timedelta(0))
    refusal: Refusal | None = None
    retry_after: timedelta | None = None
    if counted.request_count > counted.request_limit:
        refusal, retry_after = Refusal.REQUESTS, reset
    elif use is KeyUse.SPEECH and not counted.slot_taken:
        refusal, retry_after = Refusal.CONCURRENCY, policy.concurrency_retry_after
    holds_slot = refusal is None and use is KeyUse.SPEECH
    return Admission(
        admitted=refusal is None,
        refusal=refusal,
        request_limit=counted.request_limit,
        requests_remaining=max(0, counted.request_limit - counted.request_count),
        requests_reset=reset,
        retry_after=retry_after,
        concurrency_limit=counted.concurrency_limit,
        slot_id=slot_id if holds_slot else None,
        lease=policy.lease if holds_slot else None,
    )
