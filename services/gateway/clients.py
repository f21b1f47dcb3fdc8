"""What the gateway needs from auth, ledger, synth and predictions: interfaces, and their gRPC
implementations.

The serving layer (serving.py, billing.py, delivery.py) depends only on the Protocols and the
plain values below, so it can be exercised with in-memory fakes; `GrpcUpstreams` is what runs.
Every failed call surfaces as `UpstreamError`, carrying the gRPC status and the ErrorInfo reason
that errors.py maps to HTTP.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeVar

import grpc
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kokoropay.auth.v1 import auth_pb2, auth_pb2_grpc
from kokoropay.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from kokoropay.predictions.v1 import predictions_pb2, predictions_pb2_grpc
from kokoropay.synth.v1 import synth_pb2, synth_pb2_grpc

from services.common.channels import open_channel
from services.common.errors import error_info
from services.common.pki import TlsIdentity

T = TypeVar("T")
VoiceKind = Literal["builtin", "alias", "blend"]


class UpstreamError(Exception):
    """A call to auth, ledger, synth or predictions failed; `code` and `reason` (with its
    metadata) say how."""

    def __init__(
        self,
        service: str,
        code: grpc.StatusCode,
        message: str,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{service}: {code.name}: {message}")
        self.service = service
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})


@dataclass(frozen=True)
class Principal:
    """Who a verified key spends for."""

    account_id: str
    key_id: str


class KeyUse(enum.Enum):
    """What a verified key is about to be used for: which of its limits apply (auth.proto)."""

    SPEECH = "speech"
    PREDICTION_CREATE = "prediction_create"


class LimitRefusal(enum.Enum):
    """Which limit refused a request."""

    REQUESTS = "requests"
    CONCURRENCY = "concurrency"


@dataclass(frozen=True)
class Admission:
    """How a request fared against its key's limits for one use; durations in seconds."""

    admitted: bool
    # Set when not admitted.
    refusal: LimitRefusal | None
    # Requests per minute for this use, what is left of them, and when the window ends.
    request_limit: int
    requests_remaining: int
    requests_reset: float
    # When not admitted: how long to wait before trying again.
    retry_after: float
    # Streams (speech), or predictions queued or running, the key may have at once.
    concurrency_limit: int
    # Speech, admitted: the stream slot taken, held for `lease` seconds unless renewed.
    slot_id: str = ""
    lease: float = 0.0


@dataclass(frozen=True)
class VerifiedKey:
    """A key auth verified, and, when a use was named, its admission under that use's limits
    (None when auth answered none)."""

    principal: Principal
    admission: Admission | None = None


@dataclass(frozen=True)
class SlotRenewal:
    """What RenewSlots did: slots extended, and the lease (seconds) they now run for."""

    renewed: int
    lease: float


@dataclass(frozen=True)
class Balance:
    balance: int
    held: int
    unlimited: bool


class HoldState(enum.Enum):
    HELD = "held"
    CAPTURED = "captured"
    RELEASED = "released"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Hold:
    id: str
    amount: int
    state: HoldState
    # Credits a Capture spent (at most `amount`); 0 unless captured.
    captured: int = 0
    # Reserve found the hold its key had placed before, rather than placing it now.
    replayed: bool = False
    # Credits delivered as of the last Checkpoint: what the ledger captures if the hold lapses.
    checkpointed: int = 0


@dataclass(frozen=True)
class UsageLabels:
    """What a hold pays for, kept by the ledger for the customer's usage reports."""

    key_id: str
    voice: str
    response_format: str
    model: str


@dataclass(frozen=True)
class KeyedCreate:
    """A prediction create named by its Idempotency-Key, as the predictions service keeps it
    (one prediction per key and account for 24 hours)."""

    key: str
    # The request as understood (fingerprint.py); the same key on another one is refused.
    fingerprint: str


@dataclass(frozen=True)
class KeyedRequest:
    """A customer's request named by its Idempotency-Key, as the ledger keeps it."""

    key: str
    # The request as understood (fingerprint.py); the same key on another one is refused.
    fingerprint: str
    # len(input): the most the key is ever charged, over all its attempts.
    price: int
    # A charge for audio an attempt delivered after its hold lapsed: never a replay.
    late_charge: bool = False


@dataclass(frozen=True)
class KeyedReservation:
    """What a keyed Reserve did: an attempt's hold, or none (a free replay, or nothing left)."""

    hold: Hold | None
    replay: bool
    charged_before: int
    replays_left: int


@dataclass(frozen=True)
class Voice:
    id: str
    language: str
    gender: str
    kind: VoiceKind
    target: str
    # Whether synth can say when its words are spoken (its language's phonemizer can).
    word_timestamps: bool = False


@dataclass(frozen=True)
class Model:
    id: str
    aliases: tuple[str, ...]
    description: str
    sample_rate: int


@dataclass(frozen=True)
class SynthesisRequest:
    text: str
    voice: str
    model: str
    speed: float
    # One of mp3, opus, aac, flac, wav, pcm.
    audio_format: str
    # Ask synth when each word is spoken (AudioPiece.words).
    word_timestamps: bool = False


@dataclass(frozen=True)
class SpokenWord:
    """When a word of the input is spoken, in seconds from the start of the audio."""

    # As the input wrote it.
    text: str
    start_seconds: float
    end_seconds: float


@dataclass(frozen=True)
class AudioPiece:
    """One chunk of the encoded stream."""

    audio: bytes
    # Input code points spoken up to and including this piece.
    characters_consumed: int
    # Seconds of audio the piece carries, as synth measured them.
    duration_seconds: float = 0.0
    # With word timestamps asked for: the words spoken in this piece, in input order.
    words: tuple[SpokenWord, ...] = ()


class AudioStream(Protocol):
    """A running synthesis: pieces in order, then None; cancel() stops the work upstream."""

    async def next(self) -> AudioPiece | None: ...

    def cancel(self) -> None: ...


class PredictionStatus(enum.Enum):
    PROCESSING = "processing"
    SUCCESS = "success"
    ERROR = "error"


@dataclass(frozen=True)
class PredictionInput:
    """What a prediction speaks, as the predictions service keeps it."""

    text: str
    voice: str
    speed: float
    # One of mp3, opus, aac, flac, wav, pcm.
    output_format: str


@dataclass(frozen=True)
class Prediction:
    id: str
    status: PredictionStatus
    input: PredictionInput
    # For SUCCESS: the signed, expiring URL of the audio; empty otherwise.
    output_url: str = ""
    # Seconds the synthesis took, for SUCCESS.
    predict_time: float = 0.0
    # For ERROR: what happened, and more detail.
    message: str = ""
    details: str = ""
    created_at: datetime | None = None
    # Unset while PROCESSING.
    finished_at: datetime | None = None


@dataclass(frozen=True)
class OutputRequest:
    """A signed output URL's parts and the bytes wanted: from `offset`, `length` of them (0: to
    the end)."""

    prediction_id: str
    expires: int
    signature: str
    offset: int = 0
    length: int = 0


@dataclass(frozen=True)
class OutputPiece:
    """One message of ReadOutput: the first carries the whole output's size and media type."""

    data: bytes
    total_size: int = 0
    content_type: str = ""


class OutputStream(Protocol):
    """A running ReadOutput: pieces in order, then None; cancel() stops it upstream."""

    async def next(self) -> OutputPiece | None: ...

    def cancel(self) -> None: ...


class AuthClient(Protocol):
    async def verify_key(
        self, key: str, *, use: KeyUse | None = None, holder: str = ""
    ) -> VerifiedKey:
        """With a `use`, also admits the request under the key's limits; a speech stream's slot
        is leased to `holder`."""
        ...

    async def release_slots(self, holder: str, slot_ids: Sequence[str]) -> int:
        """Give back slots `holder` took (at most 1,000 ids); how many were still held."""
        ...

    async def renew_slots(self, holder: str) -> SlotRenewal:
        """Extend every slot `holder` still holds to a full lease from now."""
        ...

    async def ready(self) -> bool: ...


class LedgerClient(Protocol):
    async def get_balance(self, account_id: str) -> Balance: ...

    async def reserve(
        self,
        account_id: str,
        amount: int,
        idempotency_key: str,
        ttl_seconds: int,
        labels: UsageLabels | None = None,
    ) -> Hold: ...

    async def reserve_keyed(
        self,
        account_id: str,
        amount: int,
        idempotency_key: str,
        ttl_seconds: int,
        keyed: KeyedRequest,
        labels: UsageLabels | None = None,
    ) -> KeyedReservation:
        """Hold for one attempt at a keyed request, at most what its key may still be charged."""
        ...

    async def capture(self, hold_id: str, amount: int | None = None) -> Hold:
        """Spend `amount` credits of the hold (None: all) and return the rest, atomically."""
        ...

    async def release(self, hold_id: str) -> Hold: ...

    async def checkpoint(self, hold_id: str, delivered: int, extend_seconds: int) -> Hold:
        """Record `delivered` (it only grows) on the open hold and keep it alive at least
        `extend_seconds` from now; FAILED_PRECONDITION with a HOLD_* reason once it is closed."""
        ...

    async def ready(self) -> bool: ...


class SynthClient(Protocol):
    def synthesize(self, request: SynthesisRequest) -> AudioStream: ...

    async def list_voices(self) -> list[Voice]: ...

    async def list_models(self) -> list[Model]: ...

    async def ready(self) -> bool: ...


class PredictionsClient(Protocol):
    async def create_prediction(
        self,
        principal: Principal,
        prediction_input: PredictionInput,
        webhook_url: str,
        max_active: int,
        keyed: KeyedCreate | None = None,
    ) -> Prediction:
        """Reserve len(text) and queue the job; INSUFFICIENT_CREDITS when the balance is short,
        CONCURRENCY_LIMITED (metadata `limit`, `retry_after_seconds`) when the key already has
        `max_active` (1 to 10,000) predictions queued or running. `keyed`: the prediction its
        Idempotency-Key already names, if any, as it now stands (nothing reserved again), or
        REQUEST_KEY_REUSED (metadata `fingerprint`) when that key named another request."""
        ...

    async def get_prediction(self, account_id: str, prediction_id: str) -> Prediction:
        """NOT_FOUND for an unknown id and for another account's."""
        ...

    async def cancel_prediction(self, account_id: str, prediction_id: str) -> Prediction:
        """Stop, refund and end a running one as ERROR; a finished one comes back unchanged."""
        ...

    def read_output(self, request: OutputRequest) -> OutputStream:
        """The stored audio behind a signed output URL, checked by the service."""
        ...

    async def ready(self) -> bool: ...


@dataclass
class Upstreams:
    auth: AuthClient
    ledger: LedgerClient
    synth: SynthClient
    predictions: PredictionsClient

    async def close(self) -> None:
        """Release connections; nothing to do for in-memory clients."""


# --- gRPC implementations -------------------------------------------------------------------

_HOLD_STATES = {
    ledger_pb2.HOLD_STATE_HELD: HoldState.HELD,
    ledger_pb2.HOLD_STATE_CAPTURED: HoldState.CAPTURED,
    ledger_pb2.HOLD_STATE_RELEASED: HoldState.RELEASED,
    ledger_pb2.HOLD_STATE_EXPIRED: HoldState.EXPIRED,
}
_AUDIO_FORMATS = {
    "mp3": synth_pb2.AUDIO_FORMAT_MP3,
    "opus": synth_pb2.AUDIO_FORMAT_OPUS,
    "aac": synth_pb2.AUDIO_FORMAT_AAC,
    "flac": synth_pb2.AUDIO_FORMAT_FLAC,
    "wav": synth_pb2.AUDIO_FORMAT_WAV,
    "pcm": synth_pb2.AUDIO_FORMAT_PCM,
}
_KEY_USES = {
    KeyUse.SPEECH: auth_pb2.KEY_USE_SPEECH,
    KeyUse.PREDICTION_CREATE: auth_pb2.KEY_USE_PREDICTION_CREATE,
}
_LIMIT_REFUSALS = {
    auth_pb2.LIMIT_REFUSAL_REQUESTS: LimitRefusal.REQUESTS,
    auth_pb2.LIMIT_REFUSAL_CONCURRENCY: LimitRefusal.CONCURRENCY,
}
_VOICE_KINDS: dict[int, VoiceKind] = {
    synth_pb2.VOICE_KIND_BUILTIN: "builtin",
    synth_pb2.VOICE_KIND_ALIAS: "alias",
    synth_pb2.VOICE_KIND_BLEND: "blend",
}


def _upstream_error(service: str, error: grpc.RpcError) -> UpstreamError:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    info = error_info(error)
    if info is None:
        return UpstreamError(service, code, details or "")
    return UpstreamError(service, code, details or "", info.reason, info.metadata)


async def _call(service: str, call: Awaitable[T]) -> T:
    try:
        return await call
    except grpc.RpcError as error:
        raise _upstream_error(service, error) from error
    except grpc.aio.UsageError as error:
        # The channel was closed under the call (the gateway is shutting down).
        raise UpstreamError(service, grpc.StatusCode.UNAVAILABLE, str(error)) from error


async def _serving(channel: grpc.aio.Channel, timeout: float) -> bool:
    try:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout
        )
    except (grpc.RpcError, asyncio.TimeoutError):
        return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def _labels(labels: UsageLabels | None) -> ledger_pb2.UsageLabels | None:
    if labels is None:
        return None
    return ledger_pb2.UsageLabels(
        key_id=labels.key_id,
        voice=labels.voice,
        response_format=labels.response_format,
        model=labels.model,
    )


def _hold(message: ledger_pb2.Hold, *, replayed: bool = False) -> Hold:
    return Hold(
        id=message.id,
        amount=message.amount,
        state=_HOLD_STATES.get(message.state, HoldState.HELD),
        captured=message.captured_amount,
        replayed=replayed,
        checkpointed=message.checkpointed,
    )


def _seconds(duration: duration_pb2.Duration) -> float:
    return float(duration.seconds) + duration.nanos / 1e9


def _admission(message: auth_pb2.Admission) -> Admission:
    return Admission(
        admitted=message.admitted,
        refusal=None if message.admitted else _LIMIT_REFUSALS.get(message.refusal),
        request_limit=message.request_limit,
        requests_remaining=message.requests_remaining,
        requests_reset=_seconds(message.requests_reset),
        retry_after=_seconds(message.retry_after),
        concurrency_limit=message.concurrency_limit,
        slot_id=message.slot_id,
        lease=_seconds(message.lease),
    )


class GrpcAuthClient:
    def __init__(self, channel: grpc.aio.Channel, timeout: float, ready_timeout: float) -> None:
        self._channel = channel
        self._stub = auth_pb2_grpc.AuthServiceStub(channel)
        self._timeout = timeout
        self._ready_timeout = ready_timeout

    async def verify_key(
        self, key: str, *, use: KeyUse | None = None, holder: str = ""
    ) -> VerifiedKey:
        request = auth_pb2.VerifyKeyRequest(
            key=key,
            use=auth_pb2.KEY_USE_UNSPECIFIED if use is None else _KEY_USES[use],
            holder=holder,
        )
        response = await _call("auth", self._stub.VerifyKey(request, timeout=self._timeout))
        principal = Principal(account_id=response.account_id, key_id=response.key_id)
        if not response.HasField("admission"):
            return VerifiedKey(principal)
        return VerifiedKey(principal, _admission(response.admission))

    async def release_slots(self, holder: str, slot_ids: Sequence[str]) -> int:
        request = auth_pb2.ReleaseSlotsRequest(holder=holder, slot_ids=list(slot_ids))
        response = await _call("auth", self._stub.ReleaseSlots(request, timeout=self._timeout))
        return int(response.released)

    async def renew_slots(self, holder: str) -> SlotRenewal:
        request = auth_pb2.RenewSlotsRequest(holder=holder)
        response = await _call("auth", self._stub.RenewSlots(request, timeout=self._timeout))
        return SlotRenewal(renewed=response.renewed, lease=_seconds(response.lease))

    async def ready(self) -> bool:
        return await _serving(self._channel, self._ready_timeout)


class GrpcLedgerClient:
    def __init__(self, channel: grpc.aio.Channel, timeout: float, ready_timeout: float) -> None:
        self._channel = channel
        self._stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        self._timeout = timeout
        self._ready_timeout = ready_timeout

    async def get_balance(self, account_id: str) -> Balance:
        response = await _call(
            "ledger",
            self._stub.GetBalance(
                ledger_pb2.GetBalanceRequest(account_id=account_id), timeout=self._timeout
            ),
        )
        return Balance(response.balance, response.held, response.unlimited)

    async def reserve(
        self,
        account_id: str,
        amount: int,
        idempotency_key: str,
        ttl_seconds: int,
        labels: UsageLabels | None = None,
    ) -> Hold:
        request = ledger_pb2.ReserveRequest(
            account_id=account_id,
            amount=amount,
            idempotency_key=idempotency_key,
            ttl_seconds=ttl_seconds,
            labels=_labels(labels),
        )
        response = await _call("ledger", self._stub.Reserve(request, timeout=self._timeout))
        return _hold(response.hold, replayed=response.replayed)

    async def reserve_keyed(
        self,
        account_id: str,
        amount: int,
        idempotency_key: str,
        ttl_seconds: int,
        keyed: KeyedRequest,
        labels: UsageLabels | None = None,
    ) -> KeyedReservation:
        request = ledger_pb2.ReserveRequest(
            account_id=account_id,
            amount=amount,
            idempotency_key=idempotency_key,
            ttl_seconds=ttl_seconds,
            keyed=ledger_pb2.KeyedRequest(
                key=keyed.key,
                fingerprint=keyed.fingerprint,
                price=keyed.price,
                late_charge=keyed.late_charge,
            ),
            labels=_labels(labels),
        )
        response = await _call("ledger", self._stub.Reserve(request, timeout=self._timeout))
        hold = _hold(response.hold, replayed=response.replayed)
        return KeyedReservation(
            hold=hold if response.HasField("hold") else None,
            replay=response.keyed.replay,
            charged_before=response.keyed.charged_before,
            replays_left=response.keyed.replays_left,
        )

    async def capture(self, hold_id: str, amount: int | None = None) -> Hold:
        request = ledger_pb2.CaptureRequest(hold_id=hold_id, amount=amount or 0)
        response = await _call("ledger", self._stub.Capture(request, timeout=self._timeout))
        return _hold(response.hold)

    async def release(self, hold_id: str) -> Hold:
        request = ledger_pb2.ReleaseRequest(hold_id=hold_id)
        response = await _call("ledger", self._stub.Release(request, timeout=self._timeout))
        return _hold(response.hold)

    async def checkpoint(self, hold_id: str, delivered: int, extend_seconds: int) -> Hold:
        request = ledger_pb2.CheckpointRequest(
            hold_id=hold_id, delivered=delivered, extend_seconds=extend_seconds
        )
        response = await _call("ledger", self._stub.Checkpoint(request, timeout=self._timeout))
        return _hold(response.hold)

    async def ready(self) -> bool:
        return await _serving(self._channel, self._ready_timeout)


class _GrpcStream:
    """A server stream read one message at a time, its failures as `service`'s UpstreamError."""

    service = ""

    def __init__(self, call: grpc.aio.UnaryStreamCall) -> None:
        self._call = call

    async def _next_message(self) -> Any | None:
        """The next message, None at the stream's end."""
        try:
            message = await self._call.read()
        except grpc.RpcError as error:
            raise _upstream_error(self.service, error) from error
        return None if message is grpc.aio.EOF else message

    def cancel(self) -> None:
        self._call.cancel()


class GrpcAudioStream(_GrpcStream):
    """Synthesize as an AudioStream."""

    service = "synth"

    async def next(self) -> AudioPiece | None:
        message = await self._next_message()
        if message is None:
            return None
        assert isinstance(message, synth_pb2.AudioChunk)
        return AudioPiece(
            audio=message.audio,
            characters_consumed=message.characters_consumed,
            duration_seconds=message.duration_seconds,
            words=tuple(
                SpokenWord(word.text, word.start_seconds, word.end_seconds)
                for word in message.words
            ),
        )


class GrpcSynthClient:
    def __init__(self, channel: grpc.aio.Channel, timeout: float, ready_timeout: float) -> None:
        self._channel = channel
        self._stub = synth_pb2_grpc.SynthServiceStub(channel)
        self._timeout = timeout
        self._ready_timeout = ready_timeout

    def synthesize(self, request: SynthesisRequest) -> AudioStream:
        # No deadline: a long input streams for minutes; the caller bounds the wait for the
        # first piece and cancels on disconnect.
        call = self._stub.Synthesize(
            synth_pb2.SynthesizeRequest(
                text=request.text,
                voice=request.voice,
                speed=request.speed,
                format=_AUDIO_FORMATS[request.audio_format],
                model=request.model,
                word_timestamps=request.word_timestamps,
            )
        )
        return GrpcAudioStream(call)

    async def list_voices(self) -> list[Voice]:
        response = await _call(
            "synth",
            self._stub.ListVoices(synth_pb2.ListVoicesRequest(), timeout=self._timeout),
        )
        return [
            Voice(
                v.id,
                v.language,
                v.gender,
                _VOICE_KINDS.get(v.kind, "builtin"),
                v.target,
                v.word_timestamps,
            )
            for v in response.voices
        ]

    async def list_models(self) -> list[Model]:
        response = await _call(
            "synth",
            self._stub.ListModels(synth_pb2.ListModelsRequest(), timeout=self._timeout),
        )
        return [
            Model(m.id, tuple(m.aliases), m.description, m.sample_rate) for m in response.models
        ]

    async def ready(self) -> bool:
        return await _serving(self._channel, self._ready_timeout)


_PREDICTION_STATUSES = {
    predictions_pb2.PREDICTION_STATUS_PROCESSING: PredictionStatus.PROCESSING,
    predictions_pb2.PREDICTION_STATUS_SUCCESS: PredictionStatus.SUCCESS,
    predictions_pb2.PREDICTION_STATUS_ERROR: PredictionStatus.ERROR,
}


def _prediction(message: predictions_pb2.Prediction) -> Prediction:
    def when(field: str) -> datetime | None:
        if not message.HasField(field):
            return None
        stamp: datetime = getattr(message, field).ToDatetime(tzinfo=UTC)
        return stamp

    spoken = message.input
    return Prediction(
        id=message.id,
        status=_PREDICTION_STATUSES.get(message.status, PredictionStatus.PROCESSING),
        # The service's defaults for fields left empty (predictions.proto).
        input=PredictionInput(
            text=spoken.text,
            voice=spoken.voice or "af",
            # float32 on the wire: 1.1 comes back as 1.100000023841858 without the rounding.
            speed=round(spoken.speed, 6) or 1.0,
            output_format=spoken.output_format or "mp3",
        ),
        output_url=message.output_url,
        predict_time=message.predict_time,
        message=message.message,
        details=message.details,
        created_at=when("create_time"),
        finished_at=when("finish_time"),
    )


class GrpcOutputStream(_GrpcStream):
    """ReadOutput as an OutputStream."""

    service = "predictions"

    async def next(self) -> OutputPiece | None:
        message = await self._next_message()
        if message is None:
            return None
        assert isinstance(message, predictions_pb2.OutputChunk)
        return OutputPiece(message.data, message.total_size, message.content_type)


class GrpcPredictionsClient:
    def __init__(self, channel: grpc.aio.Channel, timeout: float, ready_timeout: float) -> None:
        self._channel = channel
        self._stub = predictions_pb2_grpc.PredictionServiceStub(channel)
        self._timeout = timeout
        self._ready_timeout = ready_timeout

    async def create_prediction(
        self,
        principal: Principal,
        prediction_input: PredictionInput,
        webhook_url: str,
        max_active: int,
        keyed: KeyedCreate | None = None,
    ) -> Prediction:
        request = predictions_pb2.CreatePredictionRequest(
            account_id=principal.account_id,
            key_id=principal.key_id,
            input=predictions_pb2.PredictionInput(
                text=prediction_input.text,
                voice=prediction_input.voice,
                speed=prediction_input.speed,
                output_format=prediction_input.output_format,
            ),
            webhook_url=webhook_url,
            max_active=max_active,
            idempotency_key=keyed.key if keyed else "",
            request_fingerprint=keyed.fingerprint if keyed else "",
        )
        response = await _call(
            "predictions", self._stub.CreatePrediction(request, timeout=self._timeout)
        )
        return _prediction(response)

    async def get_prediction(self, account_id: str, prediction_id: str) -> Prediction:
        request = predictions_pb2.GetPredictionRequest(
            account_id=account_id, prediction_id=prediction_id
        )
        response = await _call(
            "predictions", self._stub.GetPrediction(request, timeout=self._timeout)
        )
        return _prediction(response)

    async def cancel_prediction(self, account_id: str, prediction_id: str) -> Prediction:
        request = predictions_pb2.CancelPredictionRequest(
            account_id=account_id, prediction_id=prediction_id
        )
        response = await _call(
            "predictions", self._stub.CancelPrediction(request, timeout=self._timeout)
        )
        return _prediction(response)

    def read_output(self, request: OutputRequest) -> OutputStream:
        # No deadline: a large output streams to a slow client for as long as it reads; the
        # caller bounds the wait for the first message and cancels when the client leaves.
        call = self._stub.ReadOutput(
            predictions_pb2.ReadOutputRequest(
                prediction_id=request.prediction_id,
                expires=request.expires,
                signature=request.signature,
                offset=request.offset,
                length=request.length,
            )
        )
        return GrpcOutputStream(call)

    async def ready(self) -> bool:
        return await _serving(self._channel, self._ready_timeout)


class GrpcUpstreams(Upstreams):
    """The four clients over their own mutual-TLS channels, each call made with the gateway's
    certificate (its role, GATEWAY, is what the services check); close() when it stops."""

    def __init__(
        self,
        auth_address: str,
        ledger_address: str,
        synth_address: str,
        predictions_address: str,
        *,
        timeout: float,
        ready_timeout: float,
        tls: TlsIdentity,
    ) -> None:
        addresses = (auth_address, ledger_address, synth_address, predictions_address)
        self._channels = [open_channel(address, tls) for address in addresses]
        auth_channel, ledger_channel, synth_channel, predictions_channel = self._channels
        super().__init__(
            auth=GrpcAuthClient(auth_channel, timeout, ready_timeout),
            ledger=GrpcLedgerClient(ledger_channel, timeout, ready_timeout),
            synth=GrpcSynthClient(synth_channel, timeout, ready_timeout),
            predictions=GrpcPredictionsClient(predictions_channel, timeout, ready_timeout),
        )

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self._channels))
