"""The engine manager with a stand-in model: bounded workers, lookahead, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Collection, Mapping

import numpy as np
import pytest

from services.synth.engine.backend import Speech
from services.synth.engine.manager import EngineManager, GeneratedChunk, SynthesisCancelled
from services.synth.text.chunking import ChunkBudgets, Phonemize
from services.synth.voices import VoiceMix
from tests.support.metrics import Exposition, scrape

RATE = 24_000
VOICE = VoiceMix((("af_sky", 1.0),))
SENTENCES = " ".join(f"Sentence number {n} is here." for n in range(10))


class SlowModel:
    """Speaks 0.1 s of tone per phoneme after `delay` seconds; counts its calls."""

    sample_rate = RATE

    def __init__(self, delay: float = 0.05, fail_on_call: int | None = None) -> None:
        self.delay = delay
        self.fail_on_call = fail_on_call
        self.calls = 0
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def voice_names(self) -> list[str]:
        return ["af_sky", "af_bella"]

    def load(self) -> None:
        pass

    def generate(self, phonemes: str, voice: VoiceMix, speed: float) -> Speech:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            call = self.calls
        try:
            time.sleep(self.delay)
            if call == self.fail_on_call:
                raise RuntimeError("the model broke")
            per_phoneme = int(0.1 * RATE / speed)
            audio = np.full(len(phonemes) * per_phoneme, 0.1, dtype=np.float32)
            return Speech(audio, np.arange(len(phonemes) + 1, dtype=np.int64) * per_phoneme)
        finally:
            with self._lock:
                self.running -= 1


def identity_phonemizers(codes: Collection[str]) -> Mapping[str, Phonemize]:
    return {"a": lambda text: text}


async def started(model: SlowModel, max_concurrent: int = 1) -> EngineManager:
    manager = EngineManager(
        model,
        identity_phonemizers,
        ChunkBudgets(first=30, later=60, hard_max=510),
        max_concurrent=max_concurrent,
        lookahead_chunks=1,
        warm_up=False,
    )
    await manager.start()
    return manager


async def collect(manager: EngineManager, text: str) -> list[GeneratedChunk]:
    return [chunk async for chunk in manager.stream(text, VOICE, 1.0, SynthesisCancelled())]


async def test_chunks_arrive_in_order_and_the_last_covers_the_text() -> None:
    manager = await started(SlowModel(delay=0.01))
    chunks = await collect(manager, SENTENCES)
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    assert [chunk.is_last for chunk in chunks][-1] and not any(c.is_last for c in chunks[:-1])
    assert chunks[-1].text_end == len(SENTENCES)
    assert manager.catalog.resolve("af_sky") == VOICE
    await manager.close()


async def test_the_worker_runs_at_most_one_chunk_ahead_of_a_slow_consumer() -> None:
    model = SlowModel(delay=0.01)
    manager = await started(model)
    stream = manager.stream(SENTENCES, VOICE, 1.0, SynthesisCancelled())
    await anext(stream)
    await asyncio.sleep(0.3)  # a slow client: the worker must wait for it
    assert model.calls <= 2
    await stream.aclose()
    await manager.close()


async def test_cancelling_stops_before_the_next_chunk_and_frees_the_slot() -> None:
    model = SlowModel(delay=0.2)
    manager = await started(model, max_concurrent=1)
    cancelled = SynthesisCancelled()
    stream = manager.stream(SENTENCES, VOICE, 1.0, cancelled)
    await anext(stream)
    cancelled.set()  # what the RPC's done-callback does
    await stream.aclose()

    started_at = time.monotonic()
    follow_up = await collect(manager, "Next.")  # one slot: waits for the worker to stop
    waited = time.monotonic() - started_at
    assert follow_up and waited < 0.2 * 4
    # First chunk, perhaps the one in progress when cancelled, then the follow-up's one.
    assert model.calls <= 3
    await manager.close()


async def test_concurrency_is_bounded_by_the_setting() -> None:
    model = SlowModel(delay=0.05)
    manager = await started(model, max_concurrent=2)
    await asyncio.gather(*(collect(manager, "One. Two. Three.") for _ in range(5)))
    assert model.most_at_once == 2
    await manager.close()


async def test_a_model_failure_reaches_the_caller() -> None:
    manager = await started(SlowModel(delay=0.01, fail_on_call=2))
    with pytest.raises(RuntimeError, match="the model broke"):
        await collect(manager, SENTENCES)
    await manager.close()


async def _settled(before: Exposition, gauge: str) -> Exposition:
    """A scrape once `gauge` is back where it was (a worker's slot is freed by a callback)."""
    for _ in range(100):
        after = scrape()
        if after.delta(before, gauge) == 0:
            return after
        await asyncio.sleep(0.01)
    return after


async def test_slots_the_queue_and_every_model_call_are_measured() -> None:
    model = SlowModel(delay=0.02)
    manager = await started(model, max_concurrent=1)
    before = scrape()
    first = manager.stream(SENTENCES, VOICE, 1.0, SynthesisCancelled())
    await anext(first)  # holds the only slot
    second = asyncio.ensure_future(collect(manager, "Next one."))
    await asyncio.sleep(0.05)

    during = scrape()
    assert during.total("kokoropay_synth_stream_capacity") == 1
    assert during.delta(before, "kokoropay_synth_active_streams") == 1
    assert during.delta(before, "kokoropay_synth_queued_streams") == 1

    await first.aclose()
    await second
    after = await _settled(before, "kokoropay_synth_active_streams")
    assert after.delta(before, "kokoropay_synth_queued_streams") == 0
    calls = model.calls
    assert after.delta(before, "kokoropay_synth_model_call_seconds_count") == calls
    assert after.delta(before, "kokoropay_synth_batch_size_sum") == calls  # one chunk per call
    assert after.delta(before, "kokoropay_synth_real_time_factor_count") == calls
    # The stand-in speaks 0.1 s per phoneme in about 0.02 s: five times real time, or so.
    assert after.delta(before, "kokoropay_synth_audio_seconds_total") > 0
    await manager.close()
