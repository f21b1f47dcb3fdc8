"""One run of a prediction job, on a worker: synthesize, store, finish, settle.

A run takes the prediction by id and does what its state calls for:

1. Finished already (cancelled, or finished by an earlier run): settle it if nothing has (the
   earlier run may have died between finishing and settling) and stop. Settling is idempotent:
   Capture of a captured hold and Release of a released one answer the hold as it is.
2. Out of runs (PREDICTIONS_MAX_ATTEMPTS): fail it, refunded.
3. Otherwise keep the hold alive (Checkpoint, delivered 0, extend PREDICTIONS_HOLD_EXTEND_SECONDS)
   and stream Synthesize from synth, checkpointing again every
   PREDICTIONS_CHECKPOINT_INTERVAL_SECONDS. A hold that already lapsed (the prediction waited in
   the queue past PREDICTIONS_HOLD_TTL_SECONDS) fails it: the ledger refunded it at expiry.
4. Store the audio, then finish it as a success (and queue its webhook) in one transaction,
   then Capture the whole hold and record the settling.

Why checkpoint 0: the customer receives nothing until the audio is stored and the prediction
reads SUCCESS. A worker that dies mid-synthesis leaves the hold as it was checkpointed, and a
lapsed hold captures its checkpoint: 0, so a dead worker never charges for audio nobody can
download. Its job is run again by another worker (jobs.py, stalled jobs) well before the hold
lapses (the settings require stalled + maintenance < extend), and that run charges once: one
hold, one Capture. The only window left is a worker dying after finishing and before its
Capture, if no other run settles the prediction before the hold lapses: the audio is then
free. The error is on the customer's side of the ledger, never against them.

A synth refusal (bad voice, text too long, a failure inside synth) fails the prediction with
"synthesis failed" and releases the hold. Failures that may pass (synth or the ledger
unreachable, synth draining, synth silent for PREDICTIONS_SYNTHESIS_STALL_SECONDS) raise
`RetryLater`, and the job is run again after a backoff.
Cancellation comes as the job's task being cancelled (CancelPrediction aborts the job, and
procrastinate cancels the task at once): the synthesis call is cancelled with it, so synth stops
before its next model call, and the run ends with nothing written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import grpc
from kokoropay.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from kokoropay.synth.v1 import synth_pb2, synth_pb2_grpc

from services.common.errors import error_info
from services.predictions.clients import LEDGER_TIMEOUT_SECONDS, TRANSIENT_CODES
from services.predictions.outputs import CONTENT_TYPES, OutputStorage
from services.predictions.settings import PredictionsSettings
from services.predictions.store import Prediction, PredictionStore

_log = logging.getLogger("predictions.runner")

_FORMATS = {
    "mp3": synth_pb2.AUDIO_FORMAT_MP3,
    "opus": synth_pb2.AUDIO_FORMAT_OPUS,
    "aac": synth_pb2.AUDIO_FORMAT_AAC,
    "flac": synth_pb2.AUDIO_FORMAT_FLAC,
    "wav": synth_pb2.AUDIO_FORMAT_WAV,
    "pcm": synth_pb2.AUDIO_FORMAT_PCM,
}
# The ledger's reasons for a hold that is no longer open.
_HOLD_CLOSED = {"HOLD_CAPTURED", "HOLD_RELEASED", "HOLD_EXPIRED"}


class RetryLater(Exception):
    """A failure that may pass: the job should run again after a backoff."""


class HoldLapsed(Exception):
    """The prediction's hold is no longer open (the ledger's reason says how)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SynthesisRefused(Exception):
    """synth refused or failed the synthesis; running it again would not help."""


@dataclass(frozen=True)
class Audio:
    data: bytes
    # Seconds from the Synthesize call to the end of its stream.
    seconds: float


def _reason(error: grpc.RpcError) -> str:
    info = error_info(error)
    return info.reason if info is not None else ""


class PredictionRunner:
    def __init__(
        self,
        store: PredictionStore,
        outputs: OutputStorage,
        ledger: ledger_pb2_grpc.LedgerServiceStub,
        synth: synth_pb2_grpc.SynthServiceStub,
        settings: PredictionsSettings,
    ) -> None:
        self._store = store
        self._outputs = outputs
        self._ledger = ledger
        self._synth = synth
        self._max_attempts = settings.max_attempts
        self._extend_seconds = settings.hold_extend_seconds
        self._checkpoint_interval = settings.checkpoint_interval_seconds
        self._stall_seconds = settings.synthesis_stall_seconds
        self._retention_seconds = settings.output_retention_seconds
        self._webhook_retry_seconds = settings.webhook_retry_hours * 3600

    def _webhook_deadline(self) -> float:
        return time.time() + self._webhook_retry_seconds

    async def run(self, prediction_id: str, attempts: int) -> str | None:
        """Run the prediction once; `attempts` is how many runs came before this one. How this
        run finished it (metrics.STATUSES: succeeded, failed), or None if it did not."""
        prediction = await self._store.load(prediction_id)
        if prediction is None:
            _log.error("no prediction %s for its job", prediction_id)
            return None
        if prediction.finished:
            await self.settle(prediction)
            return None
        if attempts >= self._max_attempts:
            return await self._fail(prediction, f"gave up after {attempts} attempts")
        try:
            await self._checkpoint(prediction.hold_id)
        except HoldLapsed as lapsed:
            return await self._lapsed(prediction, lapsed.reason)
        last_attempt = attempts + 1 >= self._max_attempts
        try:
            audio = await self._synthesize(prediction)
        except SynthesisRefused as refused:
            return await self._fail(prediction, str(refused))
        except HoldLapsed as lapsed:
            return await self._lapsed(prediction, lapsed.reason)
        except RetryLater as later:
            if last_attempt:
                return await self._fail(prediction, f"{later} (attempt {attempts + 1}, the last)")
            raise
        stored = await self._outputs.put(
            prediction.id,
            CONTENT_TYPES[prediction.output_format],
            audio.data,
            self._retention_seconds,
        )
        finished = await self._store.succeed(
            prediction.id, audio.seconds, stored.expire_time, self._webhook_deadline()
        )
        if finished is None:
            # Cancelled while the audio was being stored, or another run finished first.
            current = await self._store.load(prediction.id)
            if current is not None:
                await self.settle(current)
            return None
        _log.info(
            "prediction succeeded",
            extra={"prediction_id": prediction.id, "bytes": stored.size, "seconds": audio.seconds},
        )
        await self.settle(finished)
        return "succeeded"

    async def _fail(self, prediction: Prediction, details: str) -> str | None:
        """Finish as "synthesis failed" and refund; "failed" if this call finished it."""
        _log.warning("prediction failed: %s", details, extra={"prediction_id": prediction.id})
        finished = await self._store.fail(
            prediction.id, "synthesis failed", details, self._webhook_deadline()
        )
        await self.settle(finished or await self._store.load(prediction.id) or prediction)
        return None if finished is None else "failed"

    async def _lapsed(self, prediction: Prediction, reason: str) -> str | None:
        """The hold closed before the audio was stored: the ledger already returned its
        credits (a lapsed hold with checkpoint 0 captures nothing). "failed" if this call
        finished it."""
        details = (
            "it waited longer than its hold lasts and was refunded"
            if reason == "HOLD_EXPIRED"
            else f"its hold closed before it ran ({reason})"
        )
        _log.warning("prediction expired: %s", details, extra={"prediction_id": prediction.id})
        finished = await self._store.fail(
            prediction.id, "expired", details, self._webhook_deadline()
        )
        if finished is None:
            return None
        await self._store.mark_settled(prediction.id)
        return "failed"

    async def settle(self, prediction: Prediction) -> None:
        """Capture a success's hold, release a failure's, and record it; idempotent. Left
        unsettled (for the workers' reconciliation) when the ledger cannot answer."""
        if not prediction.finished or prediction.settle_time is not None:
            return
        hold = prediction.hold_id
        success = prediction.status == "success"
        try:
            if success:
                await self._ledger.Capture(
                    ledger_pb2.CaptureRequest(hold_id=hold), timeout=LEDGER_TIMEOUT_SECONDS
                )
            else:
                await self._ledger.Release(
                    ledger_pb2.ReleaseRequest(hold_id=hold), timeout=LEDGER_TIMEOUT_SECONDS
                )
        except grpc.RpcError as error:
            if error.code() in TRANSIENT_CODES:
                _log.warning(
                    "could not settle hold %s: %s; retried later",
                    hold,
                    error.code().name,
                    extra={"prediction_id": prediction.id},
                )
                return
            # The hold closed otherwise (it lapsed before the capture: the audio went free;
            # or the ledger refuses for good): there is nothing more this service can do.
            _log.error(
                "hold %s of a %s prediction could not be settled: %s %s",
                hold,
                prediction.status,
                error.code().name,
                _reason(error),
                extra={"prediction_id": prediction.id},
            )
        await self._store.mark_settled(prediction.id)

    async def _checkpoint(self, hold_id: str) -> None:
        """Keep the hold open PREDICTIONS_HOLD_EXTEND_SECONDS more, nothing delivered.

        HoldLapsed if it is closed (a captured hold is paid: fine to go on); RetryLater when the
        ledger cannot answer."""
        request = ledger_pb2.CheckpointRequest(
            hold_id=hold_id, delivered=0, extend_seconds=self._extend_seconds
        )
        try:
            await self._ledger.Checkpoint(request, timeout=LEDGER_TIMEOUT_SECONDS)
        except grpc.RpcError as error:
            reason = _reason(error)
            if reason == "HOLD_CAPTURED":
                return
            if reason in _HOLD_CLOSED:
                raise HoldLapsed(reason) from error
            if error.code() in TRANSIENT_CODES:
                raise RetryLater(f"the ledger did not answer: {error.code().name}") from error
            raise

    async def _keep_hold(self, hold_id: str) -> None:
        """Checkpoint every interval while synthesis runs; returns (HoldLapsed) only if the hold
        closed under it. A ledger that does not answer is tried again next interval."""
        while True:
            await asyncio.sleep(self._checkpoint_interval)
            try:
                await self._checkpoint(hold_id)
            except RetryLater as later:
                _log.warning("checkpoint failed: %s", later)

    async def _synthesize(self, prediction: Prediction) -> Audio:
        request = synth_pb2.SynthesizeRequest(
            text=prediction.text,
            voice=prediction.voice,
            speed=prediction.speed,
            format=_FORMATS[prediction.output_format],
        )
        started = time.monotonic()
        call = self._synth.Synthesize(request)
        consume = asyncio.ensure_future(self._collect(call))
        keep = asyncio.ensure_future(self._keep_hold(prediction.hold_id))
        try:
            await asyncio.wait({consume, keep}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also on cancellation (the job aborted): synth stops before its next model call.
            call.cancel()
            for task in (consume, keep):
                task.cancel()
            for task in (consume, keep):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if not consume.done() or consume.cancelled():
            keep.result()  # raises HoldLapsed
            raise AssertionError("the hold keeper ended without a reason")
        data = consume.result()
        return Audio(data=data, seconds=time.monotonic() - started)

    async def _collect(self, call: grpc.aio.UnaryStreamCall) -> bytes:
        pieces: list[bytes] = []
        messages = aiter(call)
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(anext(messages), self._stall_seconds)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    # The hold is kept alive meanwhile: without this a hung synth would hold
                    # the job and the customer's credits for ever.
                    raise RetryLater(f"synth sent nothing for {self._stall_seconds:g} s") from None
                pieces.append(chunk.audio)
        except grpc.RpcError as error:
            code = error.code()
            if code in TRANSIENT_CODES:
                raise RetryLater(f"synth did not finish: {code.name}") from error
            raise SynthesisRefused(f"synth answered {code.name}: {error.details()}") from error
        return b"".join(pieces)
