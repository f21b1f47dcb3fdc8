"""The one owner of the model: loads and warms it up, then speaks every stream's chunks.

A stream does not hold a worker. `stream()` starts a producer task that plans the text lazily
(G2P off the event loop, one chunk at a time), submits each chunk to the scheduler
(engine/scheduler.py) as one model call, trims the audio's edges where it meets the next
chunk (audio/seams.py) and hands it to the caller. It submits a chunk only while fewer than
`lookahead_chunks` spoken chunks are still with the caller (queued, or being encoded and sent:
the caller gives one back by asking for the next), and only one at a time, so each stream's
chunks come in order. The caller leaving (or the RPC's end setting `cancelled`) stops the
producer; a call of that stream still waiting for a model worker is dropped, and one already
running is the last.

A synthesis asked for word timestamps also gets, with each chunk, where its words are spoken in
the model's audio for it (timestamps.py); only languages whose G2P says which phonemes each word
became have them (`VoiceCatalog.has_word_timestamps`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from services.synth.audio.seams import pause_after, trim_edges
from services.synth.engine.backend import Samples, Speech, SynthesisBackend
from services.synth.engine.scheduler import (
    BatchPolicy,
    CallScheduler,
    ModelCall,
    SynthesisCancelled,
)
from services.synth.engine.timestamps import ChunkWords, time_words
from services.synth.text.chunking import ChunkBudgets, Phonemize, TextChunk, plan_chunks
from services.synth.text.words import Pronunciation
from services.synth.voices import LANGUAGES, VoiceCatalog, VoiceMix

__all__ = [
    "BatchPolicy",
    "EngineManager",
    "GeneratedChunk",
    "PhonemizerFactory",
    "SynthesisCancelled",
]

_log = logging.getLogger("synth.engine")

# Spoken once at start-up, so the first request pays for no lazy initialisation.
WARM_UP_TEXT = "Warming up, one moment."
# What a chunk with no phonemes says.
_SILENCE = Speech(np.zeros(0, dtype=np.float32), np.zeros(1, dtype=np.int64))

PhonemizerFactory = Callable[[Collection[str]], Mapping[str, Phonemize]]


@dataclass(frozen=True)
class GeneratedChunk:
    index: int
    # Input characters (code points) spoken up to and including this chunk.
    text_end: int
    # What the caller plays: the model's audio less the silence trimmed at its edges.
    audio: Samples
    is_last: bool
    # Samples of the model's own output cut before `audio` starts and after it ends (silence
    # at a seam between chunks; audio/seams.py). Sample n of `audio` is sample
    # n + trimmed_head_samples of the model's output, so times measured on the model's output
    # (its durations) shift by -trimmed_head_samples.
    trimmed_head_samples: int = 0
    trimmed_tail_samples: int = 0
    # Where the input's words are spoken in the model's audio for this chunk (before the
    # trimming); None unless the synthesis asked for word timestamps.
    words: ChunkWords | None = None


@dataclass
class _Stream:
    text: str
    voice: VoiceMix
    speed: float
    cancelled: SynthesisCancelled
    word_timestamps: bool
    queue: asyncio.Queue[GeneratedChunk | BaseException | None] = field(
        default_factory=asyncio.Queue
    )
    generated: int = 0
    delivered: int = 0
    text_end: int = 0
    # Samples handed over so far: none means the next model call is the stream's first.
    samples: int = 0


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
        batching: BatchPolicy | None = None,
    ) -> None:
        self._backend = backend
        self._phonemizer_factory = phonemizers
        self._budgets = budgets
        self._lookahead = lookahead_chunks
        self._warm_up = warm_up
        self._scheduler = CallScheduler(backend, max_concurrent, batching)
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
        """Drop waiting calls and wait for those in flight (their RPCs are cancelled by now)."""
        self._closing.set()
        await self._scheduler.close()

    async def stream(
        self,
        text: str,
        voice: VoiceMix,
        speed: float,
        cancelled: SynthesisCancelled,
        *,
        word_timestamps: bool = False,
    ) -> AsyncGenerator[GeneratedChunk, None]:
        """The chunks of one synthesis, in order, as the model speaks them; with
        `word_timestamps` (for a voice that has them), each with its words.

        Setting `cancelled` (or leaving the iteration) stops it before its next model call.
        """
        stream = _Stream(text, voice, speed, cancelled, word_timestamps)
        room = asyncio.Semaphore(self._lookahead)
        phonemize = self._phonemizers[voice.language_code]
        # A task copies the context: the request id reaches the producer's log lines.
        producer = asyncio.create_task(self._produce(stream, phonemize, room))
        try:
            while (item := await stream.queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                stream.delivered += 1
                yield item
                # The caller is back for more: it has encoded and sent that chunk. Only now may
                # the next model call start, so it never competes with the delivery of the
                # chunk before it (on a CPU, for the cores and the GIL): first audio costs the
                # model's time and a few milliseconds.
                room.release()
        finally:
            cancelled.set()
            producer.cancel()

    async def _produce(
        self, stream: _Stream, phonemize: Phonemize, room: asyncio.Semaphore
    ) -> None:
        """Plan, speak and hand over chunk by chunk, at most `lookahead` ahead of the caller."""
        planned = plan_chunks(stream.text, phonemize, self._budgets)
        try:
            while (chunk := await asyncio.to_thread(_next_chunk, planned)) is not None:
                await room.acquire()
                spoken = await self._speak(stream, chunk)
                if spoken is None:
                    break  # cancelled before the model ran
                stream.queue.put_nowait(spoken)
                if chunk.is_last:
                    break
            else:
                # The text had nothing to plan (blank after all): close the stream all the same.
                stream.queue.put_nowait(
                    GeneratedChunk(stream.generated, len(stream.text), _SILENCE.audio, True)
                )
            if stream.cancelled.is_set():
                self._log_cancelled(stream)
                return
            stream.queue.put_nowait(None)
        except asyncio.CancelledError:
            self._log_cancelled(stream)
            raise
        except Exception as error:  # handed to the caller, which reports it
            stream.queue.put_nowait(error)

    async def _speak(self, stream: _Stream, chunk: TextChunk) -> GeneratedChunk | None:
        if stream.cancelled.is_set():
            return None
        raw = _SILENCE
        if chunk.phonemes:
            call = ModelCall(
                chunk.phonemes,
                stream.voice,
                stream.speed,
                stream.cancelled,
                first=stream.samples == 0,
                chunk_index=chunk.index,
            )
            spoken = await self._scheduler.run(call)
            if spoken is None:
                if stream.cancelled.is_set():
                    return None
                raise RuntimeError("the engine is closing")
            raw = spoken
        # The stream's first sample and its last are no seam: left as the model made them.
        trimmed = trim_edges(
            raw.audio,
            self._backend.sample_rate,
            head=stream.samples > 0,
            pause=None if chunk.is_last else pause_after(chunk.ends_sentence),
        )
        stream.generated += 1
        stream.samples += len(trimmed.audio)
        stream.text_end = len(stream.text) if chunk.is_last else chunk.span.end
        words = None
        if stream.word_timestamps and chunk.words is not None:
            words = time_words(chunk.words, raw, self._backend.sample_rate)
        return GeneratedChunk(
            chunk.index,
            stream.text_end,
            trimmed.audio,
            chunk.is_last,
            trimmed_head_samples=trimmed.head,
            trimmed_tail_samples=trimmed.tail,
            words=words,
        )

    @staticmethod
    def _log_cancelled(stream: _Stream) -> None:
        _log.info(
            "synthesis cancelled after %d chunks (%d delivered); %d of %d characters spoken",
            stream.generated,
            stream.delivered,
            stream.text_end,
            len(stream.text),
            extra={
                "generated_chunks": stream.generated,
                "delivered_chunks": stream.delivered,
                "characters_spoken": stream.text_end,
                "characters": len(stream.text),
            },
        )


def _next_chunk(planned: Iterator[TextChunk]) -> TextChunk | None:
    return next(planned, None)
