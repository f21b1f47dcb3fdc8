"""What keeps floods of made-up keys off auth's database: the key's shape, checked here, and a
per-address throttle of keys that failed verification, checked before auth is called.

Every VerifyKey of a well-formed key is one query on auth's database, so without this a client
could make the database work once per request just by inventing keys. An address whose keys
failed `limit` times within `window` seconds (GATEWAY_INVALID_KEYS_PER_ADDRESS,
GATEWAY_INVALID_KEY_WINDOW_SECONDS) gets 429 for every request that carries a key until its
window has passed, and none of them reaches auth. What counts as a failure:

- a key auth rejected (invalid or revoked: a 401 from VerifyKey);
- a string that cannot be a key (`looks_like_key`, auth's own rule restated: the gateway does not
  import auth), refused here without a call.

A missing key, or two headers naming different keys, costs auth nothing and is not counted; nor
is auth failing or being unreachable, which is not the client's doing. A valid key from a
throttled address is refused too: the address is misbehaving, and telling a valid key from an
invalid one would take the very lookup the throttle is there to save. Clients behind one
address (a NAT, the dashboard's playground) share its fate: the price of not calling auth.

Windows are fixed, opened by an address's first failure: O(1) per request, and an address
passes at most `limit` failures per window (2 × `limit` across a window's edge). Checks still
running count against an address that has failed before, up to `MAX_CHECKS_IN_FLIGHT` beyond its
remaining failures, so a burst sent at once cannot run far past the limit, while clients sharing
an address with one bad key among them keep their concurrency (a refusal for concurrency alone
asks to retry in a second). An address with no failure yet is not tracked at all, so a clean
client's concurrency is never limited here; only what it sends within auth's first answer can
run past the limit, once.

The state is in memory, per replica, in a map of at most `max_addresses` addresses (the oldest
windows dropped first; windows that have passed are dropped as new ones open). That is enough,
unlike sign-in throttling (decision 0011), because the point is to shed load, not to bound
guesses (a 256-bit key is not guessed at 20 a minute or at 20,000): each replica sheds its own
share of a flood before it reaches auth, so N replicas let through at most N × `limit` lookups
per address and window, still bounded and small. Counting together would cost a shared store a
round trip per attempt: the very cost being avoided. docs/decisions/0014 has the reasoning.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

# auth's key shape (services/auth/keys.py): `kp_live_` and 43 base62 digits, nothing else.
KEY_PREFIX = "kp_live_"
KEY_BODY_LENGTH = 43
KEY_LENGTH = len(KEY_PREFIX) + KEY_BODY_LENGTH
_KEY_SHAPE = re.compile(rf"{KEY_PREFIX}[0-9A-Za-z]{{{KEY_BODY_LENGTH}}}")

# Enough for every address of a wide flood at once; about 25 MB at most.
MAX_ADDRESSES = 100_000
# Checks an address that has failed may have running beyond its remaining failures: a burst sent
# all at once cannot take more than this many lookups past the limit, while legitimate clients
# sharing the address (a NAT) with one bad key among them keep their concurrency.
MAX_CHECKS_IN_FLIGHT = 100

_log = logging.getLogger("gateway.key_floods")


def looks_like_key(candidate: str) -> bool:
    """Whether `candidate` has the exact shape of a key; anything else cannot verify."""
    # The length test first keeps a long string from reaching the regex.
    return len(candidate) == KEY_LENGTH and _KEY_SHAPE.fullmatch(candidate) is not None


class Throttled(Exception):
    """The address may present no key for `retry_after` more seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"throttled for {retry_after} s")
        self.retry_after = retry_after


@dataclass(slots=True, eq=False)
class _Window:
    opened: float  # at the address's first failure in it
    failures: int = 0
    # Keys from the address being checked by auth right now.
    checking: int = 0


class KeyCheck:
    """One key from one address on its way through the checks: counted against the address's
    window while it runs (`with`), and as a failure once `failed()` is called."""

    def __init__(self, throttle: InvalidKeyThrottle, address: str, window: _Window | None) -> None:
        self._throttle = throttle
        self._address = address
        self._window = window

    def __enter__(self) -> KeyCheck:
        if self._window is not None:
            self._window.checking += 1
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._window is not None:
            self._window.checking -= 1
            self._window = None

    def failed(self) -> None:
        """The key was refused: auth rejected it, or it cannot be a key."""
        self._throttle.count_failure(self._address)


class InvalidKeyThrottle:
    def __init__(
        self,
        limit: int,
        window_seconds: float,
        *,
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._seconds = window_seconds
        self._max_addresses = max_addresses
        self._clock = clock
        # Ordered by when each window opened, so the front holds the ones to drop first.
        self._windows: OrderedDict[str, _Window] = OrderedDict()

    def admit(self, address: str) -> KeyCheck:
        """The check of one key from `address`; raises Throttled when the address has had its
        failures for this window, or would have them if the checks it has running all failed."""
        now = self._clock()
        window = self._live(address, now)
        if window is not None and (
            window.failures >= self._limit
            or window.failures + window.checking >= self._limit + MAX_CHECKS_IN_FLIGHT
        ):
            if window.failures >= self._limit:
                raise Throttled(max(1, math.ceil(window.opened + self._seconds - now)))
            raise Throttled(1)  # its checks still running will have answered by then
        return KeyCheck(self, address, window)

    def count_failure(self, address: str) -> None:
        now = self._clock()
        window = self._live(address, now)
        if window is None:
            self._forget_passed(now)
            if len(self._windows) >= self._max_addresses:
                self._windows.popitem(last=False)
            window = self._windows[address] = _Window(now)
        window.failures += 1
        if window.failures == self._limit:
            _log.warning(
                "client %s throttled: %d invalid API keys within %g s",
                address,
                window.failures,
                self._seconds,
                extra={"client": address},
            )

    def __len__(self) -> int:
        """Addresses tracked: those with a window still open (or not yet dropped)."""
        return len(self._windows)

    def _live(self, address: str, now: float) -> _Window | None:
        """The address's window, unless there is none or it has passed (then it is dropped;
        checks still running from it are no longer counted, a window's edge like any other)."""
        window = self._windows.get(address)
        if window is not None and now - window.opened >= self._seconds:
            del self._windows[address]
            return None
        return window

    def _forget_passed(self, now: float) -> None:
        """Drops windows that have passed from the front: each is dropped once, so O(1) per
        window opened, amortized."""
        while self._windows:
            oldest = next(iter(self._windows.values()))
            if now - oldest.opened < self._seconds:
                return
            self._windows.popitem(last=False)
