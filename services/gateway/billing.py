"""What a request costs, how its credits are held, and how the hold is settled.

- A request costs len(input) credits, counted in Unicode code points.
- While the audio streams, `HoldKeeper` checkpoints the characters delivered so far on the hold
  every few seconds (settings.checkpoint_interval_seconds), each time moving its deadline
  settings.hold_extension_seconds ahead. A hold whose gateway died mid-stream lapses soon after,
  and the ledger then captures its last checkpoint and returns the rest: the customer pays for
  the audio they received (up to the last checkpoint), and for nothing else.
- The stream completed: the hold is captured. Should it have lapsed anyway (the ledger missed
  every checkpoint for a whole extension), the lapse captured its last checkpoint, and the rest
  of what was delivered is reserved and captured anew as a last resort: the audio was
  delivered, so it is paid for, once.
- Synthesis failed, or the gateway cut the stream while shutting down (our side): the hold is
  released, whatever was sent.
- The client went away, or stopped reading for send_timeout_seconds (its choice), or the stream
  reached settings.max_stream_seconds: the characters whose audio had been handed to the client
  are charged and the rest refunded, in one ledger call (Capture of part of the hold); nothing
  is charged if no audio went out. Refunding everything would let a client read all but the
  last sentence of a long text for free.
- Ledger calls that may or may not have taken effect are repeated under the same key: Reserve
  once at once (the client is waiting), settlements with a short backoff
  (settings.settle_retry_delays_seconds), so a ledger restart does not make delivered audio
  free; a hold left unsettled is returned by the ledger at its deadline.
- Idempotency: without an `Idempotency-Key` header each request is its own ledger key,
  `req:<request id>`. With one, the key names one request for 24 hours, kept by the ledger (a
  keyed Reserve, ledger.proto's KeyedRequest): each attempt is a hold of at most what the key
  has not paid yet, charged for the characters it delivered, so the key's total never passes
  len(input); one attempt at a time (another gets 409); the same key on a request that differs
  in any field as understood (input, voice and model after alias and blend resolution, speed,
  response_format, stream_format, word timestamps; captioned speech's JSON answers count as
  stream formats of their own) gets 400; once the whole price is paid, two retries are served
  again free, then 409.
- Every Reserve of a request, late charges included, carries its usage labels (the verified
  key's id, the voice as requested, the format and the model): the ledger keeps them with the
  hold, and they are what the customer's usage report is added up by.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from services.gateway import metrics
from services.gateway.clients import (
    Hold,
    HoldState,
    KeyedRequest,
    LedgerClient,
    Principal,
    UpstreamError,
    UsageLabels,
)
from services.gateway.errors import reserve_error
from services.gateway.fingerprint import fingerprint

_log = logging.getLogger("gateway.billing")
T = TypeVar("T")

# Failures after which the call may or may not have taken effect: idempotent calls are repeated.
_AMBIGUOUS = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# A hold that lapsed or was released by someone else cannot be captured; charge anew instead.
# A lapsed hold with a checkpoint was captured by the ledger for that checkpoint: HOLD_CAPTURED.
_NOT_CAPTURABLE = frozenset({"HOLD_EXPIRED", "HOLD_RELEASED", "HOLD_CAPTURED"})
# Checkpoint refusals that mean the hold is closed: nothing left to keep alive.
_HOLD_CLOSED = frozenset({"HOLD_EXPIRED", "HOLD_RELEASED", "HOLD_CAPTURED"})
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
    # How the audio is answered: audio, sse, json or jsonl (protocol.AnswerFormat).
    stream_format: str
    # The voice and model as synth understands them (aliases and blends resolved, weights
    # normalized): what decides whether two requests under one Idempotency-Key are the same.
    resolved_voice: str = ""
    resolved_model: str = ""
    # The answer says when each word is spoken.
    word_timestamps: bool = False

    @property
    def characters(self) -> int:
        return len(self.text)  # a Python str is a sequence of code points

    def labels(self, principal: Principal) -> UsageLabels:
        """What its hold pays for, as the customer's usage report shows it."""
        return UsageLabels(
            key_id=principal.key_id,
            voice=self.voice,
            response_format=self.audio_format,
            model=self.model,
        )

    def fingerprint(self) -> str:
        """The request as understood: one Idempotency-Key names one of these."""
        fields = [
            ("input", self.text),
            ("voice", self.resolved_voice or self.voice),
            ("model", self.resolved_model or self.model),
            ("speed", repr(float(self.speed))),
            ("response_format", self.audio_format),
            ("stream_format", self.stream_format),
        ]
        if self.word_timestamps:
            # Only when asked: the fingerprints of requests without them stay what they were.
            fields.append(("timestamps", "word"))
        return fingerprint(fields)


def ledger_key(*, request_id: str, request_id_is_ours: bool) -> str:
    """The key one attempt's Reserve is made under: the ledger's retries of it stay one hold."""
    if request_id_is_ours:
        return f"req:{request_id}"
    # A client may send one x-request-id twice; that must not make two requests one.
    return f"req:{request_id}:{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Charge:
    """What a request holds on the ledger."""

    account_id: str
    # Credits held for this attempt: len(input), or what its Idempotency-Key has left to pay.
    amount: int
    ledger_key: str
    # None for a free replay of a keyed request already paid for: nothing to settle.
    hold_id: str | None
    # The customer's keyed request this attempt belongs to, if it named one.
    keyed: KeyedRequest | None = None
    # Sent with every Reserve made for the request, a late charge's too.
    labels: UsageLabels | None = None

    @property
    def replay(self) -> bool:
        return self.hold_id is None


class Outcome(enum.Enum):
    COMPLETED = "completed"  # every piece was handed to the client
    FAILED = "failed"  # synthesis failed: our fault, full refund
    CLIENT_LEFT = "client_left"  # the client disconnected: pay for what it was given
    TIME_LIMIT = "time_limit"  # the stream reached max_stream_seconds: as if the client left


# Outcomes that charge what was delivered and refund the rest.
_PARTIAL = frozenset({Outcome.CLIENT_LEFT, Outcome.TIME_LIMIT})


class HoldKeeper:
    """Keeps a streaming request's hold alive and its delivered characters on the ledger.

    Every `interval` seconds (never per piece), Checkpoint(delivered so far, `extension`) if the
    delivered count grew or the hold has less than half an extension left; a failed checkpoint
    is logged and tried again at the next tick, and never touches the stream. It assumes the
    hold lives at least one extension when it starts, which settings.hold_ttl_seconds ensures
    (the first-audio wait, then one extension, then the settling margin). `stop()` before
    settling.
    """

    def __init__(
        self,
        ledger: LedgerClient,
        charge: Charge,
        delivered: Callable[[], int],
        *,
        interval: float,
        extension: int,
    ) -> None:
        self._ledger = ledger
        self._charge = charge
        self._delivered = delivered
        self._interval = interval
        self._extension = extension
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None and self._charge.hold_id is not None:  # a free replay holds none
            self._task = asyncio.ensure_future(self._run(self._charge.hold_id))

    def stop(self) -> None:
        """No checkpoint after this; one already sent is harmless (the ledger serializes it with
        the settlement, and a checkpoint of a closed hold changes nothing)."""
        if self._task is not None:
            self._task.cancel()

    async def _run(self, hold_id: str) -> None:
        loop = asyncio.get_running_loop()
        recorded = 0  # what the ledger last acknowledged
        lives_until = loop.time() + self._extension  # at least; see the class docstring
        while True:
            await asyncio.sleep(self._interval)
            # A keyed attempt may hold less than the input's length; it is charged at most that.
            delivered = min(self._delivered(), self._charge.amount)
            now = loop.time()
            if delivered <= recorded and lives_until - now > self._extension / 2:
                continue
            try:
                await self._ledger.checkpoint(hold_id, delivered, self._extension)
            except UpstreamError as error:
                if error.reason in _HOLD_CLOSED:
                    # Lapsed or settled: settlement finds out which and charges accordingly.
                    _log.warning("checkpoints end: %s", error, extra={"hold_id": hold_id})
                    return
                _log.warning(
                    "checkpoint failed (%s); trying again in %.1fs",
                    error,
                    self._interval,
                    extra={"hold_id": hold_id, "delivered_characters": delivered},
                )
                continue
            recorded, lives_until = delivered, now + self._extension


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
        checkpoint_interval: float = 5.0,
        hold_extension: int = 60,
        billing_url: str = "",
    ) -> None:
        self._ledger = ledger
        # Where a 402 sends the customer to buy credits (GATEWAY_BILLING_URL).
        self._billing_url = billing_url
        self._settle_retry_delays = settle_retry_delays
        self._reserve_retry_delays = reserve_retry_delays
        self._checkpoint_interval = checkpoint_interval
        self._hold_extension = hold_extension
        self._running: set[asyncio.Task[None]] = set()

    async def hold(
        self,
        principal: Principal,
        order: SpeechOrder,
        ledger_key: str,
        ttl_seconds: int,
        idempotency_key: str | None = None,
    ) -> Charge:
        """Reserve the order's cost under `ledger_key` (402 without the credits); with an
        Idempotency-Key, as one attempt at the request it names (400, 409, or a free replay)."""
        account = principal.account_id
        labels = order.labels(principal)
        try:
            if idempotency_key is None:
                cost = order.characters
                hold = await _idempotent(
                    lambda: self._ledger.reserve(account, cost, ledger_key, ttl_seconds, labels),
                    self._reserve_retry_delays,
                )
                return Charge(account, hold.amount, ledger_key, hold.id, labels=labels)
            keyed = KeyedRequest(idempotency_key, order.fingerprint(), order.characters)
            reservation = await _idempotent(
                lambda: self._ledger.reserve_keyed(
                    account, order.characters, ledger_key, ttl_seconds, keyed, labels
                ),
                self._reserve_retry_delays,
            )
        except UpstreamError as error:
            raise reserve_error(
                error, order.characters, order.fingerprint(), self._billing_url
            ) from error
        if reservation.hold is None:
            _log.info(
                "a paid keyed request again: served free (%d replays left)",
                reservation.replays_left,
                extra={"ledger_key": ledger_key},
            )
            return Charge(account, 0, ledger_key, None, keyed, labels)
        hold = reservation.hold
        return Charge(account, hold.amount, ledger_key, hold.id, keyed, labels)

    def keeper(self, charge: Charge, delivered: Callable[[], int]) -> HoldKeeper:
        """Checkpoints for `charge` while its audio streams; `delivered()` counts the characters
        handed to the client so far."""
        return HoldKeeper(
            self._ledger,
            charge,
            delivered,
            interval=self._checkpoint_interval,
            extension=self._hold_extension,
        )

    async def settle(self, charge: Charge, outcome: Outcome, *, delivered_characters: int) -> None:
        """Capture, capture in part, or release the hold, as `outcome` says."""
        if charge.hold_id is None:
            return  # a free replay
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
        # What the client owes, what it was charged in all, and what this settlement captured
        # (a lapsed hold's expiry may have captured part of it: the ledger counts that part).
        owed = charged = charged_here = 0
        try:
            if outcome is Outcome.COMPLETED:
                owed = charge.amount
                charged, charged_here = await self._capture(charge, hold_id, owed)
            elif outcome in _PARTIAL and delivered_characters > 0:
                # One ledger call spends the part delivered and returns the rest atomically.
                owed = min(delivered_characters, charge.amount)
                charged, charged_here = await self._capture(charge, hold_id, owed)
            else:
                await self._retried(lambda: self._ledger.release(hold_id))
        except UpstreamError as error:
            # The hold stays until its deadline, when the ledger returns the credits itself
            # (counted by the ledger's expiry metrics, not here: nothing is known settled).
            _log.error("could not settle a hold: %s", error, extra=extra)
            return
        # Refunded: what was held and not owed. Owed and unpaid (a balance too short for a late
        # charge) is neither charged nor refunded.
        metrics.record_settlement(outcome.value, charge.amount - owed, charged_here)
        _log.info("settled: charged %d of %d credits", charged, charge.amount, extra=extra)

    async def _capture(self, charge: Charge, hold_id: str, amount: int) -> tuple[int, int]:
        """Capture `amount` of the hold: what the request was charged in all, and how much of
        that this call captured (the rest a lapsed hold's expiry captured before it)."""
        part = None if amount >= charge.amount else amount
        try:
            await self._retried(lambda: self._ledger.capture(hold_id, part))
        except UpstreamError as error:
            if error.reason not in _NOT_CAPTURABLE:
                raise
            # Last resort: checkpoints keep the hold alive, so this takes a ledger that missed
            # them for a whole extension. A lapse captured the last checkpoint, if there was one.
            spent = await self._spent(charge) if error.reason == "HOLD_CAPTURED" else 0
            if spent >= amount:
                return spent, 0
            _log.warning(
                "hold %s could not be captured (%s, %d spent); charging %d anew",
                hold_id,
                error.reason,
                spent,
                amount - spent,
            )
            late = await self._charge_anew(charge, f"{charge.ledger_key}:late", amount - spent)
            return spent + late, late
        return amount, amount

    async def _spent(self, charge: Charge) -> int:
        """What the attempt's closed hold spent, read back by repeating its Reserve: a repeat
        under the same ledger key returns the original hold and holds nothing."""
        if charge.keyed is None:
            hold: Hold | None = await self._retried(
                lambda: self._ledger.reserve(
                    charge.account_id,
                    charge.amount,
                    charge.ledger_key,
                    _SETTLE_HOLD_TTL_SECONDS,
                    charge.labels,
                )
            )
        else:
            keyed = charge.keyed
            reservation = await self._retried(
                lambda: self._ledger.reserve_keyed(
                    charge.account_id,
                    charge.amount,
                    charge.ledger_key,
                    _SETTLE_HOLD_TTL_SECONDS,
                    keyed,
                    charge.labels,
                )
            )
            hold = reservation.hold
        if hold is None or hold.state != HoldState.CAPTURED:
            return 0
        return hold.captured

    async def _charge_anew(self, charge: Charge, ledger_key: str, amount: int) -> int:
        """Charge `amount` for audio delivered under a lapsed hold; what the balance no longer
        covers is logged as unpaid rather than driven below zero. What was charged."""
        try:
            hold = await self._late_hold(charge, ledger_key, amount)
        except UpstreamError as error:
            available = int(error.metadata.get("balance", "0") or 0)
            if error.reason != "INSUFFICIENT_CREDITS" or available <= 0:
                raise
            _log.error("late charge short: %d of %d credits unpaid", amount - available, amount)
            hold = await self._late_hold(charge, f"{ledger_key}:short", available)
        if hold is None:
            return 0  # the Idempotency-Key had paid its price already
        if hold.state == HoldState.HELD:
            await self._retried(lambda: self._ledger.capture(hold.id))
            return hold.amount
        # A repeat of a late hold that an earlier attempt of this settlement captured.
        return hold.captured if hold.state == HoldState.CAPTURED else 0

    async def _late_hold(self, charge: Charge, ledger_key: str, amount: int) -> Hold | None:
        if charge.keyed is None:
            return await self._retried(
                lambda: self._ledger.reserve(
                    charge.account_id, amount, ledger_key, _SETTLE_HOLD_TTL_SECONDS, charge.labels
                )
            )
        # Within what the Idempotency-Key has left to pay; None when it has paid its price.
        late = dataclasses.replace(charge.keyed, late_charge=True)
        reservation = await self._retried(
            lambda: self._ledger.reserve_keyed(
                charge.account_id, amount, ledger_key, _SETTLE_HOLD_TTL_SECONDS, late, charge.labels
            )
        )
        return reservation.hold

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
