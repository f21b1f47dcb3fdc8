"""Model calls, not streams, are scheduled: every open stream's next chunk on a few model workers.

A stream submits one call at a time (its next chunk, once planned and within its lookahead) and
awaits it; `workers` threads run the calls. A free worker takes the next call in one place,
`CallScheduler._take`: a stream's first call before every later one, so a new request's first
audio waits for the calls already running and nothing more; then the call waiting longest, so
open streams take turns. A call whose stream was cancelled is dropped while it waits, and a
worker checks the flag again right before the model runs: a torch call cannot be interrupted,
so the one in flight is the most an abandoned stream still costs.

With a `BatchPolicy` (on CUDA by default: decision 0021) a free worker takes, in that same
order, as many waiting calls as fit the policy's budget of padded phonemes, and the backend
speaks them in one padded model call (`generate_batch`): a device that runs one input at a time
mostly waits on its own kernel launches. The worker waits up to `wait_seconds` for more calls
before it starts a batch with room left, so streams that start together are spoken together.
Each call keeps its stream's order (a stream has one call waiting or running at a time) and its
own cancellation: a cancelled call leaves the batch before the model runs, and its neighbours'
audio does not depend on it.

Metrics (services/synth/metrics.py): streams whose call is running (`active`) or waiting for a
worker (`queued`), the workers (`capacity`), and every model call's time, audio and batch size.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import heapq
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum

from services.common.logs import request_id_var
from services.synth import metrics
from services.synth.engine.backend import Speech, SpeechRequest, SynthesisBackend
from services.synth.voices import VoiceMix

_log = logging.getLogger("synth.engine")


class SynthesisCancelled:
    """Set by whoever stops listening (the RPC's end); read before each model call."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


class _State(Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


@dataclass(eq=False)
class ModelCall:
    """One chunk of one stream: its phonemes to audio."""

    phonemes: str
    voice: VoiceMix
    speed: float
    cancelled: SynthesisCancelled
    # The stream has no audio yet: this call's time is its caller's wait for first audio.
    first: bool
    # For the log line: a batch's line names every call's chunk and request.
    chunk_index: int = 0
    request_id: str = field(default_factory=request_id_var.get)
    _state: _State = field(default=_State.QUEUED, init=False)
    _result: asyncio.Future[Speech | None] | None = field(default=None, init=False)

    def priority(self, order: int) -> tuple[int, int]:
        return (0 if self.first else 1, order)

    @property
    def request(self) -> SpeechRequest:
        return SpeechRequest(self.phonemes, self.voice, self.speed)

    @property
    def padded_length(self) -> int:
        """What the call takes of a batch's rows: its phonemes and the two boundary tokens."""
        return len(self.phonemes) + 2


@dataclass(frozen=True)
class BatchPolicy:
    """How a worker gathers calls into one padded model call."""

    # Padded phonemes per batch (items x the longest item): bounds the call's memory and time.
    max_phonemes: int
    # How long a free worker waits for more calls before it starts a batch with room left.
    wait_seconds: float
    # Calls per batch: a worker's share of the streams the engine runs at once (its capacity).
    max_calls: int = 32

    def fits(self, calls: int, longest: int) -> bool:
        return calls <= self.max_calls and calls * longest <= self.max_phonemes


_Entry = tuple[tuple[int, int], ModelCall]


class CallScheduler:
    def __init__(
        self, backend: SynthesisBackend, workers: int, batching: BatchPolicy | None = None
    ) -> None:
        self._backend = backend
        self._workers = workers
        self._free = workers
        self._batching = batching
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="synth-model")
        self._waiting: list[_Entry] = []
        self._submitted = 0
        self._closed = False
        # A worker is waiting for more calls to join its batch (BatchPolicy.wait_seconds).
        self._gathering: asyncio.TimerHandle | None = None
        # Streams whose calls may run at once: each worker runs one call, or one batch.
        metrics.STREAM_CAPACITY.set(workers * (batching.max_calls if batching else 1))
        metrics.WORKERS.set(workers)

    async def run(self, call: ModelCall) -> Speech | None:
        """The call's audio once a worker has spoken it; None when its stream was cancelled
        before the model ran. Leaving (cancelling the awaiting task) withdraws a waiting call."""
        if self._closed:
            raise RuntimeError("the engine is closing")
        call._result = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (call.priority(self._submitted), call))
        self._submitted += 1
        metrics.QUEUED_STREAMS.inc()
        self._dispatch()
        try:
            return await call._result
        finally:
            if call._state is _State.QUEUED:
                call._state = _State.DONE
                metrics.QUEUED_STREAMS.dec()

    def _dispatch(self) -> None:
        """Start calls while workers are free; runs on the event loop, so it needs no lock."""
        if self._gathering is not None:
            if self._batching is not None and self._worth_waiting_for_more(self._batching):
                return
            # The batch is full: no reason to wait out the rest of the window.
            self._gathering.cancel()
            self._gathering = None
        while self._free:
            if self._batching is not None and self._worth_waiting_for_more(self._batching):
                self._gathering = asyncio.get_running_loop().call_later(
                    self._batching.wait_seconds, self._gathered
                )
                return
            calls = self._take()
            if not calls:
                return
            self._start(calls)

    def _worth_waiting_for_more(self, policy: BatchPolicy) -> bool:
        """A batch could start now with room left: wait (once, briefly) for more calls."""
        if policy.wait_seconds <= 0 or not self._waiting:
            return False
        queued = [call for _, call in self._waiting if call._state is _State.QUEUED]
        if not queued:
            return False
        longest = max(call.padded_length for call in queued)
        return policy.fits(len(queued) + 1, longest)

    def _gathered(self) -> None:
        self._gathering = None
        if self._closed:
            return
        # However many came meanwhile, the batch starts now.
        while self._free and (calls := self._take()):
            self._start(calls)

    def _start(self, calls: list[ModelCall]) -> None:
        self._free -= 1
        metrics.BUSY_WORKERS.inc()
        for call in calls:
            call._state = _State.RUNNING
        metrics.QUEUED_STREAMS.dec(len(calls))
        metrics.ACTIVE_STREAMS.inc(len(calls))
        loop = asyncio.get_running_loop()
        # A copied context carries the request id into the worker's log lines.
        running = loop.run_in_executor(
            self._executor, contextvars.copy_context().run, self._speak, calls
        )
        running.add_done_callback(functools.partial(self._finished, calls))

    def _take(self) -> list[ModelCall]:
        """The next calls to run (one, or a batch): first chunks first, then the ones waiting
        longest; calls whose stream was cancelled or left are dropped here."""
        taken: list[ModelCall] = []
        longest = 0
        while self._waiting:
            entry = heapq.heappop(self._waiting)
            call = entry[1]
            if call._state is not _State.QUEUED:
                continue  # withdrawn by its stream: already counted out of the queue
            if call.cancelled.is_set():
                call._state = _State.DONE
                metrics.QUEUED_STREAMS.dec()
                self._settle(call, None)
                continue
            if taken and (
                self._batching is None
                or not self._batching.fits(len(taken) + 1, max(longest, call.padded_length))
            ):
                heapq.heappush(self._waiting, entry)  # the next batch's first
                break
            taken.append(call)
            longest = max(longest, call.padded_length)
        return taken

    def _speak(self, calls: list[ModelCall]) -> list[Speech | BaseException | None]:
        """In a worker thread: one model call for the calls whose stream is still listening;
        for each call, its speech, the error that stopped it, or None (cancelled)."""
        live = [call for call in calls if not call.cancelled.is_set()]
        spoken: dict[int, Speech | BaseException] = {}
        if len(live) > 1:
            try:
                speeches = self._spoken_together(live)
                spoken = {id(call): speech for call, speech in zip(live, speeches, strict=True)}
            except Exception:
                # One input, or the batch's size (CUDA out of memory), must not fail every
                # stream in it: each is tried alone, and fails alone.
                _log.exception("a batch of %d chunks failed; speaking them one by one", len(live))
        for call in live:
            if id(call) not in spoken:
                try:
                    (spoken[id(call)],) = self._spoken_together([call])
                except Exception as error:  # the caller's stream reports it
                    spoken[id(call)] = error
        return [spoken.get(id(call)) for call in calls]

    def _spoken_together(self, calls: list[ModelCall]) -> list[Speech]:
        """One model call for `calls` (alone, or batched), measured and logged."""
        started = time.perf_counter()
        if len(calls) == 1:
            (call,) = calls
            speeches = [self._backend.generate(call.phonemes, call.voice, call.speed)]
        else:
            speeches = self._backend.generate_batch([call.request for call in calls])
        model_seconds = time.perf_counter() - started
        audio_seconds = sum(len(speech.audio) for speech in speeches) / self._backend.sample_rate
        metrics.record_model_call(audio_seconds, model_seconds, batch_size=len(calls))
        _log.debug(
            "%d chunks spoken",
            len(calls),
            extra={
                "chunks": [call.chunk_index for call in calls],
                "request_ids": [call.request_id for call in calls],
                "phonemes": sum(len(call.phonemes) for call in calls),
                "audio_seconds": round(audio_seconds, 3),
                "model_ms": round(model_seconds * 1e3, 1),
            },
        )
        return speeches

    def _finished(
        self,
        calls: list[ModelCall],
        done: asyncio.Future[list[Speech | BaseException | None]],
    ) -> None:
        self._free += 1
        metrics.BUSY_WORKERS.dec()
        metrics.ACTIVE_STREAMS.dec(len(calls))
        for position, call in enumerate(calls):
            call._state = _State.DONE
            result = call._result
            if result is None or result.done():
                continue
            if done.cancelled():
                result.cancel()
            elif (error := done.exception()) is not None:
                result.set_exception(error)
            elif isinstance(outcome := done.result()[position], BaseException):
                result.set_exception(outcome)
            else:
                result.set_result(outcome)
        if not self._closed:
            self._dispatch()

    @staticmethod
    def _settle(call: ModelCall, speech: Speech | None) -> None:
        if call._result is not None and not call._result.done():
            call._result.set_result(speech)

    async def close(self) -> None:
        """Refuse new calls, drop the waiting ones, and wait for the calls in flight."""
        self._closed = True
        if self._gathering is not None:
            self._gathering.cancel()
            self._gathering = None
        while calls := self._take():
            for call in calls:
                call._state = _State.DONE
                metrics.QUEUED_STREAMS.dec()
                self._settle(call, None)
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
