"""How hard passwords may be tried: per client address, per session, and per email.

Three defences, all kept in the database so that every replica counts the same attempts:

- Per client address, fixed windows: at most N sign-ins a minute and M sign-ups an hour from
  one address (as the dashboard determined it; none given counts as the one address
  "unknown"). Past them the attempt is refused at once, before any password is hashed, with
  the seconds until the window turns.
- Per session, a fixed window: at most K ChangePassword attempts an hour in one session, refused
  the same way before the email's delay and before any hash. A stolen session cookie is thus
  worth K guesses at the password an hour, however many requests it sends at once.
- Per email, slowing: every attempt on an email's password (a sign-in, or ChangePassword's
  check of the current one) counts as a failure until one succeeds. Once an email has `free`
  failures within 15 minutes, each further attempt first waits base × 2^(failures − free)
  seconds, at most `cap`, in this process (the caller's deadline must allow for it), and is
  then checked as usual: the right password still gets in, so a stranger can slow a person's
  sign-in but never lock them out. An unknown email is counted and slowed exactly like a known
  one, so the delay reveals nothing.

  Counting the attempt before it is checked gives concurrent attempts distinct counts, so
  below the cap they wait successively longer (1 s, 2 s, 4 s, …) rather than all at the first
  delay. Past the cap they do not queue: each waits the cap and no longer, so N parallel
  guesses on one email cost one cap, not N of them. The slowing alone therefore bounds only
  sequential guessing; parallel guessing is bounded by the windows above (per address for
  sign-ins, per session for ChangePassword), and across many addresses by nothing here.
  Queueing instead (each attempt reserving the slot after the last one's) was rejected: a
  stranger's flood would push the person's own attempt past any deadline, a lockout by another
  name.

Each attempt is decided by one statement (store.py): an upsert of its counter that returns the
count the attempt made, so concurrent attempts can never both see the last free slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from services.common.errors import ServiceError

UNKNOWN_ADDRESS = "unknown"
MAX_ADDRESS_LENGTH = 64
# Failures older than this are forgotten: the next one counts as the first.
FAILURE_WINDOW = timedelta(minutes=15)


class Throttled(ServiceError):
    """Too many attempts in a window; `retry_after_seconds` says when the next may come."""

    def __init__(self, reason: str, message: str, retry_after_seconds: int) -> None:
        super().__init__(
            f"{message}; retry in {retry_after_seconds}s",
            reason=reason,
            metadata={"retry_after_seconds": str(retry_after_seconds)},
        )
        self.retry_after_seconds = retry_after_seconds


@dataclass(frozen=True)
class WindowLimit:
    """At most `limit` attempts of one kind per subject (a client address, a session) in each
    fixed `window`."""

    kind: str
    limit: int
    window: timedelta
    # The ErrorInfo reason and message when the limit is passed.
    reason: str
    message: str

    def key(self, subject: str) -> str:
        """The counter's key: `sign-in:203.0.113.7`, `sign-up:unknown`, `password:ses_…`."""
        return f"{self.kind}:{subject or UNKNOWN_ADDRESS}"

    def check(self, count: int, retry_after_seconds: float) -> None:
        """Raise Throttled when the attempt that made `count` is past the limit."""
        if count > self.limit:
            raise Throttled(self.reason, self.message, max(1, math.ceil(retry_after_seconds)))


def address_problem(address: str) -> str | None:
    """Why a client address cannot name a counter, or None when it can (empty is "unknown")."""
    if len(address) > MAX_ADDRESS_LENGTH:
        return f"must be at most {MAX_ADDRESS_LENGTH} characters"
    if not address.isprintable() or address != address.strip():
        return "must contain only printable characters without surrounding spaces"
    return None


@dataclass(frozen=True)
class Slowing:
    """The wait before an email's password is checked, from its failures so far."""

    free_failures: int
    base_delay_seconds: float
    cap_seconds: float

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` failures within the window (this attempt excluded)."""
        excess = failures - self.free_failures
        if excess < 0 or self.base_delay_seconds == 0:
            return 0.0
        # 2**excess grows past any cap long before it overflows a float; stop early anyway.
        if excess >= 64:
            return self.cap_seconds
        return float(min(self.cap_seconds, self.base_delay_seconds * 2**excess))
