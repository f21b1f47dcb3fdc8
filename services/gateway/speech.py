"""The money path: verify the key, validate, hold the credits, stream the audio, settle.

    authenticate ─▶ validate ─▶ reserve ─▶ synthesize ─▶ first piece ─▶ relay ─▶ capture
        401            400         402          └─ failure before the first piece: release, 502
                                                   failure after it: release, connection cut

Billing rules, in one place:
- A request costs len(input) credits, counted in Unicode code points.
- Everything that can be checked before Reserve is (length, voice, model, speed, format), so a
  bad request changes nothing.
- The stream completed: the hold is captured. The hold's deadline covers the whole request
  (settings.hold_ttl_seconds); should it lapse anyway, the amount is reserved and captured anew
  as a last resort: the audio was delivered, so it is paid for.
- Synthesis failed, or the gateway cut the stream while shutting down (our side): the hold is
  released, whatever was sent. Before the first byte the client gets a 502; after it the
  connection is cut so the client sees a broken stream.
- The client went away, or stopped reading for send_timeout_seconds (its choice): the characters
  whose audio had been handed to it are charged and the rest refunded, in one ledger call
  (Capture of part of the hold); nothing is charged if no audio went out. Refunding everything
  would let a client read all but the last sentence of a long text for free.
- Settlement calls are retried with a short backoff, so a ledger restart does not make
  delivered audio free; a hold left unsettled is returned by the ledger at its deadline.
- Idempotency: without an `Idempotency-Key` header each request is its own ledger key,
  `req:<request id>`. With one, the ledger key is derived from it and the request's content, so
  a retry of the same request is charged at most once while the same key on other content is
  another purchase. A retry after a success is served again without a second charge; a retry
  after a refund is charged (once); a retry while the first is still running is a 409.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from services.gateway.catalog import Catalog
from services.gateway.clients import (
    AudioPiece,
    AudioStream,
    Balance,
    Hold,
    HoldState,
    LedgerClient,
    Model,
    Principal,
    SynthesisRequest,
    UpstreamError,
    Upstreams,
    Voice,
)
from services.gateway.errors import ApiError, api_error, http_status
from services.gateway.middleware import timed
from services.gateway.protocol import (
    CONTENT_TYPES,
    SSE_CONTENT_TYPE,
    SpeechAudioDelta,
    SpeechAudioDone,
    SpeechRequest,
    SpeechUsage,
)
from services.gateway.settings import GatewaySettings

_log = logging.getLogger("gateway.speech")
T = TypeVar("T")

# Failures after which the call may or may not have taken effect: idempotent calls are repeated.
_AMBIGUOUS = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# A hold that lapsed or was released by someone else cannot be captured; charge anew instead.
_NOT_CAPTURABLE = frozenset({"HOLD_EXPIRED", "HOLD_RELEASED"})
# Holds placed only to be captured at once.
_SETTLE_HOLD_TTL_SECONDS = 60
# Pauses between attempts of a request's Reserve: the client is waiting, so one quick retry.
_RESERVE_RETRY_DELAYS: tuple[float, ...] = (0.0,)
# Pauses between attempts of a settlement (about 8 s in all): enough to ride out a ledger
# rolling restart, so completed audio is not left unpaid until the hold's deadline.
SETTLE_RETRY_DELAYS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)


class SynthesisInterrupted(Exception):
    """Synthesis failed after audio went out: the response can only be cut, not completed."""


class Outcome(enum.Enum):
    COMPLETED = "completed"  # every piece was handed to the client
    FAILED = "failed"  # synthesis failed: our fault, full refund
    CLIENT_LEFT = "client_left"  # the client disconnected: pay for what it was given


class ClientStalled(Exception):
    """The client took no body piece for send_timeout_seconds: treated as having left."""


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


@dataclass(frozen=True)
class Charge:
    """What a request holds on the ledger."""

    account_id: str
    amount: int
    ledger_key: str
    # None for a retry of a request already paid for: nothing to capture or release.
    hold_id: str | None


class SpeechService:
    def __init__(self, upstreams: Upstreams, catalog: Catalog, settings: GatewaySettings) -> None:
        self._auth = upstreams.auth
        self._ledger = upstreams.ledger
        self._synth = upstreams.synth
        self._catalog = catalog
        self._settings = settings
        self._settler = Settler(upstreams.ledger)
        # Deliveries started and not yet finished; drain() waits for them.
        self._live: set[SpeechDelivery] = set()

    async def authenticate(self, key: str | None) -> Principal:
        if not key:
            raise ApiError(401, "missing API key: send `Authorization: Bearer kp_live_…`")
        try:
            with timed("auth"):
                return await self._auth.verify_key(key)
        except UpstreamError as error:
            raise api_error(error) from error

    async def balance(self, principal: Principal) -> Balance:
        try:
            with timed("ledger"):
                return await self._ledger.get_balance(principal.account_id)
        except UpstreamError as error:
            if error.code == grpc.StatusCode.NOT_FOUND:
                return Balance(0, 0, False)  # a key issued before the ledger opened the account
            raise api_error(error) from error

    async def validate(self, request: SpeechRequest) -> SpeechOrder:
        """The checks that need settings or synth's lists; pydantic has checked the shape."""
        order = SpeechOrder(
            text=request.input,
            voice=(request.voice_name() or self._settings.default_voice).strip(),
            model=request.model.strip(),
            speed=request.speed,
            audio_format=request.response_format,
            stream_format=request.stream_format,
        )
        limit = self._settings.max_input_chars
        if order.characters > limit:
            raise ApiError(
                400, f"`input` is {order.characters} characters long; the limit is {limit}"
            )
        try:
            with timed("catalog"):
                models = await self._catalog.model_names()
                voice_problem = await self._catalog.voice_problem(order.voice)
        except UpstreamError as error:
            raise synthesis_error(error) from error
        if order.model not in models:
            known = ", ".join(models)
            raise ApiError(400, f"unknown model {order.model!r}; known models: {known}")
        if voice_problem is not None:
            raise ApiError(400, voice_problem)
        return order

    async def start(
        self,
        principal: Principal,
        order: SpeechOrder,
        *,
        request_id: str,
        request_id_is_ours: bool,
        idempotency_key: str | None,
    ) -> SpeechDelivery:
        """Hold the credits and wait for the first audio; the delivery relays the rest."""
        if idempotency_key is not None:
            digest = hashlib.sha256(f"{idempotency_key}\0{order.fingerprint()}".encode())
            ledger_key = f"idem:{digest.hexdigest()}"
        elif request_id_is_ours:
            ledger_key = f"req:{request_id}"
        else:
            # A client may send one x-request-id twice; that must not make two requests one.
            ledger_key = f"req:{request_id}:{uuid.uuid4().hex[:12]}"
        with timed("reserve"):
            charge = await self._reserve(principal, order, ledger_key)
        stream = self._synth.synthesize(
            SynthesisRequest(order.text, order.voice, order.model, order.speed, order.audio_format)
        )
        try:
            with timed("synth"):  # the wait for the model's first audio
                first = await asyncio.wait_for(
                    stream.next(), self._settings.first_chunk_timeout_seconds
                )
            if first is None:
                raise UpstreamError("synth", grpc.StatusCode.INTERNAL, "empty audio stream")
        except BaseException as failure:
            stream.cancel()
            await self._settler.settle(charge, Outcome.FAILED, delivered_characters=0)
            if isinstance(failure, UpstreamError):
                raise synthesis_error(failure) from failure
            if isinstance(failure, TimeoutError):
                raise ApiError(
                    502, "speech synthesis did not start in time; nothing was charged"
                ) from failure
            raise
        delivery = SpeechDelivery(stream, first, order, charge, self._settler, self._live)
        self._live.add(delivery)
        return delivery

    @property
    def send_timeout_seconds(self) -> float:
        return self._settings.send_timeout_seconds

    async def models(self) -> list[Model]:
        try:
            return await self._catalog.models()
        except UpstreamError as error:
            raise api_error(error) from error

    async def voices(self) -> list[Voice]:
        try:
            return await self._catalog.voices()
        except UpstreamError as error:
            raise api_error(error) from error

    async def drain(self, timeout: float = 10.0) -> None:
        """At shutdown: let deliveries still running finish and settle, then wait for every
        settlement. Deliveries not finished within `timeout` were cut by us: refunded."""
        if self._live:
            waits = [asyncio.ensure_future(d.finished.wait()) for d in self._live]
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for wait in pending:
                wait.cancel()
        for delivery in list(self._live):
            delivery.server_stopped()
            await delivery.finish()
        await self._settler.drain()

    async def _reserve(self, principal: Principal, order: SpeechOrder, ledger_key: str) -> Charge:
        ttl = self._settings.hold_ttl_seconds(order.characters)

        attempts = 0

        def reserve(key: str) -> Callable[[], Awaitable[Hold]]:
            async def call() -> Hold:
                nonlocal attempts
                attempts += 1
                return await self._ledger.reserve(principal.account_id, order.characters, key, ttl)

            return call

        try:
            hold = await _idempotent(reserve(ledger_key), _RESERVE_RETRY_DELAYS)
            if hold.state in (HoldState.RELEASED, HoldState.EXPIRED):
                # This very request was refunded before; trying again is a new purchase.
                ledger_key = f"{ledger_key}:{uuid.uuid4().hex[:12]}"
                hold = await _idempotent(reserve(ledger_key), _RESERVE_RETRY_DELAYS)
        except UpstreamError as error:
            if error.reason == "INSUFFICIENT_CREDITS" or error.code == grpc.StatusCode.NOT_FOUND:
                raise ApiError(
                    402,
                    f"insufficient credits: this request costs {order.characters} credits "
                    "(one per character of input); top up your balance",
                ) from error
            raise api_error(error) from error
        # After a retried Reserve, a replayed hold may be the one our first attempt placed.
        if hold.state == HoldState.HELD and hold.replayed and attempts == 1:
            # The same request is being served right now (or its delivery has yet to settle):
            # a second synthesis under that hold would deliver twice for one charge.
            raise ApiError(
                409,
                "a request with this Idempotency-Key and content is still in progress; "
                "retry once it has finished",
            )
        if hold.state == HoldState.CAPTURED:
            _log.info("a paid request again: not charged twice", extra={"ledger_key": ledger_key})
            return Charge(principal.account_id, order.characters, ledger_key, hold_id=None)
        return Charge(principal.account_id, order.characters, ledger_key, hold_id=hold.id)


class SpeechDelivery:
    """A started synthesis: relays the pieces as they come, then settles the charge.

    `body()` is the HTTP body; `finish()` must run once the response is over, however it ended.
    """

    def __init__(
        self,
        stream: AudioStream,
        first: AudioPiece,
        order: SpeechOrder,
        charge: Charge,
        settler: Settler,
        live: set[SpeechDelivery] | None = None,
    ) -> None:
        self._stream = stream
        self._first = first
        self._order = order
        self._charge = charge
        self._settler = settler
        self._delivered_characters = 0
        self._outcome: Outcome | None = None
        self._finished = False
        self._live = live
        # Set once finish() has settled the charge.
        self.finished = asyncio.Event()

    @property
    def content_type(self) -> str:
        if self._order.stream_format == "sse":
            return SSE_CONTENT_TYPE
        return CONTENT_TYPES[self._order.audio_format]

    @property
    def characters(self) -> int:
        return self._order.characters

    def body(self) -> AsyncIterator[bytes]:
        if self._order.stream_format == "sse":
            return self._events()
        return self._audio()

    async def finish(self) -> None:
        """Stop synthesis if it still runs, then capture or refund. Safe to call twice."""
        if self._finished:
            return
        self._finished = True
        self._stream.cancel()
        # No outcome recorded: the body was abandoned before its end, so the client left.
        outcome = self._outcome or Outcome.CLIENT_LEFT
        try:
            await self._settler.settle(
                self._charge, outcome, delivered_characters=self._delivered_characters
            )
        finally:
            if self._live is not None:
                self._live.discard(self)
            self.finished.set()

    def server_stopped(self) -> None:
        """The gateway cut the response (shutdown): our failure, refunded, unless it was over."""
        if self._outcome is None:
            self._outcome = Outcome.FAILED

    async def _pieces(self) -> AsyncIterator[AudioPiece]:
        piece: AudioPiece | None = self._first
        while piece is not None:
            yield piece
            # Resumed only when the consumer wants more: the piece has been handed over.
            self._delivered_characters = max(self._delivered_characters, piece.characters_consumed)
            try:
                piece = await self._stream.next()
            except UpstreamError as error:
                self._outcome = Outcome.FAILED
                _log.warning(
                    "synthesis failed mid-stream: %s",
                    error,
                    extra={"delivered_characters": self._delivered_characters},
                )
                raise SynthesisInterrupted(str(error)) from error
        self._outcome = Outcome.COMPLETED

    async def _audio(self) -> AsyncIterator[bytes]:
        async for piece in self._pieces():
            if piece.audio:
                yield piece.audio

    async def _events(self) -> AsyncIterator[bytes]:
        async for piece in self._pieces():
            if piece.audio:
                delta = SpeechAudioDelta(audio=base64.b64encode(piece.audio).decode("ascii"))
                yield _sse(delta.model_dump_json())
        n = self._order.characters
        done = SpeechAudioDone(usage=SpeechUsage(input_tokens=n, total_tokens=n, characters=n))
        yield _sse(done.model_dump_json())


class Settler:
    """Captures or refunds holds, in tasks of their own so a cancelled request still settles."""

    def __init__(self, ledger: LedgerClient) -> None:
        self._ledger = ledger
        self._running: set[asyncio.Task[None]] = set()

    async def settle(self, charge: Charge, outcome: Outcome, *, delivered_characters: int) -> None:
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
                await _idempotent(lambda: self._ledger.release(hold_id), SETTLE_RETRY_DELAYS)
        except UpstreamError as error:
            # The hold stays until its deadline, when the ledger returns the credits itself.
            _log.error("could not settle a hold: %s", error, extra=extra)
            return
        _log.info("settled: charged %d of %d credits", charged, charge.amount, extra=extra)

    async def _capture(self, charge: Charge, hold_id: str, amount: int) -> None:
        part = None if amount >= charge.amount else amount
        try:
            await _idempotent(lambda: self._ledger.capture(hold_id, part), SETTLE_RETRY_DELAYS)
        except UpstreamError as error:
            if error.reason not in _NOT_CAPTURABLE:
                raise
            # Last resort: the deadline covers the request, so this takes a stalled settlement.
            _log.warning("hold %s could not be captured (%s); charging anew", hold_id, error.reason)
            await self._charge_anew(charge, f"{charge.ledger_key}:late", amount)

    async def _charge_anew(self, charge: Charge, ledger_key: str, amount: int) -> None:
        hold = await _idempotent(
            lambda: self._ledger.reserve(
                charge.account_id, amount, ledger_key, _SETTLE_HOLD_TTL_SECONDS
            ),
            SETTLE_RETRY_DELAYS,
        )
        if hold.state == HoldState.HELD:
            await _idempotent(lambda: self._ledger.capture(hold.id), SETTLE_RETRY_DELAYS)


def synthesis_error(error: UpstreamError) -> ApiError:
    """A synth failure as the client sees it: its own mistakes as 4xx, anything else 502."""
    status = http_status(error)
    if status < 500:
        return ApiError(status, error.message or "invalid request")
    _log.warning("synthesis failed: %s", error, extra={"grpc_code": error.code.name})
    return ApiError(502, "upstream synthesis error; any charge for this request was refunded")


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


def _sse(data: str) -> bytes:
    return f"data: {data}\n\n".encode()
