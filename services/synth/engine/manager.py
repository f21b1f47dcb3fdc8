"""The one owner of the model: loads and warms it up, then runs syntheses in bounded workers.

Each synthesis is one job in a thread pool of `max_concurrent` workers, guarded by a semaphore
of the same size, so requests beyond it wait for a slot instead of oversubscribing the device.
The worker plans the text lazily, speaks chunk by chunk and hands each chunk to the event loop;
it checks the cancel flag before every model call, so a cancelled request stops at the next
chunk. The slot is released when the worker has actually stopped, not when the caller left.

Metrics (services/synth/metrics.py): streams waiting for a slot and holding one, the slots, and
every model call's time and audio, recorded by the worker as it speaks.

A synthesis asked for word timestamps also gets, with each chunk, where its words are spoken in
the chunk's audio (timestamps.py); only languages whose G2P says which phonemes each word became
have them (`VoiceCatalog.has_word_timestamps`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from services.synth import metrics
from services.synth.engine.backend import Samples, Speech, SynthesisBackend
from services.synth.engine.timestamps import ChunkWords, time_words
from services.synth.text.chunking import ChunkBudgets, Phonemize, plan_chunks
from services.synth.text.words import Pronunciation
from services.synth.voices import LANGUAGES, VoiceCatalog, VoiceMix

_log = logging.getLogger("synth.engine")

# Spoken once at start-up, so the first request pays for no lazy initialisation.
WARM_UP_TEXT = "Warming up, one moment."
# How often a worker waiting for the consumer looks at the cancel flag.
_CANCEL_POLL_SECONDS = 0.05
# What a chunk with no phonemes says.
_SILENCE = Speech(np.zeros(0, dtype=np.float32), np.zeros(1, dtype=np.int64))

PhonemizerFactory = Callable[[Collection[str]], Mapping[str, Phonemize]]


@dataclass(frozen=True)
class GeneratedChunk:
    index: int
    # Input characters (code points) spoken up to and including this chunk.
    text_end: int
    audio: Samples
    is_last: bool
    # Where the input's words are spoken in `audio` as the model made it; None unless the
    # synthesis asked for word timestamps.
    words: ChunkWords | None = None


class SynthesisCancelled:
    """Set by whoever stops listening (the RPC's end); read by the worker between chunks."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


@dataclass
class _Job:
    text: str
    voice: VoiceMix
    speed: float
    phonemize: Phonemize
    cancelled: SynthesisCancelled
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[GeneratedChunk | BaseException | None]
    # Chunks the worker may still produce before the consumer takes one.
    room: threading.Semaphore
    word_timestamps: bool = False
    generated: int = 0
    delivered: int = 0

    def hand_over(self, item: GeneratedChunk | BaseException | None) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class EngineManager:
    def __init__(
        self,
        backend: SynthesisBackend,
        phonemizers: PhonemizerFactory,
        budgets: ChunkBudgets,
        *,
        max_concurrent: int,
        lookahead_chunks: int = 1,
        warm_up: bool = True,
    ) -> None:
        self._backend = backend
        self._phonemizer_factory = phonemizers
        self._budgets = budgets
        self._lookahead = lookahead_chunks
        self._warm_up = warm_up
        self._executor = ThreadPoolExecutor(max_concurrent, thread_name_prefix="synth-worker")
        self._slots = asyncio.Semaphore(max_concurrent)
        metrics.STREAM_CAPACITY.set(max_concurrent)
        self._phonemizers: Mapping[str, Phonemize] = {}
        self._catalog: VoiceCatalog | None = None
        # Set on shutdown: a start-up still loading stops at its next step instead of finishing.
        self._closing = threading.Event()

    @property
    def sample_rate(self) -> int:
        return self._backend.sample_rate

    @property
    def catalog(self) -> VoiceCatalog:
        if self._catalog is None:
            raise RuntimeError("the engine has not started")
        return self._catalog

    async def start(self) -> None:
        """Load the model and the G2P, then warm up; runs off the event loop so health answers."""
        await asyncio.get_running_loop().run_in_executor(None, self._load)

    def _load(self) -> None:
        started = time.perf_counter()
        self._backend.load()
        if self._closing.is_set():
            return
        self._phonemizers = self._phonemizer_factory(LANGUAGES.keys())
        # Words are timed where the G2P says which phonemes each of its tokens became.
        timed = [
            code
            for code, phonemize in self._phonemizers.items()
            if Pronunciation.of(phonemize(WARM_UP_TEXT)).tokens is not None
        ]
        self._catalog = VoiceCatalog(self._backend.voice_names, self._phonemizers.keys(), timed)
        _log.info(
            "languages spoken: %s",
            ", ".join(language.tag for language in self._catalog.spoken_languages),
            extra={"load_seconds": round(time.perf_counter() - started, 2)},
        )
        if self._warm_up and not self._closing.is_set():
            self._warm()

    def _warm(self) -> None:
        started = time.perf_counter()
        voices = self._catalog.builtin_names if self._catalog else []
        english = [name for name in voices if name[0] in self._phonemizers and name[0] in "ab"]
        if not english:
            _log.warning("no English voice to warm up with; skipping warm-up")
            return
        voice = VoiceMix(((english[0], 1.0),))
        phonemes = Pronunciation.of(self._phonemizers[voice.language_code](WARM_UP_TEXT)).phonemes
        # Twice: the first call pays for allocator and kernel set-up, the second should not.
        for _ in range(2):
            if self._closing.is_set():
                return
            self._backend.generate(phonemes, voice, 1.0)
        _log.info("warmed up", extra={"warm_up_seconds": round(time.perf_counter() - started, 2)})

    async def close(self) -> None:
        """Wait for the workers, which stop at their next chunk once their RPCs are cancelled."""
        self._closing.set()
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    async def stream(
        self,
        text: str,
        voice: VoiceMix,
        speed: float,
        cancelled: SynthesisCancelled,
        *,
        word_timestamps: bool = False,
    ) -> AsyncGenerator[GeneratedChunk, None]:
        """The chunks of one synthesis, in order, as the worker speaks them; with
        `word_timestamps` (for a voice that has them), each with its words.

        Setting `cancelled` (or leaving the iteration) stops the worker before its next chunk.
        """
        phonemize = self._phonemizers[voice.language_code]
        metrics.QUEUED_STREAMS.inc()
        try:
            await self._slots.acquire()
        finally:
            metrics.QUEUED_STREAMS.dec()
        metrics.ACTIVE_STREAMS.inc()
        loop = asyncio.get_running_loop()
        job = _Job(
            text,
            voice,
            speed,
            phonemize,
            cancelled,
            loop,
            asyncio.Queue(),
            threading.Semaphore(self._lookahead),
            word_timestamps,
        )
        try:
            # A copied context carries the request id into the worker's log lines.
            worker = loop.run_in_executor(
                self._executor, contextvars.copy_context().run, self._work, job
            )
        except BaseException:
            self._release_slot()
            raise
        worker.add_done_callback(lambda _: self._release_slot())
        try:
            while (item := await job.queue.get()) is not None:
                job.room.release()
                if isinstance(item, BaseException):
                    raise item
                job.delivered += 1
                yield item
        finally:
            cancelled.set()

    def _release_slot(self) -> None:
        self._slots.release()
        metrics.ACTIVE_STREAMS.dec()

    def _work(self, job: _Job) -> None:
        """Runs in a worker thread: plan, speak and hand over chunk by chunk."""
        text_end = 0
        try:
            for chunk in plan_chunks(job.text, job.phonemize, self._budgets):
                while not job.room.acquire(timeout=_CANCEL_POLL_SECONDS):
                    if job.cancelled.is_set():
                        break
                if job.cancelled.is_set():
                    self._log_cancelled(job, text_end)
                    return
                spoken_at = time.perf_counter()
                speech = (
                    self._backend.generate(chunk.phonemes, job.voice, job.speed)
                    if chunk.phonemes
                    else _SILENCE
                )
                audio = speech.audio
                model_seconds = time.perf_counter() - spoken_at
                audio_seconds = len(audio) / self._backend.sample_rate
                if chunk.phonemes:
                    metrics.record_model_call(audio_seconds, model_seconds)
                job.generated += 1
                _log.debug(
                    "chunk %d spoken",
                    chunk.index,
                    extra={
                        "phonemes": len(chunk.phonemes),
                        "audio_seconds": round(audio_seconds, 3),
                        "model_ms": round(model_seconds * 1e3, 1),
                    },
                )
                text_end = len(job.text) if chunk.is_last else chunk.span.end
                words = None
                if job.word_timestamps and chunk.words is not None:
                    words = time_words(chunk.words, speech, self._backend.sample_rate)
                job.hand_over(GeneratedChunk(chunk.index, text_end, audio, chunk.is_last, words))
                if chunk.is_last:
                    break
            else:
                # The text ended in pieces with nothing to say: close the stream all the same.
                job.hand_over(
                    GeneratedChunk(job.generated, len(job.text), np.zeros(0, np.float32), True)
                )
            job.hand_over(None)
        except RuntimeError as error:
            if job.loop.is_closed():
                return  # shutting down: nobody is listening
            job.hand_over(error)
        except Exception as error:  # handed to the RPC, which reports it
            job.hand_over(error)

    @staticmethod
    def _log_cancelled(job: _Job, text_end: int) -> None:
        _log.info(
            "synthesis cancelled after %d chunks (%d delivered); %d of %d characters spoken",
            job.generated,
            job.delivered,
            text_end,
            len(job.text),
            extra={
                "generated_chunks": job.generated,
                "delivered_chunks": job.delivered,
                "characters_spoken": text_end,
                "characters": len(job.text),
            },
        )
