"""What a request costs, how its credits are held, and how the hold is settled.

- A request costs len(input) credits, counted in Unicode code points.
- The stream completed: the hold is captured. The hold's deadline covers the whole request
  (settings.hold_ttl_seconds); should it lapse anyway, the amount is reserved and captured anew
  as a last resort: the audio was delivered, so it is paid for.
- Synthesis failed, or the gateway cut the stream while shutting down (our side): the hold is
  released, whatever was sent.
- The client went away, or stopped reading for send_timeout_seconds (its choice): the characters
  whose audio had been handed to it are charged and the rest refunded, in one ledger call
  (Capture of part of the hold); nothing is charged if no audio went out. Refunding everything
  would let a client read all but the last sentence of a long text for free.
- Ledger calls that may or may not have taken effect are repeated under the same key: Reserve
  once at once (the client is waiting), settlements with a short backoff
  (settings.settle_retry_delays_seconds), so a ledger restart does not make delivered audio
  free; a hold left unsettled is returned by the ledger at its deadline.
- Idempotency: without an `Idempotency-Key` header each request is its own ledger key,
  `req:<request id>`. With one, the ledger key is derived from it and the request's content, so
  a retry of the same request is charged at most once while the same key on other content is
  another purchase. A retry after a success is served again without a second charge; a retry
  after a refund is charged (once); a retry while the first is still running is a 409.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from services.gateway.clients import Hold, HoldState, LedgerClient, Principal, UpstreamError
from services.gateway.errors import reserve_error, still_in_progress

_log = logging.getLogger("gateway.billing")
T = TypeVar("T")

# Failures after which the call may or may not have taken effect: idempotent calls are repeated.
_AMBIGUOUS = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# A hold that lapsed or was released by someone else cannot be captured; charge anew instead.
_NOT_CAPTURABLE = frozenset({"HOLD_EXPIRED", "HOLD_RELEASED"})
# Holds placed only to be captured at once.
_SETTLE_HOLD_TTL_SECONDS = 60
# Pauses between attempts of a request's Reserve: the client is waiting, so one quick retry.
RESERVE_RETRY_DELAYS: tuple[float, ...] = (0.0,)


@dataclass(frozen=True)
class SpeechOrder:
    """A validated request: what to speak and what it costs."""

    text: str
    voice: str
    model: str
    speed: float
    audio_format: str
    stream_format: str

    @property
    def characters(self) -> int:
        return len(self.text)  # a Python str is a sequence of code points

    def fingerprint(self) -> str:
        """Identifies the content, so one Idempotency-Key cannot pay for two different things."""
        fields = [self.text, self.voice, self.model, self.speed, self.audio_format]
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


def ledger_key(
    order: SpeechOrder, *, request_id: str, request_id_is_ours: bool, idempotency_key: str | None
) -> str:
    """The key the request's Reserve is made under; the same key is charged at most once."""
    if idempotency_key is not None:
        digest = hashlib.sha256(f"{idempotency_key}\0{order.fingerprint()}".encode())
        return f"idem:{digest.hexdigest()}"
    if request_id_is_ours:
        return f"req:{request_id}"
    # A client may send one x-request-id twice; that must not make two requests one.
    return f"req:{request_id}:{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Charge:
    """What a request holds on the ledger."""

    account_id: str
    amount: int
    ledger_key: str
    # None for a retry of a request already paid for: nothing to capture or release.
    hold_id: str | None


class Outcome(enum.Enum):
    COMPLETED = "completed"  # every piece was handed to the client
    FAILED = "failed"  # synthesis failed: our fault, full refund
    CLIENT_LEFT = "client_left"  # the client disconnected: pay for what it was given


class Billing:
    """Holds a request's credits before synthesis and settles them once it is over.

    Settlements run in tasks of their own, so a cancelled request still settles; `drain()`
    waits for those still running.
    """

    def __init__(
        self,
        ledger: LedgerClient,
        *,
        settle_retry_delays: tuple[float, ...],
        reserve_retry_delays: tuple[float, ...] = RESERVE_RETRY_DELAYS,
    ) -> None:
        self._ledger = ledger
        self._settle_retry_delays = settle_retry_delays
        self._reserve_retry_delays = reserve_retry_delays
        self._running: set[asyncio.Task[None]] = set()

    async def hold(
        self, principal: Principal, order: SpeechOrder, ledger_key: str, ttl_seconds: int
    ) -> Charge:
        """Reserve the order's cost under `ledger_key`: 402 without the credits, 409 while
        the same keyed request is still being served."""
        attempts = 0

        def reserve(key: str) -> Callable[[], Awaitable[Hold]]:
            async def call() -> Hold:
                nonlocal attempts
                attempts += 1
                return await self._ledger.reserve(
                    principal.account_id, order.characters, key, ttl_seconds
                )

            return call

        try:
            hold = await _idempotent(reserve(ledger_key), self._reserve_retry_delays)
            if hold.state in (HoldState.RELEASED, HoldState.EXPIRED):
                # This very request was refunded before; trying again is a new purchase.
                ledger_key = f"{ledger_key}:{uuid.uuid4().hex[:12]}"
                hold = await _idempotent(reserve(ledger_key), self._reserve_retry_delays)
        except UpstreamError as error:
            raise reserve_error(error, order.characters) from error
        # After a retried Reserve, a replayed hold may be the one our first attempt placed.
        if hold.state == HoldState.HELD and hold.replayed and attempts == 1:
            # The same request is being served right now (or its delivery has yet to settle):
            # a second synthesis under that hold would deliver twice for one charge.
            raise still_in_progress()
        if hold.state == HoldState.CAPTURED:
            _log.info("a paid request again: not charged twice", extra={"ledger_key": ledger_key})
            return Charge(principal.account_id, order.characters, ledger_key, hold_id=None)
        return Charge(principal.account_id, order.characters, ledger_key, hold_id=hold.id)

    async def settle(self, charge: Charge, outcome: Outcome, *, delivered_characters: int) -> None:
        """Capture, capture in part, or release the hold, as `outcome` says."""
        if charge.hold_id is None:
            return
        task = asyncio.ensure_future(
            self._settle(charge, charge.hold_id, outcome, delivered_characters)
        )
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        # If the request is cancelled while waiting, the settlement still runs to its end.
        await asyncio.shield(task)

    async def drain(self) -> None:
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _settle(
        self, charge: Charge, hold_id: str, outcome: Outcome, delivered_characters: int
    ) -> None:
        extra: dict[str, Any] = {
            "hold_id": hold_id,
            "amount": charge.amount,
            "outcome": outcome.value,
            "delivered_characters": delivered_characters,
        }
        charged = 0
        try:
            if outcome is Outcome.COMPLETED:
                await self._capture(charge, hold_id, charge.amount)
                charged = charge.amount
            elif outcome is Outcome.CLIENT_LEFT and delivered_characters > 0:
                # One ledger call spends the part delivered and returns the rest atomically.
                charged = min(delivered_characters, charge.amount)
                await self._capture(charge, hold_id, charged)
            else:
                await self._retried(lambda: self._ledger.release(hold_id))
        except UpstreamError as error:
            # The hold stays until its deadline, when the ledger returns the credits itself.
            _log.error("could not settle a hold: %s", error, extra=extra)
            return
        _log.info("settled: charged %d of %d credits", charged, charge.amount, extra=extra)

    async def _capture(self, charge: Charge, hold_id: str, amount: int) -> None:
        part = None if amount >= charge.amount else amount
        try:
            await self._retried(lambda: self._ledger.capture(hold_id, part))
        except UpstreamError as error:
            if error.reason not in _NOT_CAPTURABLE:
                raise
            # Last resort: the deadline covers the request, so this takes a stalled settlement.
            _log.warning("hold %s could not be captured (%s); charging anew", hold_id, error.reason)
            await self._charge_anew(charge, f"{charge.ledger_key}:late", amount)

    async def _charge_anew(self, charge: Charge, ledger_key: str, amount: int) -> None:
        hold = await self._retried(
            lambda: self._ledger.reserve(
                charge.account_id, amount, ledger_key, _SETTLE_HOLD_TTL_SECONDS
            )
        )
        if hold.state == HoldState.HELD:
            await self._retried(lambda: self._ledger.capture(hold.id))

    async def _retried(self, call: Callable[[], Awaitable[T]]) -> T:
        return await _idempotent(call, self._settle_retry_delays)


async def _idempotent(call: Callable[[], Awaitable[T]], delays: tuple[float, ...]) -> T:
    """`call()`, repeated after each of `delays` while it fails ambiguously."""
    for delay in delays:
        try:
            return await call()
        except UpstreamError as error:
            if error.code not in _AMBIGUOUS:
                raise
            _log.warning("ledger call failed (%s); retrying in %.2fs", error.code.name, delay)
        await asyncio.sleep(delay)
    return await call()
