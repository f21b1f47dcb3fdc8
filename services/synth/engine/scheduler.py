"""Model calls, not streams, are scheduled: every open stream's next chunk on a few model workers.

A stream submits one call at a time (its next chunk, once planned and within its lookahead) and
awaits it; `workers` threads run the calls. A free worker takes the next call in one place,
`CallScheduler._take`: a stream's first call before every later one, so a new request's first
audio waits for the calls already running and nothing more; then the call waiting longest, so
open streams take turns. A call whose stream was cancelled is dropped while it waits, and a
worker checks the flag again right before the model runs: a torch call cannot be interrupted,
so the one in flight is the most an abandoned stream still costs.

`_take` is where a batcher would gather several streams' next chunks into one padded call.

Metrics (services/synth/metrics.py): streams whose call is running (`active`) or waiting for a
worker (`queued`), the workers (`capacity`), and every model call's time and audio.
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

from services.synth import metrics
from services.synth.engine.backend import Speech, SynthesisBackend
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
    # For the log line.
    chunk_index: int = 0
    _state: _State = field(default=_State.QUEUED, init=False)
    _result: asyncio.Future[Speech | None] | None = field(default=None, init=False)

    def priority(self, order: int) -> tuple[int, int]:
        return (0 if self.first else 1, order)


class CallScheduler:
    def __init__(self, backend: SynthesisBackend, workers: int) -> None:
        self._backend = backend
        self._workers = workers
        self._free = workers
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="synth-model")
        self._waiting: list[tuple[tuple[int, int], ModelCall]] = []
        self._submitted = 0
        self._closed = False
        metrics.STREAM_CAPACITY.set(workers)

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
        while self._free and (call := self._take()) is not None:
            self._free -= 1
            call._state = _State.RUNNING
            metrics.QUEUED_STREAMS.dec()
            metrics.ACTIVE_STREAMS.inc()
            loop = asyncio.get_running_loop()
            # A copied context carries the request id into the worker's log lines.
            running = loop.run_in_executor(
                self._executor, contextvars.copy_context().run, self._speak, call
            )
            running.add_done_callback(functools.partial(self._finished, call))

    def _take(self) -> ModelCall | None:
        """The next call to run: first chunks first, then the one waiting longest; calls whose
        stream was cancelled or left are dropped here."""
        while self._waiting:
            _, call = heapq.heappop(self._waiting)
            if call._state is not _State.QUEUED:
                continue  # withdrawn by its stream: already counted out of the queue
            if call.cancelled.is_set():
                call._state = _State.DONE
                metrics.QUEUED_STREAMS.dec()
                self._settle(call, None)
                continue
            return call
        return None

    def _speak(self, call: ModelCall) -> Speech | None:
        """In a worker thread: the model call, unless the stream was cancelled meanwhile."""
        if call.cancelled.is_set():
            return None
        started = time.perf_counter()
        speech = self._backend.generate(call.phonemes, call.voice, call.speed)
        model_seconds = time.perf_counter() - started
        audio_seconds = len(speech.audio) / self._backend.sample_rate
        metrics.record_model_call(audio_seconds, model_seconds)
        _log.debug(
            "chunk %d spoken",
            call.chunk_index,
            extra={
                "phonemes": len(call.phonemes),
                "audio_seconds": round(audio_seconds, 3),
                "model_ms": round(model_seconds * 1e3, 1),
            },
        )
        return speech

    def _finished(self, call: ModelCall, done: asyncio.Future[Speech | None]) -> None:
        call._state = _State.DONE
        self._free += 1
        metrics.ACTIVE_STREAMS.dec()
        result = call._result
        if result is not None and not result.done():
            if done.cancelled():
                result.cancel()
            elif (error := done.exception()) is not None:
                result.set_exception(error)
            else:
                result.set_result(done.result())
        if not self._closed:
            self._dispatch()

    @staticmethod
    def _settle(call: ModelCall, speech: Speech | None) -> None:
        if call._result is not None and not call._result.done():
            call._result.set_result(speech)

    async def close(self) -> None:
        """Refuse new calls, drop the waiting ones, and wait for the calls in flight."""
        self._closed = True
        while (call := self._take()) is not None:
            call._state = _State.DONE
            metrics.QUEUED_STREAMS.dec()
            self._settle(call, None)
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
