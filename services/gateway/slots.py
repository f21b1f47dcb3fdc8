"""Stream slot leases: the speech slots this replica holds at auth, kept alive, given back.

auth counts a key's open speech streams as slots (auth.proto): VerifyKey with KEY_USE_SPEECH
takes one, leased to a holder, and a slot lapses at the end of its lease unless renewed. So a
gateway that dies frees its slots within one lease, and a live one keeps them with ONE
RenewSlots call every lease/3 while it holds any, however many streams it serves. Each slot is
given back as its stream ends, in the background and in batches: never on a response's path.

RenewSlots renews everything its holder has at auth, slots this replica cannot name included:
one taken by a VerifyKey whose answer was lost (a timeout, a cancelled request) and one whose
ReleaseSlots failed. Renewed forever, such a slot would cost its key a stream for as long as
this replica stays busy. So a holder that may hold one is retired: later slots are taken under
a fresh holder (the replica's id, next generation), and the retired one is renewed only while
streams this replica knows of still hold slots under it, then left to lapse. At most one
retirement per `min_generation_seconds`, so a flaky auth costs a few extra renewals, not one per
stream.

Memory follows the streams running: a holder is kept while it has live slots, and releases
waiting for their call are capped (beyond the cap, the lease frees them).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import secrets
import time
from collections.abc import Coroutine, Iterator
from typing import Any

from services.gateway.clients import AuthClient

_log = logging.getLogger("gateway.slots")

# ReleaseSlots takes at most this many ids per call (auth.proto).
RELEASE_BATCH = 1000
# Releases waiting for their call, at most; more only happen while auth is slow or down, and
# the lease frees them then (their holder is retired so that it stops being renewed).
MAX_PENDING_RELEASES = 10_000
# Until auth names a lease, renew as often as a lease this short would need.
_DEFAULT_LEASE_SECONDS = 30.0
# Whatever the lease, renewals never come closer together than this.
_MIN_RENEW_INTERVAL_SECONDS = 0.05


def replica_id() -> str:
    """This replica's id at auth: random, so two replicas (or a restarted one) never share."""
    return "gw-" + secrets.token_hex(8)


class StreamSlot:
    """One slot a speech stream holds. `give_back()` may be called any number of times, from
    anywhere: only the first does anything, and it never waits or raises."""

    __slots__ = ("_keeper", "holder", "slot_id", "_given_back")

    def __init__(self, keeper: StreamSlots | None, holder: str, slot_id: str) -> None:
        self._keeper = keeper
        self.holder = holder
        self.slot_id = slot_id
        self._given_back = False

    def give_back(self) -> None:
        if self._keeper is None or self._given_back:
            return
        self._given_back = True
        self._keeper.give_back(self.holder, self.slot_id)

    @property
    def given_back(self) -> bool:
        return self._given_back

    @contextlib.contextmanager
    def given_back_on_failure(self) -> Iterator[None]:
        """For the code between taking the slot and handing it to the stream that gives it
        back when it ends: if that code fails (a 400, a 402, a 502, a cancelled request), the
        slot goes back at once."""
        try:
            yield
        except BaseException:
            self.give_back()
            raise


# What a request that holds no slot carries: limits off, or not a speech stream.
NO_SLOT = StreamSlot(None, "", "")


class StreamSlots:
    """The slots this replica holds, by holder; the one renewer and the one releaser."""

    def __init__(
        self,
        auth: AuthClient,
        *,
        replica: str | None = None,
        min_generation_seconds: float = 60.0,
    ) -> None:
        self._auth = auth
        self.replica = replica or replica_id()
        self._min_generation_seconds = min_generation_seconds
        self._generation = 1
        self._holder = f"{self.replica}-1"
        self._holder_since = time.monotonic()
        # The current holder may hold a slot nobody will give back: retire it when allowed.
        self._holder_suspect = False
        # Slots known to be held, by holder; a holder is here only while it has some.
        self._held: dict[str, set[str]] = {}
        self._lease = _DEFAULT_LEASE_SECONDS
        self._renew_due: float | None = None
        self._renew_sooner = asyncio.Event()
        self._renewer: asyncio.Task[None] | None = None
        self._pending: list[tuple[str, str]] = []
        self._releaser: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def holder(self) -> str:
        """The holder the next slot is to be taken under."""
        retirable = time.monotonic() - self._holder_since >= self._min_generation_seconds
        if self._holder_suspect and (retirable or self._holder not in self._held):
            self._retire_holder()
        return self._holder

    def held(self) -> dict[str, frozenset[str]]:
        """The slots known to be held, by holder (a copy)."""
        return {holder: frozenset(slots) for holder, slots in self._held.items()}

    def took(self, holder: str, slot_id: str, lease: float) -> StreamSlot:
        """Record a slot VerifyKey took under `holder` for `lease` seconds: renewed until it is
        given back."""
        self._held.setdefault(holder, set()).add(slot_id)
        if lease > 0:
            self._lease = lease
        self._renew_by(time.monotonic() + self._interval())
        return StreamSlot(self, holder, slot_id)

    def suspect(self, holder: str) -> None:
        """`holder` may hold a slot that will never be given back (a lost VerifyKey answer, a
        failed release): retire it, now if that costs nothing, else once it is old enough."""
        if holder != self._holder:
            return  # already retired: it lapses once its known streams end
        self._holder_suspect = True
        if holder not in self._held:
            self._retire_holder()

    def give_back(self, holder: str, slot_id: str) -> None:
        """Stop renewing the slot and queue its release; StreamSlot.give_back() calls this."""
        live = self._held.get(holder)
        if live is not None:
            live.discard(slot_id)
            if not live:
                del self._held[holder]
                if not self._held:
                    self._renew_sooner.set()  # the renewer sees nothing left, and ends
        if len(self._pending) >= MAX_PENDING_RELEASES:
            _log.warning("too many stream slot releases waiting; the lease frees this one")
            self.suspect(holder)
            return
        self._pending.append((holder, slot_id))
        if self._releaser is None or self._releaser.done():
            self._releaser = _in_background(self._release_pending())

    async def close(self) -> None:
        """At shutdown, once the streams are over: renewals stop, and whatever is still held
        is given back, so its keys get it now rather than at the lease's end."""
        self._closed = True
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.wait([self._renewer])
        for holder, live in self._held.items():
            self._pending.extend((holder, slot_id) for slot_id in live)
        self._held.clear()
        if self._releaser is not None and not self._releaser.done():
            await asyncio.wait([self._releaser])  # it takes what was just queued too
        await self._release_pending()

    def _retire_holder(self) -> None:
        self._generation += 1
        retired, self._holder = self._holder, f"{self.replica}-{self._generation}"
        self._holder_since = time.monotonic()
        self._holder_suspect = False
        _log.info(
            "stream slot holder %s retired: it may hold a slot that cannot be given back; "
            "new slots are taken as %s",
            retired,
            self._holder,
        )

    def _interval(self) -> float:
        return max(self._lease / 3, _MIN_RENEW_INTERVAL_SECONDS)

    def _renew_by(self, due: float) -> None:
        if self._closed:
            return  # shutting down: what is left lapses with its lease
        if self._renew_due is None or due < self._renew_due:
            self._renew_due = due
            self._renew_sooner.set()
        if self._renewer is None or self._renewer.done():
            self._renewer = _in_background(self._keep_alive())

    async def _keep_alive(self) -> None:
        """Renew every lease/3 while any slot is held; end when none is."""
        while self._held:
            assert self._renew_due is not None
            wait = self._renew_due - time.monotonic()
            if wait > 0:
                self._renew_sooner.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._renew_sooner.wait(), wait)
                continue
            self._renew_due = time.monotonic() + self._interval()
            await self._renew()
        self._renew_due = None

    async def _renew(self) -> None:
        known = {holder: len(slots) for holder, slots in self._held.items()}
        answers = await asyncio.gather(
            *(self._auth.renew_slots(holder) for holder in known), return_exceptions=True
        )
        for (holder, count), answer in zip(known.items(), answers, strict=True):
            if isinstance(answer, BaseException):
                # Two more tries before the lease ends; a lapsed slot only frees its key early.
                _log.warning(
                    "renewing stream slots failed (%s); trying again in %.1fs",
                    answer,
                    self._interval(),
                    extra={"holder": holder, "slots": count},
                )
                continue
            if answer.lease > 0:
                self._lease = answer.lease
            if answer.renewed < count:
                _log.warning(
                    "%d stream slots had lapsed before their renewal; their streams go on",
                    count - answer.renewed,
                    extra={"holder": holder, "slots": count},
                )

    async def _release_pending(self) -> None:
        """Release what is queued, per holder, up to RELEASE_BATCH ids a call; what is queued
        meanwhile goes in the next round. A failure is logged and left to the lease."""
        while self._pending:
            queued, self._pending = self._pending, []
            by_holder: dict[str, list[str]] = {}
            for holder, slot_id in queued:
                by_holder.setdefault(holder, []).append(slot_id)
            for holder, slot_ids in by_holder.items():
                for start in range(0, len(slot_ids), RELEASE_BATCH):
                    batch = slot_ids[start : start + RELEASE_BATCH]
                    try:
                        await self._auth.release_slots(holder, batch)
                    except Exception as error:
                        _log.warning(
                            "releasing %d stream slots failed (%s); their lease frees them",
                            len(batch),
                            error,
                            extra={"holder": holder},
                        )
                        self.suspect(holder)


def _in_background(work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """A task outside any request's context: its calls carry no request's id."""
    return asyncio.get_running_loop().create_task(work, context=contextvars.Context())
