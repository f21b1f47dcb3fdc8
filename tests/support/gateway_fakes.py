"""In-memory auth, ledger, synth and predictions behind the gateway's client Protocols, and the
app over them.

Only the gateway's unit tests use these; the end-to-end tests run the real services. The fakes
keep the rules the real services document in their protos (idempotent Reserve, Capture refused
for a released hold, ErrorInfo reasons), so the serving layer is exercised against the contract.
The fixtures that serve them are in gateway_fixtures.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from fastapi import FastAPI

from services.common.logs import request_id_var
from services.gateway.app import create_app
from services.gateway.clients import (
    Admission,
    AudioPiece,
    Balance,
    Hold,
    HoldState,
    KeyedCreate,
    KeyedRequest,
    KeyedReservation,
    KeyUse,
    LimitRefusal,
    Model,
    OutputPiece,
    OutputRequest,
    Prediction,
    PredictionInput,
    PredictionStatus,
    Principal,
    SlotRenewal,
    SpokenWord,
    SynthesisRequest,
    UpstreamError,
    Upstreams,
    UsageLabels,
    VerifiedKey,
    Voice,
)
from services.gateway.serving import SpeechSeller
from services.gateway.settings import GatewaySettings
from services.gateway.slots import StreamSlots


def fake_key(letter: str) -> str:
    """A string of a key's exact shape (`kp_live_` + 43 base62 digits), so the gateway's shape
    check lets it through to the fake auth."""
    return "kp_live_" + letter * 43


GOOD_KEY = fake_key("a")
REVOKED_KEY = fake_key("r")
ACCOUNT = "acct_test"


@dataclass
class FakeKeyLimits:
    """A key's limits for one use: requests a window, and how many at once."""

    requests_per_window: int
    at_once: int


@dataclass
class FakeSlot:
    holder: str
    key: str


class FakeAuth:
    """VerifyKey, and auth.proto's limits in memory: with a use, each request is counted in its
    key's window (opened by its first request after the last one ended; a refused request
    counts too), and a speech request takes a slot for its holder while the key has fewer than
    its `at_once`. Leases are not modelled: `slots` holds what was taken and not released."""

    def __init__(self) -> None:
        self.keys = {GOOD_KEY: Principal(ACCOUNT, "key_good")}
        self.revoked = {REVOKED_KEY: Principal(ACCOUNT, "key_revoked")}
        self.request_ids: list[str] = []
        # Every key VerifyKey was asked about, in order: each one a database lookup in auth.
        self.verified: list[str] = []
        # The use and holder of each VerifyKey, in order.
        self.uses: list[tuple[KeyUse | None, str]] = []
        self.serving = True
        # Status codes the next verify_key calls fail with, before looking at the key.
        self.failures: list[grpc.StatusCode] = []
        # Generous by default: only the limit tests come near them.
        self.limits = {
            KeyUse.SPEECH: FakeKeyLimits(1000, 100),
            KeyUse.PREDICTION_CREATE: FakeKeyLimits(1000, 100),
        }
        self.window_seconds = 60.0
        self.lease_seconds = 30.0
        self.concurrency_retry_after = 1.0
        # Answer with uses as an auth from before the limits would: no admission.
        self.answers_admissions = True
        self.clock: Callable[[], float] = time.monotonic
        # (key, use) → (when its window opened, requests counted in it)
        self.windows: dict[tuple[str, KeyUse], tuple[float, int]] = {}
        self.slots: dict[str, FakeSlot] = {}
        self.releases: list[tuple[str, list[str]]] = []
        self.renewals: list[str] = []
        # Status codes the next release_slots / renew_slots calls fail with.
        self.release_failures: list[grpc.StatusCode] = []
        self.renew_failures: list[grpc.StatusCode] = []
        self._slot_ids = itertools.count(1)

    async def verify_key(
        self, key: str, *, use: KeyUse | None = None, holder: str = ""
    ) -> VerifiedKey:
        self.request_ids.append(request_id_var.get())
        self.verified.append(key)
        self.uses.append((use, holder))
        if self.failures:
            raise UpstreamError("auth", self.failures.pop(0), "injected failure")
        if key in self.revoked:
            raise UpstreamError(
                "auth", grpc.StatusCode.UNAUTHENTICATED, "API key has been revoked", "KEY_REVOKED"
            )
        if key not in self.keys:
            raise UpstreamError(
                "auth", grpc.StatusCode.UNAUTHENTICATED, "invalid API key", "KEY_INVALID"
            )
        principal = self.keys[key]
        if use is None or not self.answers_admissions:
            return VerifiedKey(principal)
        return VerifiedKey(principal, self._admit(key, use, holder))

    def _admit(self, key: str, use: KeyUse, holder: str) -> Admission:
        limits = self.limits[use]
        now = self.clock()
        opened, counted = self.windows.get((key, use), (now, 0))
        if now >= opened + self.window_seconds:
            opened, counted = now, 0
        counted += 1
        self.windows[key, use] = (opened, counted)
        reset = opened + self.window_seconds - now
        refusal: LimitRefusal | None = None
        retry_after = 0.0
        if counted > limits.requests_per_window:
            refusal, retry_after = LimitRefusal.REQUESTS, reset
        elif use is KeyUse.SPEECH and self.streams_of(key) >= limits.at_once:
            refusal, retry_after = LimitRefusal.CONCURRENCY, self.concurrency_retry_after
        slot_id = ""
        if refusal is None and use is KeyUse.SPEECH:
            slot_id = f"slot_{next(self._slot_ids)}"
            self.slots[slot_id] = FakeSlot(holder, key)
        return Admission(
            admitted=refusal is None,
            refusal=refusal,
            request_limit=limits.requests_per_window,
            requests_remaining=max(limits.requests_per_window - counted, 0),
            requests_reset=reset,
            retry_after=retry_after,
            concurrency_limit=limits.at_once,
            slot_id=slot_id,
            lease=self.lease_seconds if slot_id else 0.0,
        )

    def streams_of(self, key: str = GOOD_KEY) -> int:
        """The slots the key holds."""
        return sum(1 for slot in self.slots.values() if slot.key == key)

    async def release_slots(self, holder: str, slot_ids: Sequence[str]) -> int:
        self.releases.append((holder, list(slot_ids)))
        if self.release_failures:
            raise UpstreamError("auth", self.release_failures.pop(0), "injected failure")
        mine = [i for i in slot_ids if i in self.slots and self.slots[i].holder == holder]
        for slot_id in mine:
            del self.slots[slot_id]
        return len(mine)

    async def renew_slots(self, holder: str) -> SlotRenewal:
        self.renewals.append(holder)
        if self.renew_failures:
            raise UpstreamError("auth", self.renew_failures.pop(0), "injected failure")
        renewed = sum(1 for slot in self.slots.values() if slot.holder == holder)
        return SlotRenewal(renewed, self.lease_seconds)

    async def ready(self) -> bool:
        return self.serving


@dataclass
class FakeHold:
    id: str
    account_id: str
    amount: int
    key: str
    state: HoldState = HoldState.HELD
    captured: int = 0
    # The customer's Idempotency-Key whose attempt this hold is.
    request_key: str | None = None
    # Credits delivered as of the last checkpoint: what expiry captures.
    checkpointed: int = 0
    # What the Reserve that placed it labelled it with.
    labels: UsageLabels | None = None

    def frozen(self, *, replayed: bool = False) -> Hold:
        return Hold(self.id, self.amount, self.state, self.captured, replayed, self.checkpointed)


@dataclass
class FakeKeyedRequest:
    fingerprint: str
    price: int
    replays: int = 0


@dataclass
class FakeLedger:
    """Balances and holds with the ledger's rules; `calls` records every call in order."""

    balances: dict[str, int] = field(default_factory=lambda: {ACCOUNT: 1000})
    unlimited: set[str] = field(default_factory=set)
    holds: dict[str, FakeHold] = field(default_factory=dict)
    calls: list[tuple[str, ...]] = field(default_factory=list)
    # Status codes the next reserve calls fail with, before doing anything.
    reserve_failures: list[grpc.StatusCode] = field(default_factory=list)
    # Status codes the next capture calls fail with, before doing anything.
    capture_failures: list[grpc.StatusCode] = field(default_factory=list)
    # Status codes the next checkpoint calls fail with, before doing anything.
    checkpoint_failures: list[grpc.StatusCode] = field(default_factory=list)
    # The next hold to be captured has "expired" first.
    expire_before_capture: bool = False
    request_ids: list[str] = field(default_factory=list)
    serving: bool = True
    keyed: dict[str, FakeKeyedRequest] = field(default_factory=dict)
    max_replays: int = 2
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def balance_of(self, account_id: str = ACCOUNT) -> int:
        return self.balances[account_id]

    def open_holds(self) -> list[FakeHold]:
        return [h for h in self.holds.values() if h.state == HoldState.HELD]

    def captured(self) -> int:
        return sum(h.captured for h in self.holds.values() if h.state == HoldState.CAPTURED)

    def checkpoints(self, hold_id: str | None = None) -> list[int]:
        """The `delivered` of each checkpoint call (of one hold), in order, failed ones too."""
        return [
            int(call[2])
            for call in self.calls
            if call[0] == "checkpoint" and hold_id in (None, call[1])
        ]

    def expire(self, hold_id: str) -> None:
        """The hold's deadline passes: the ledger captures its last checkpoint and returns the
        rest (state CAPTURED), or, with no checkpoint, returns everything (state EXPIRED)."""
        hold = self.holds[hold_id]
        if hold.state != HoldState.HELD:
            return
        if hold.checkpointed > 0:
            self._refund(hold, HoldState.CAPTURED, hold.amount - hold.checkpointed)
            hold.captured = hold.checkpointed
        else:
            self._refund(hold, HoldState.EXPIRED)

    async def get_balance(self, account_id: str) -> Balance:
        self.calls.append(("get_balance", account_id))
        if account_id not in self.balances:
            raise UpstreamError("ledger", grpc.StatusCode.NOT_FOUND, "no such account")
        held = sum(h.amount for h in self.open_holds() if h.account_id == account_id)
        return Balance(self.balances[account_id], held, account_id in self.unlimited)

    async def reserve(
        self,
        account_id: str,
        amount: int,
        idempotency_key: str,
        ttl_seconds: int,
        labels: UsageLabels | None = None,
    ) -> Hold:
        self.calls.append(("reserve", account_id, str(amount), idempotency_key))
        self.request_ids.append(request_id_var.get())
        if self.reserve_failures:
            raise UpstreamError("ledger", self.reserve_failures.pop(0), "injected failure")
        for hold in self.holds.values():
            if hold.account_id == account_id and hold.key == idempotency_key:
                if hold.amount != amount:
                    raise UpstreamError(
                        "ledger",
                        grpc.StatusCode.ALREADY_EXISTS,
                        "key reused",
                        "IDEMPOTENCY_KEY_REUSED",
                    )
                return hold.frozen(replayed=True)
        if account_id not in self.balances:
            raise UpstreamError("ledger", grpc.StatusCode.NOT_FOUND, "no such account")
        unlimited = account_id in self.unlimited
        if not unlimited and self.balances[account_id] < amount:
            raise UpstreamError(
                "ledger",
                grpc.StatusCode.FAILED_PRECONDITION,
                "insufficient credits",
                "INSUFFICIENT_CREDITS",
            )
        if not unlimited:
            self.balances[account_id] -= amount
        hold = FakeHold(
            f"hold_{next(self._ids)}", account_id, amount, idempotency_key, labels=labels
        )
        self.holds[hold.id] = hold
        return hold.frozen()

    async def reserve_keyed(
        self,
        account_id: str,
        amount: int,
        idempotency_key: str,
        ttl_seconds: int,
        keyed: KeyedRequest,
        labels: UsageLabels | None = None,
    ) -> KeyedReservation:
        """ledger.proto's KeyedRequest rules, in memory (no window: tests run within a day)."""
        record = self.keyed.setdefault(keyed.key, FakeKeyedRequest(keyed.fingerprint, keyed.price))
        attempts = [h for h in self.holds.values() if h.request_key == keyed.key]
        charged = sum(h.captured for h in attempts if h.state == HoldState.CAPTURED)
        left = record.price - charged
        replays_left = self.max_replays - record.replays
        earlier = [h for h in attempts if h.account_id == account_id and h.key == idempotency_key]
        if earlier:  # this very attempt, asked again: its hold as it stands
            return KeyedReservation(earlier[0].frozen(replayed=True), False, charged, replays_left)

        def refused(code: grpc.StatusCode, reason: str, **metadata: str) -> UpstreamError:
            return UpstreamError("ledger", code, reason.lower(), reason, metadata)

        if record.fingerprint != keyed.fingerprint:
            raise refused(
                grpc.StatusCode.ALREADY_EXISTS, "REQUEST_KEY_REUSED", fingerprint=record.fingerprint
            )
        if any(h.state == HoldState.HELD for h in attempts):
            raise refused(grpc.StatusCode.FAILED_PRECONDITION, "ATTEMPT_IN_PROGRESS")
        if left <= 0 and keyed.late_charge:
            return KeyedReservation(None, False, charged, replays_left)
        if left <= 0:
            if replays_left == 0:
                raise refused(grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_COMPLETED")
            record.replays += 1
            return KeyedReservation(None, True, charged, replays_left - 1)
        hold = await self.reserve(
            account_id, min(amount, left), idempotency_key, ttl_seconds, labels
        )
        self.holds[hold.id].request_key = keyed.key
        return KeyedReservation(hold, False, charged, replays_left)

    async def capture(self, hold_id: str, amount: int | None = None) -> Hold:
        self.calls.append(
            ("capture", hold_id) if amount is None else ("capture", hold_id, str(amount))
        )
        if self.capture_failures:
            raise UpstreamError("ledger", self.capture_failures.pop(0), "injected failure")
        hold = self.holds[hold_id]
        wanted = hold.amount if amount is None else amount
        if not 0 < wanted <= hold.amount:
            raise UpstreamError("ledger", grpc.StatusCode.INVALID_ARGUMENT, "bad amount")
        if self.expire_before_capture and hold.state == HoldState.HELD:
            self.expire_before_capture = False  # this hold only
            self.expire(hold_id)
        if hold.state in (HoldState.RELEASED, HoldState.EXPIRED):
            raise _closed(hold)
        if hold.state == HoldState.CAPTURED:
            if hold.captured != wanted:
                raise UpstreamError(
                    "ledger", grpc.StatusCode.FAILED_PRECONDITION, "captured", "HOLD_CAPTURED"
                )
            return hold.frozen()
        # The part not spent goes back, in the same step.
        self._refund(hold, HoldState.CAPTURED, hold.amount - wanted)
        hold.captured = wanted
        return hold.frozen()

    async def release(self, hold_id: str) -> Hold:
        self.calls.append(("release", hold_id))
        hold = self.holds[hold_id]
        if hold.state == HoldState.CAPTURED:
            raise UpstreamError(
                "ledger", grpc.StatusCode.FAILED_PRECONDITION, "captured", "HOLD_CAPTURED"
            )
        if hold.state == HoldState.HELD:
            self._refund(hold, HoldState.RELEASED)
        return hold.frozen()

    async def checkpoint(self, hold_id: str, delivered: int, extend_seconds: int) -> Hold:
        """Checkpoints only grow; a closed hold is refused (deadlines are not modelled: a test
        lapses a hold with expire())."""
        self.calls.append(("checkpoint", hold_id, str(delivered), str(extend_seconds)))
        if self.checkpoint_failures:
            raise UpstreamError("ledger", self.checkpoint_failures.pop(0), "injected failure")
        hold = self.holds[hold_id]
        if hold.state != HoldState.HELD:
            raise _closed(hold)
        if not 0 <= delivered <= hold.amount or extend_seconds <= 0:
            raise UpstreamError("ledger", grpc.StatusCode.INVALID_ARGUMENT, "bad checkpoint")
        hold.checkpointed = max(hold.checkpointed, delivered)
        return hold.frozen()

    async def ready(self) -> bool:
        return self.serving

    def _refund(self, hold: FakeHold, state: HoldState, amount: int | None = None) -> None:
        hold.state = state
        if hold.account_id not in self.unlimited:
            self.balances[hold.account_id] += hold.amount if amount is None else amount


def _closed(hold: FakeHold) -> UpstreamError:
    reason = f"HOLD_{hold.state.name}"
    return UpstreamError("ledger", grpc.StatusCode.FAILED_PRECONDITION, reason.lower(), reason)


# What a scripted stream does at each step: give a piece, fail, or wait for a signal.
Step = AudioPiece | UpstreamError | asyncio.Event


def pieces_for(request: SynthesisRequest, count: int = 3) -> list[Step]:
    """`count` pieces whose characters_consumed reach the whole text on the last; with word
    timestamps asked for, each with the words (runs between spaces) that end in its share of
    the text, a second apart: the n-th word of the text from n to n + 0.5 seconds."""
    n = len(request.text)
    ends = [(n * (i + 1)) // count for i in range(count)]
    words: list[list[SpokenWord]] = [[] for _ in range(count)]
    if request.word_timestamps:
        for index, match in enumerate(re.finditer(r"\S+", request.text)):
            piece = next(i for i, end in enumerate(ends) if match.end() <= end)
            words[piece].append(SpokenWord(match.group(), float(index), index + 0.5))
    return [
        AudioPiece(f"{request.audio_format}:{i};".encode(), ends[i], words=tuple(words[i]))
        for i in range(count)
    ]


def pieces_with(step: Step, *, after: int) -> Callable[[SynthesisRequest], list[Step]]:
    """A script: pieces_for's pieces with `step` (a wait or a failure) after the first `after`."""

    def script(request: SynthesisRequest) -> list[Step]:
        pieces = pieces_for(request)
        return [*pieces[:after], step, *pieces[after:]]

    return script


class FakeStream:
    def __init__(self, steps: list[Step]) -> None:
        self._steps = list(steps)
        self.cancelled = False
        self.finished = False

    async def next(self) -> AudioPiece | None:
        while self._steps:
            step = self._steps.pop(0)
            if isinstance(step, asyncio.Event):
                await step.wait()
                continue
            if isinstance(step, UpstreamError):
                raise step
            return step
        self.finished = True
        return None

    def cancel(self) -> None:
        self.cancelled = True


def synth_error(
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL, message: str = "boom"
) -> UpstreamError:
    return UpstreamError("synth", code, message)


# English voices' words can be timed (misaki says which phonemes each became); Spanish's cannot.
VOICES = [
    Voice("af_heart", "en-us", "female", "builtin", "", word_timestamps=True),
    Voice("af_bella", "en-us", "female", "builtin", "", word_timestamps=True),
    Voice("af_sky", "en-us", "female", "builtin", "", word_timestamps=True),
    Voice("af_sarah", "en-us", "female", "builtin", "", word_timestamps=True),
    Voice("am_michael", "en-us", "male", "builtin", "", word_timestamps=True),
    Voice("ef_dora", "es", "female", "builtin", ""),
    Voice("af", "en-us", "female", "blend", "af_bella(1)+af_sarah(1)", word_timestamps=True),
    Voice("alloy", "en-us", "female", "alias", "af_alloy", word_timestamps=True),
]
MODELS = [Model("kokoro", ("tts-1", "tts-1-hd", "gpt-4o-mini-tts"), "Kokoro-82M v1.0", 24000)]


def _not_serving() -> UpstreamError:
    return UpstreamError(
        "synth", grpc.StatusCode.UNAVAILABLE, "the service is starting", "NOT_SERVING"
    )


class FakeSynth:
    def __init__(self) -> None:
        # How each request's stream behaves; replace to script failures and pauses.
        self.script: Callable[[SynthesisRequest], list[Step]] = pieces_for
        self.requests: list[SynthesisRequest] = []
        self.streams: list[FakeStream] = []
        self.request_ids: list[str] = []
        self.serving = True
        # Like a synth process that listens but has not finished loading the model.
        self.warming_up = False
        self.list_calls = 0

    def synthesize(self, request: SynthesisRequest) -> FakeStream:
        self.requests.append(request)
        self.request_ids.append(request_id_var.get())
        steps: list[Step] = [_not_serving()] if self.warming_up else self.script(request)
        stream = FakeStream(steps)
        self.streams.append(stream)
        return stream

    async def list_voices(self) -> list[Voice]:
        self.list_calls += 1
        if self.warming_up:
            raise _not_serving()
        if not self.serving:
            raise UpstreamError("synth", grpc.StatusCode.UNAVAILABLE, "connection refused")
        return list(VOICES)

    async def list_models(self) -> list[Model]:
        self.list_calls += 1
        if self.warming_up:
            raise _not_serving()
        if not self.serving:
            raise UpstreamError("synth", grpc.StatusCode.UNAVAILABLE, "connection refused")
        return list(MODELS)

    async def ready(self) -> bool:
        return self.serving


# --- predictions ----------------------------------------------------------------------------


def output_signature(prediction_id: str, expires: int) -> str:
    """The fake's stand-in for the service's HMAC over the id and expiry."""
    return f"sig.{prediction_id}.{expires}"


@dataclass
class FakePrediction:
    prediction: Prediction
    account_id: str
    hold_id: str
    audio: bytes = b""
    content_type: str = ""
    # Unix time after which the output is gone (the retention).
    expires: int = 0
    key_id: str = ""


# What a scripted output stream does at each step: give a message, fail, or wait for a signal.
OutputStep = OutputPiece | UpstreamError | asyncio.Event


class FakeOutputStream:
    def __init__(self, steps: list[OutputStep]) -> None:
        self._steps = list(steps)
        self.cancelled = False
        self.taken = 0

    async def next(self) -> OutputPiece | None:
        while self._steps:
            step = self._steps.pop(0)
            if isinstance(step, asyncio.Event):
                await step.wait()
                continue
            if isinstance(step, UpstreamError):
                raise step
            self.taken += 1
            return step
        return None

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakePredictions:
    """predictions.proto's rules in memory: create reserves len(text) on the fake ledger, an
    account sees only its own predictions, cancel releases, ReadOutput checks the signature and
    the retention and sends the range asked for in `chunk_bytes` pieces after a header."""

    ledger: FakeLedger
    public_url: str = "http://gateway.test"
    predictions: dict[str, FakePrediction] = field(default_factory=dict)
    creates: list[tuple[Principal, PredictionInput, str]] = field(default_factory=list)
    # The max_active of each create, in order.
    max_actives: list[int] = field(default_factory=list)
    # Creates with an Idempotency-Key, in order, and what each (account, key) names: the
    # fingerprint it was created with and its prediction.
    keyed_creates: list[KeyedCreate] = field(default_factory=list)
    idempotency_keys: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    # The wait a CONCURRENCY_LIMITED refusal names.
    concurrency_retry_after_seconds: str = "2"
    reads: list[OutputRequest] = field(default_factory=list)
    streams: list[FakeOutputStream] = field(default_factory=list)
    # Failures the next calls (any RPC) raise before doing anything.
    failures: list[UpstreamError] = field(default_factory=list)
    # Hosts a webhook URL may not name (the service's refused addresses).
    refused_webhook_hosts: tuple[str, ...] = ("169.254.169.254",)
    chunk_bytes: int = 4
    # The first ReadOutput message carries only the size and type, not the first bytes.
    header_alone: bool = False
    # An offset past the end is refused with OUT_OF_RANGE rather than answered with no bytes.
    refuse_offsets_past_the_end: bool = False
    # Where the stream breaks: an error after this many data pieces (None: never).
    break_after: int | None = None
    # Set: the stream waits for it after its first message.
    pause_after_first: asyncio.Event | None = None
    serving: bool = True
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def _fail_if_told(self) -> None:
        if self.failures:
            raise self.failures.pop(0)

    @staticmethod
    def _refused(code: grpc.StatusCode, reason: str, **metadata: str) -> UpstreamError:
        return UpstreamError(
            "predictions", code, reason.lower().replace("_", " "), reason, metadata
        )

    async def create_prediction(
        self,
        principal: Principal,
        prediction_input: PredictionInput,
        webhook_url: str,
        max_active: int,
        keyed: KeyedCreate | None = None,
    ) -> Prediction:
        self._fail_if_told()
        self.max_actives.append(max_active)
        if not 1 <= max_active <= 10_000:
            raise self._refused(grpc.StatusCode.INVALID_ARGUMENT, "INVALID", field="max_active")
        if keyed is not None:
            self.keyed_creates.append(keyed)
            named = self.idempotency_keys.get((principal.account_id, keyed.key))
            if named is not None:
                fingerprint, prediction_id = named
                if fingerprint != keyed.fingerprint:
                    raise self._refused(
                        grpc.StatusCode.ALREADY_EXISTS,
                        "REQUEST_KEY_REUSED",
                        fingerprint=fingerprint,
                    )
                return self.predictions[prediction_id].prediction
        if self.active_of(principal.key_id) >= max_active:
            raise self._refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "CONCURRENCY_LIMITED",
                limit=str(max_active),
                retry_after_seconds=self.concurrency_retry_after_seconds,
            )
        self.creates.append((principal, prediction_input, webhook_url))
        if any(host in webhook_url for host in self.refused_webhook_hosts):
            raise self._refused(
                grpc.StatusCode.INVALID_ARGUMENT, "WEBHOOK_URL_REFUSED", field="webhook_url"
            )
        prediction_id = f"pred_{next(self._ids):04d}"
        try:
            hold = await self.ledger.reserve(
                principal.account_id,
                len(prediction_input.text),
                f"prediction:{prediction_id}",
                3600,
            )
        except UpstreamError as error:
            if error.reason == "INSUFFICIENT_CREDITS":
                raise self._refused(
                    grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS"
                ) from error
            raise
        prediction = Prediction(
            id=prediction_id,
            status=PredictionStatus.PROCESSING,
            input=prediction_input,
            created_at=datetime(2026, 4, 6, 12, 0, tzinfo=UTC),
        )
        self.predictions[prediction_id] = FakePrediction(
            prediction, principal.account_id, hold.id, key_id=principal.key_id
        )
        if keyed is not None:
            self.idempotency_keys[principal.account_id, keyed.key] = (
                keyed.fingerprint,
                prediction_id,
            )
        return prediction

    def active_of(self, key_id: str) -> int:
        """The key's predictions queued or running."""
        return sum(
            1
            for stored in self.predictions.values()
            if stored.key_id == key_id and stored.prediction.status is PredictionStatus.PROCESSING
        )

    def _own(self, account_id: str, prediction_id: str) -> FakePrediction:
        stored = self.predictions.get(prediction_id)
        if stored is None or stored.account_id != account_id:
            raise self._refused(grpc.StatusCode.NOT_FOUND, "PREDICTION_NOT_FOUND")
        return stored

    async def get_prediction(self, account_id: str, prediction_id: str) -> Prediction:
        self._fail_if_told()
        return self._own(account_id, prediction_id).prediction

    async def cancel_prediction(self, account_id: str, prediction_id: str) -> Prediction:
        self._fail_if_told()
        stored = self._own(account_id, prediction_id)
        if stored.prediction.status is PredictionStatus.PROCESSING:
            await self.ledger.release(stored.hold_id)
            self._end(stored, PredictionStatus.ERROR, message="cancelled", details="by request")
        return stored.prediction

    async def succeed(
        self,
        prediction_id: str,
        audio: bytes = b"0123456789abcdefghij",
        content_type: str = "audio/mpeg",
        *,
        retention: int = 86_400,
    ) -> Prediction:
        """What a worker does: store the audio, capture the hold, sign the output URL."""
        stored = self.predictions[prediction_id]
        await self.ledger.capture(stored.hold_id)
        stored.audio, stored.content_type = audio, content_type
        stored.expires = int(time.time()) + retention
        signature = output_signature(prediction_id, stored.expires)
        url = (
            f"{self.public_url}/v1/prediction/{prediction_id}/output"
            f"?expires={stored.expires}&signature={signature}"
        )
        self._end(stored, PredictionStatus.SUCCESS, output_url=url, predict_time=1.25)
        return stored.prediction

    async def fail(self, prediction_id: str, message: str, details: str) -> Prediction:
        stored = self.predictions[prediction_id]
        await self.ledger.release(stored.hold_id)
        self._end(stored, PredictionStatus.ERROR, message=message, details=details)
        return stored.prediction

    @staticmethod
    def _end(stored: FakePrediction, status: PredictionStatus, **fields: Any) -> None:
        finished = datetime(2026, 4, 6, 12, 0, 3, tzinfo=UTC)
        stored.prediction = dataclasses.replace(
            stored.prediction, status=status, finished_at=finished, **fields
        )

    def read_output(self, request: OutputRequest) -> FakeOutputStream:
        self.reads.append(request)
        stream = FakeOutputStream(self._output_pieces(request))
        self.streams.append(stream)
        return stream

    def _output_pieces(self, request: OutputRequest) -> list[OutputStep]:
        if self.failures:
            return [self.failures.pop(0)]
        stored = self.predictions.get(request.prediction_id)
        if request.signature != output_signature(request.prediction_id, request.expires):
            return [self._refused(grpc.StatusCode.PERMISSION_DENIED, "SIGNATURE_INVALID")]
        if stored is None or stored.prediction.status is not PredictionStatus.SUCCESS:
            return [self._refused(grpc.StatusCode.NOT_FOUND, "PREDICTION_NOT_FOUND")]
        if request.expires < time.time() or stored.expires < time.time():
            return [self._refused(grpc.StatusCode.NOT_FOUND, "OUTPUT_EXPIRED")]
        size = len(stored.audio)
        if request.offset >= size and self.refuse_offsets_past_the_end:
            return [UpstreamError("predictions", grpc.StatusCode.OUT_OF_RANGE, "past the end")]
        end = size if request.length == 0 else min(size, request.offset + request.length)
        wanted = stored.audio[request.offset : end]
        data = [wanted[i : i + self.chunk_bytes] for i in range(0, len(wanted), self.chunk_bytes)]
        if self.break_after is not None:
            data = data[: self.break_after]
        # The header rides on the first piece of data unless told otherwise (or there is none).
        first = b"" if self.header_alone or not data else data.pop(0)
        steps: list[OutputStep] = [OutputPiece(first, size, stored.content_type)]
        if self.pause_after_first is not None:
            steps.append(self.pause_after_first)
        steps += [OutputPiece(piece) for piece in data]
        if self.break_after is not None:
            steps.append(UpstreamError("predictions", grpc.StatusCode.INTERNAL, "storage failed"))
        return steps

    async def ready(self) -> bool:
        return self.serving


@dataclass
class FakeMesh:
    auth: FakeAuth
    ledger: FakeLedger
    synth: FakeSynth
    predictions: FakePredictions
    app: FastAPI

    @property
    def seller(self) -> SpeechSeller:
        seller: SpeechSeller = self.app.state.seller
        return seller

    @property
    def slots(self) -> StreamSlots:
        slots: StreamSlots = self.app.state.slots
        return slots


class FakeClock:
    """A monotonic clock that moves only when told: windows pass without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fake_mesh(clock: FakeClock | None = None, /, **settings: object) -> FakeMesh:
    """The gateway app over fresh fakes, built with `settings` (GatewaySettings fields); `clock`
    times the invalid-key throttle's windows (default: the real monotonic clock)."""
    auth, ledger, synth = FakeAuth(), FakeLedger(), FakeSynth()
    predictions = FakePredictions(ledger)
    if clock is not None:
        auth.clock = clock
    upstreams = Upstreams(auth, ledger, synth, predictions)
    gateway_settings = GatewaySettings(**settings)  # type: ignore[arg-type]
    app = (
        create_app(gateway_settings, upstreams)
        if clock is None
        else create_app(gateway_settings, upstreams, clock=clock)
    )
    return FakeMesh(auth, ledger, synth, predictions, app)


def auth_header(key: str = GOOD_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def api_key_header(key: str = GOOD_KEY) -> dict[str, str]:
    """The hosted listing's header."""
    return {"X-API-Key": key}
