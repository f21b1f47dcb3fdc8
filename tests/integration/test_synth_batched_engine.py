"""The engine with batching on, on the real model: streams that start together are spoken in
shared model calls, and each stream gets what it gets alone.

Kokoro's durations come before any random draw, so a chunk's length in samples does not depend
on the batch: three streams (different texts, voices, speeds, one asking for word timestamps)
spoken at once with batching on must give, chunk by chunk, the same lengths as each spoken alone
with batching off, and the same word times within 10 ms (a word is fitted to where its sound
starts and stops, and the sound differs by the vocoder's random draws, batched or not;
tests/integration/test_synth_batching.py compares the audio with the draws fixed).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from services.synth.engine.manager import (
    BatchPolicy,
    EngineManager,
    GeneratedChunk,
    SynthesisCancelled,
)
from services.synth.voices import VoiceMix
from tests.support.metrics import scrape

pytestmark = pytest.mark.model


@dataclass(frozen=True)
class Request:
    text: str
    voice: VoiceMix
    speed: float
    word_timestamps: bool = False


REQUESTS = (
    Request(
        "The tide came in, slowly, over the flat grey sand.",
        VoiceMix((("af_heart", 1.0),)),
        1.0,
        word_timestamps=True,
    ),
    Request("Two boats waited by the pier; nobody came.", VoiceMix((("bm_george", 1.0),)), 1.3),
    Request(
        "Lights on the hill, then dark.",
        VoiceMix((("af_bella", 0.5), ("am_adam", 0.5))),
        0.8,
    ),
)


def _engine(batching: BatchPolicy | None) -> EngineManager:
    from services.synth.engine.kokoro_backend import KokoroBackend
    from services.synth.engine.model_files import find_weights
    from services.synth.settings import MODEL_MAX_PHONEMES
    from services.synth.text.chunking import ChunkBudgets
    from services.synth.text.g2p import build_phonemizers

    return EngineManager(
        KokoroBackend(find_weights(None), "cpu"),
        build_phonemizers,
        # Every clause a chunk of its own: several calls per stream, to batch across streams.
        ChunkBudgets(first=10, later=10, hard_max=MODEL_MAX_PHONEMES),
        max_concurrent=1,
        warm_up=False,
        batching=batching,
    )


async def _speak(engine: EngineManager, request: Request) -> list[GeneratedChunk]:
    chunks = engine.stream(
        request.text,
        request.voice,
        request.speed,
        SynthesisCancelled(),
        word_timestamps=request.word_timestamps,
    )
    return [chunk async for chunk in chunks]


# Word times may move this much with the vocoder's draws.
WORD_TOLERANCE_SAMPLES = 240


def _lengths(chunks: list[GeneratedChunk]) -> list[tuple[int, int]]:
    """What batching must not change: each chunk's text and the model's samples for it."""
    return [
        (chunk.text_end, len(chunk.audio) + chunk.trimmed_head_samples + chunk.trimmed_tail_samples)
        for chunk in chunks
    ]


def _word_times(chunks: list[GeneratedChunk]) -> list[int]:
    return [t for c in chunks if c.words for word in c.words.words for t in (word.start, word.end)]


async def _alone_and_together() -> tuple[list[list[GeneratedChunk]], list[list[GeneratedChunk]]]:
    alone_engine = _engine(None)
    together_engine = _engine(BatchPolicy(max_phonemes=4_096, wait_seconds=0.2))
    await alone_engine.start()
    await together_engine.start()
    try:
        alone = [await _speak(alone_engine, request) for request in REQUESTS]
        together = list(
            await asyncio.gather(*(_speak(together_engine, request) for request in REQUESTS))
        )
    finally:
        await alone_engine.close()
        await together_engine.close()
    return alone, together


def test_streams_spoken_together_in_batches_get_what_they_get_alone() -> None:
    from services.common.settings import DATA_DIR

    if not (DATA_DIR / "weights" / "manifest.json").exists():
        pytest.skip("no Kokoro weights under .data/weights: run `make weights`")
    before = scrape()
    alone, together = asyncio.run(_alone_and_together())
    after = scrape()
    calls = after.delta(before, "kokoropay_synth_model_call_seconds_count")
    chunks = after.delta(before, "kokoropay_synth_batch_size_sum")
    alone_chunks = sum(len(stream) for stream in alone)
    # Together, the streams' chunks shared calls: fewer calls than chunks.
    assert chunks == 2 * alone_chunks
    assert calls - alone_chunks < alone_chunks
    for mine_alone, mine_together in zip(alone, together, strict=True):
        assert _lengths(mine_together) == _lengths(mine_alone)
    timed_alone, timed_together = _word_times(alone[0]), _word_times(together[0])
    assert len(timed_together) == len(timed_alone) > 0
    assert max(abs(a - b) for a, b in zip(timed_alone, timed_together, strict=True)) <= (
        WORD_TOLERANCE_SAMPLES
    )
