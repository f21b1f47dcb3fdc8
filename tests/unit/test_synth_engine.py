"""The engine with a stand-in model: model calls scheduled across streams (first chunks first,
then the call waiting longest), lookahead, cancellation that costs no further call, metrics."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Callable, Collection, Mapping, Sequence

import numpy as np
import pytest

from services.synth.engine.backend import Speech, SpeechRequest
from services.synth.engine.manager import (
    BatchPolicy,
    EngineManager,
    GeneratedChunk,
    SynthesisCancelled,
)
from services.synth.engine.scheduler import CallScheduler, ModelCall
from services.synth.text.chunking import ChunkBudgets, Phonemize
from services.synth.voices import VoiceMix
from tests.support.metrics import Exposition, scrape

RATE = 24_000
VOICE = VoiceMix((("af_sky", 1.0),))
SENTENCES = " ".join(f"Sentence number {n} is here." for n in range(10))
# Every clause of at least 10 letters is a chunk of its own.
ONE_CLAUSE_EACH = ChunkBudgets(first=10, later=10, hard_max=510)
PACKED = ChunkBudgets(first=30, later=60, hard_max=510)


class StandInModel:
    """Speaks 0.1 s of tone per phoneme; records every call. A call takes `delay` seconds, or,
    when `gated`, until the test lets it finish with `finish()`."""

    sample_rate = RATE

    def __init__(
        self, delay: float = 0.0, *, gated: bool = False, fail_on_call: int | None = None
    ) -> None:
        self.delay = delay
        self.gated = gated
        self.fail_on_call = fail_on_call
        # Phonemes of each call, in the order the calls started.
        self.started: list[str] = []
        # Phonemes of each model call's inputs (one, or a batch's), in the order they started.
        self.batches: list[list[str]] = []
        self.finished: list[str] = []
        self.running = 0
        self.most_at_once = 0
        self._gates: list[threading.Event] = []
        self._lock = threading.Lock()

    @property
    def calls(self) -> int:
        """Chunks the model has started speaking (a batch counts each of its inputs)."""
        return len(self.started)

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def voice_names(self) -> list[str]:
        return ["af_sky", "af_bella"]

    def load(self) -> None:
        pass

    def finish(self, count: int = 1) -> None:
        """Let the oldest `count` calls still held at their gate finish."""
        with self._lock:
            open_gates = [gate for gate in self._gates if not gate.is_set()]
        for gate in open_gates[:count]:
            gate.set()

    def generate(self, phonemes: str, voice: VoiceMix, speed: float) -> Speech:
        (speech,) = self._speak([SpeechRequest(phonemes, voice, speed)])
        return speech

    def generate_batch(self, requests: Sequence[SpeechRequest]) -> list[Speech]:
        return self._speak(requests)

    def _speak(self, requests: Sequence[SpeechRequest]) -> list[Speech]:
        """One model call, for one input or a batch: one gate, one delay, one failure."""
        gate = threading.Event()
        with self._lock:
            self.started.extend(request.phonemes for request in requests)
            self.batches.append([request.phonemes for request in requests])
            self._gates.append(gate)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            call = len(self.batches)
        try:
            if self.gated:
                assert gate.wait(timeout=10), "a gated call was never let through"
            time.sleep(self.delay)
            if call == self.fail_on_call:
                raise RuntimeError("the model broke")
            return [self._tone(request) for request in requests]
        finally:
            with self._lock:
                self.running -= 1
                self.finished.extend(request.phonemes for request in requests)

    @staticmethod
    def _tone(request: SpeechRequest) -> Speech:
        per_phoneme = int(0.1 * RATE / request.speed)
        audio = np.full(len(request.phonemes) * per_phoneme, 0.1, dtype=np.float32)
        bounds = np.arange(len(request.phonemes) + 1, dtype=np.int64) * per_phoneme
        return Speech(audio, bounds)


def identity_phonemizers(codes: Collection[str]) -> Mapping[str, Phonemize]:
    return {"a": lambda text: text}


async def started(
    model: StandInModel,
    max_concurrent: int = 1,
    budgets: ChunkBudgets = PACKED,
    lookahead: int = 1,
    batching: BatchPolicy | None = None,
) -> EngineManager:
    manager = EngineManager(
        model,
        identity_phonemizers,
        budgets,
        max_concurrent=max_concurrent,
        lookahead_chunks=lookahead,
        warm_up=False,
        batching=batching,
    )
    await manager.start()
    return manager


async def collect(manager: EngineManager, text: str) -> list[GeneratedChunk]:
    return [chunk async for chunk in manager.stream(text, VOICE, 1.0, SynthesisCancelled())]


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.005)


async def drain(model: StandInModel, *listeners: Listener, step: float = 0.01) -> None:
    """Let the gated model's calls finish one by one until every listener's stream has ended."""
    while not all(listener.task.done() for listener in listeners):
        model.finish()
        await asyncio.sleep(step)
    await asyncio.gather(*(listener.task for listener in listeners))


class Listener:
    """A caller reading one stream in a task of its own, as the servicer does."""

    def __init__(self, manager: EngineManager, text: str) -> None:
        self.cancelled = SynthesisCancelled()
        self.chunks: list[GeneratedChunk] = []
        self._stream: AsyncGenerator[GeneratedChunk, None] = manager.stream(
            text, VOICE, 1.0, self.cancelled
        )
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for chunk in self._stream:
            self.chunks.append(chunk)

    async def hang_up(self) -> None:
        """What the RPC's end does: the flag, then the handler's generator closed."""
        self.cancelled.set()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self._stream.aclose()


async def test_chunks_arrive_in_order_and_the_last_covers_the_text() -> None:
    manager = await started(StandInModel())
    chunks = await collect(manager, SENTENCES)
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    assert [chunk.is_last for chunk in chunks][-1] and not any(c.is_last for c in chunks[:-1])
    assert chunks[-1].text_end == len(SENTENCES)
    assert manager.catalog.resolve("af_sky") == VOICE
    await manager.close()


async def test_first_chunks_of_new_streams_run_before_later_chunks_of_older_ones() -> None:
    model = StandInModel(gated=True)
    manager = await started(model, budgets=ONE_CLAUSE_EACH)
    older = Listener(manager, "Alpha first clause, alpha second clause, alpha third clause.")
    await until(lambda: model.calls == 1)
    middle = Listener(manager, "Bravo first clause, bravo second clause, bravo third clause.")
    model.finish()  # alpha's first: bravo's first is waiting, alpha's second comes after it
    await until(lambda: model.calls == 2)
    await until(lambda: len(older.chunks) == 1)
    await asyncio.sleep(0.05)  # alpha's second chunk is planned and waiting by now
    newest = Listener(manager, "Charlie first clause, charlie second clause.")
    await asyncio.sleep(0.05)
    # Slowly: each stream's next call is planned and waiting before the running one ends.
    await drain(model, older, middle, newest, step=0.1)
    assert model.started == [
        "Alpha first clause,",
        "Bravo first clause,",
        # Charlie's first, though alpha's second was submitted before it.
        "Charlie first clause,",
        # Then the call waiting longest: streams take turns.
        "alpha second clause,",
        "bravo second clause,",
        "charlie second clause.",
        "alpha third clause.",
        "bravo third clause.",
    ]
    await manager.close()


async def test_each_stream_keeps_its_order_whatever_the_interleaving() -> None:
    model = StandInModel(delay=0.002)
    manager = await started(model, max_concurrent=3, budgets=ONE_CLAUSE_EACH)
    clauses = [[f"s{n} one,", f"s{n} two,", f"s{n} three,", f"s{n} four."] for n in range(6)]
    results = await asyncio.gather(*(collect(manager, " ".join(text)) for text in clauses))
    for text, chunks in zip(clauses, results, strict=True):
        assert [chunk.index for chunk in chunks] == list(range(4))
        assert [chunk.text_end for chunk in chunks] == sorted(chunk.text_end for chunk in chunks)
        stream = text[0].split()[0] + " "
        assert [call for call in model.started if call.startswith(stream)] == text
    await manager.close()


async def test_a_hung_up_stream_gets_no_model_call_after_the_one_in_flight() -> None:
    model = StandInModel(gated=True)
    manager = await started(model, budgets=ONE_CLAUSE_EACH)
    abandoned = Listener(manager, SENTENCES)
    await until(lambda: model.calls == 1)
    model.finish()
    await until(lambda: len(abandoned.chunks) == 1 and model.calls == 2)  # its second in flight
    await abandoned.hang_up()
    newcomer = Listener(manager, "Next one, please.")
    await asyncio.sleep(0.05)
    # The call in flight ends; nothing more of the abandoned stream starts, then or later.
    await drain(model, newcomer)
    await asyncio.sleep(0.1)
    assert model.started == [
        "Sentence number 0 is here.",
        "Sentence number 1 is here.",
        "Next one,",
        "please.",
    ]
    await manager.close()


async def test_a_call_waiting_for_a_worker_is_dropped_when_its_stream_is_cancelled() -> None:
    model = StandInModel(gated=True)
    manager = await started(model, budgets=ONE_CLAUSE_EACH)
    busy = Listener(manager, "Holding the only worker.")
    await until(lambda: model.calls == 1)
    waiting = Listener(manager, "Never spoken at all.")
    await asyncio.sleep(0.05)  # its first call waits for the worker
    waiting.cancelled.set()  # the RPC ended: the flag alone, before the handler is closed
    model.finish()
    await busy.task
    await asyncio.sleep(0.05)
    assert model.started == ["Holding the only worker."]
    await waiting.hang_up()
    await manager.close()


async def test_the_model_runs_at_most_lookahead_chunks_ahead_of_a_slow_consumer() -> None:
    for lookahead in (1, 3):
        model = StandInModel()
        manager = await started(model, budgets=ONE_CLAUSE_EACH, lookahead=lookahead)
        stream = manager.stream(SENTENCES, VOICE, 1.0, SynthesisCancelled())
        await anext(stream)
        await asyncio.sleep(0.2)  # a slow client, still sending the first: the model waits
        assert model.calls == lookahead
        await anext(stream)  # back for more: the first is sent
        await asyncio.sleep(0.1)
        assert model.calls == 1 + lookahead
        await stream.aclose()
        await manager.close()


async def test_the_next_call_waits_until_the_caller_has_sent_the_chunk_before() -> None:
    model = StandInModel()
    manager = await started(model, budgets=ONE_CLAUSE_EACH)
    stream = manager.stream(SENTENCES, VOICE, 1.0, SynthesisCancelled())
    await anext(stream)
    await asyncio.sleep(0.1)  # encoding and sending it: the model must not compete
    assert model.calls == 1
    await anext(stream)
    assert model.calls == 2
    await stream.aclose()
    await manager.close()


async def test_model_calls_at_once_are_bounded_by_the_setting() -> None:
    model = StandInModel(delay=0.03)
    manager = await started(model, max_concurrent=2)
    await asyncio.gather(*(collect(manager, "One. Two. Three.") for _ in range(5)))
    assert model.most_at_once == 2
    await manager.close()


async def test_a_model_failure_reaches_the_caller() -> None:
    manager = await started(StandInModel(fail_on_call=2), budgets=ONE_CLAUSE_EACH)
    with pytest.raises(RuntimeError, match="the model broke"):
        await collect(manager, SENTENCES)
    await manager.close()


async def test_seams_are_trimmed_and_reported_on_every_chunk() -> None:
    class PaddedModel(StandInModel):
        """Kokoro's shape: 0.3 s of silence, the sound, 0.45 s of silence."""

        def generate(self, phonemes: str, voice: VoiceMix, speed: float) -> Speech:
            sound = super().generate(phonemes, voice, speed)
            padded = np.concatenate(
                [np.zeros(7_200, np.float32), sound.audio, np.zeros(10_800, np.float32)]
            )
            return Speech(padded, sound.phoneme_bounds + 7_200)

    manager = await started(PaddedModel(), budgets=ONE_CLAUSE_EACH)
    chunks = await collect(manager, "First clause here, second clause here, third clause here.")
    assert len(chunks) == 3
    # The stream's own start and end are left alone; every seam is cut down.
    assert chunks[0].trimmed_head_samples == 0 and chunks[-1].trimmed_tail_samples == 0
    assert all(chunk.trimmed_tail_samples > 0 for chunk in chunks[:-1])
    assert all(chunk.trimmed_head_samples > 0 for chunk in chunks[1:])
    # What was cut and what is left add up to the model's own output.
    model_lengths = [
        len(chunk.audio) + chunk.trimmed_head_samples + chunk.trimmed_tail_samples
        for chunk in chunks
    ]
    assert model_lengths == [
        7_200 + int(len(clause) * 0.1 * RATE) + 10_800
        for clause in ("First clause here,", "second clause here,", "third clause here.")
    ]
    await manager.close()


async def _settled(before: Exposition, *gauges: str) -> Exposition:
    """A scrape once every gauge in `gauges` is back where it was."""
    for _ in range(200):
        after = scrape()
        if all(after.delta(before, gauge) == 0 for gauge in gauges):
            return after
        await asyncio.sleep(0.01)
    return after


async def test_running_and_waiting_calls_and_every_model_call_are_measured() -> None:
    model = StandInModel(gated=True)
    manager = await started(model, max_concurrent=1, budgets=ONE_CLAUSE_EACH)
    before = scrape()
    first = Listener(manager, "Speaking now, and more.")
    await until(lambda: model.calls == 1)
    second = Listener(manager, "Waiting for the worker.")
    await asyncio.sleep(0.05)

    during = scrape()
    assert during.total("kokoropay_synth_stream_capacity") == 1
    assert during.delta(before, "kokoropay_synth_active_streams") == 1
    assert during.delta(before, "kokoropay_synth_queued_streams") == 1

    await first.hang_up()
    await drain(model, second)
    after = await _settled(
        before, "kokoropay_synth_active_streams", "kokoropay_synth_queued_streams"
    )
    assert after.delta(before, "kokoropay_synth_active_streams") == 0
    assert after.delta(before, "kokoropay_synth_queued_streams") == 0
    calls = model.calls
    assert calls == 2  # the hung-up stream's first, the other's one chunk
    assert after.delta(before, "kokoropay_synth_model_call_seconds_count") == calls
    assert after.delta(before, "kokoropay_synth_batch_size_sum") == calls  # one chunk per call
    assert after.delta(before, "kokoropay_synth_real_time_factor_count") == calls
    assert after.delta(before, "kokoropay_synth_audio_seconds_total") > 0
    await manager.close()


# Batching: a worker gathers waiting calls into one model call (engine/scheduler.py).
ROOMY = BatchPolicy(max_phonemes=10_000, wait_seconds=0.05)


async def test_streams_that_start_together_are_spoken_in_one_batch() -> None:
    model = StandInModel(gated=True)
    manager = await started(model, budgets=ONE_CLAUSE_EACH, batching=ROOMY)
    texts = [f"Stream {name} first, stream {name} second." for name in ("one", "two", "three")]
    listeners = [Listener(manager, text) for text in texts]
    await until(lambda: len(model.batches) == 1)
    # The worker waited for the others' first chunks rather than speaking the first alone.
    assert sorted(model.batches[0]) == sorted(text.split(", ")[0] + "," for text in texts)
    await drain(model, *listeners)
    # Then the second chunks, together again; each stream heard its own, in order.
    assert sorted(model.batches[1]) == sorted(text.split(", ")[1] for text in texts)
    for listener, text in zip(listeners, texts, strict=True):
        assert [chunk.text_end for chunk in listener.chunks] == [text.index(",") + 1, len(text)]
        assert [len(chunk.audio) for chunk in listener.chunks] == [
            # The stand-in speaks 0.1 s per phoneme: each chunk is its own clause's audio.
            int(len(clause) * 0.1 * RATE)
            for clause in (text.split(", ")[0] + ",", text.split(", ")[1])
        ]
    await manager.close()


async def test_a_batch_keeps_within_its_phoneme_budget() -> None:
    model = StandInModel(delay=0.01)
    # Room for two of these clauses (19-21 phonemes, and the two boundary tokens) per call.
    policy = BatchPolicy(max_phonemes=2 * 23, wait_seconds=0.02)
    manager = await started(model, budgets=ONE_CLAUSE_EACH, batching=policy)
    texts = [f"Stream {n} clause one, stream {n} clause two." for n in range(5)]
    results = await asyncio.gather(*(collect(manager, text) for text in texts))
    assert all(len(chunks) == 2 for chunks in results)
    assert max(len(batch) for batch in model.batches) == 2
    for batch in model.batches:
        assert len(batch) * max(len(phonemes) + 2 for phonemes in batch) <= policy.max_phonemes
    assert sorted(model.started) == sorted(
        clause for text in texts for clause in (text[: text.index(",") + 1], text.split(", ")[1])
    )
    await manager.close()


async def test_a_batch_takes_new_streams_first_chunks_before_older_later_ones() -> None:
    model = StandInModel(gated=True)
    policy = BatchPolicy(max_phonemes=10_000, wait_seconds=0.0, max_calls=2)
    manager = await started(model, budgets=ONE_CLAUSE_EACH, batching=policy)
    older = Listener(manager, "Alpha first clause, alpha second clause.")
    await until(lambda: model.calls == 1)
    xray = Listener(manager, "Xray first clause, xray second clause.")
    await asyncio.sleep(0.05)
    model.finish()  # alpha's first; xray's first runs, and alpha's second waits behind it
    await until(lambda: model.calls == 2)
    await asyncio.sleep(0.05)
    newer = [Listener(manager, f"{name} first clause, {name} second.") for name in ("Bravo", "Eve")]
    await asyncio.sleep(0.05)
    # Xray's first ends: alpha's second has waited longest, but two first chunks go before it.
    await drain(model, older, xray, *newer, step=0.05)
    assert model.batches[:4] == [
        ["Alpha first clause,"],
        ["Xray first clause,"],
        ["Bravo first clause,", "Eve first clause,"],
        ["alpha second clause.", "xray second clause."],
    ]
    await manager.close()


async def test_a_full_batch_does_not_wait_out_the_window() -> None:
    model = StandInModel()
    # A window far longer than the test: only a full batch starts before it ends.
    policy = BatchPolicy(max_phonemes=10_000, wait_seconds=60.0, max_calls=2)
    manager = await started(model, budgets=ONE_CLAUSE_EACH, batching=policy)
    texts = ("One clause here.", "Two clause here.")
    both = asyncio.gather(*(collect(manager, text) for text in texts))
    chunks = await asyncio.wait_for(both, timeout=10)
    assert [len(stream) for stream in chunks] == [1, 1]
    assert [sorted(batch) for batch in model.batches] == [list(texts)]
    await manager.close()


async def test_a_call_over_the_batch_budget_runs_alone() -> None:
    model = StandInModel()
    policy = BatchPolicy(max_phonemes=20, wait_seconds=0.01)
    manager = await started(model, budgets=ONE_CLAUSE_EACH, batching=policy)
    text = "A clause far longer than the batch's whole budget of phonemes."
    (chunk,) = await collect(manager, text)
    assert chunk.text_end == len(text) and model.batches == [[text]]
    await manager.close()


async def test_a_stream_that_hangs_up_leaves_the_batch_and_the_others_are_spoken() -> None:
    model = StandInModel(gated=True)
    manager = await started(model, budgets=ONE_CLAUSE_EACH, batching=ROOMY)
    busy = Listener(manager, "Holding the worker, for a while.")
    await until(lambda: model.calls == 1)
    staying = [Listener(manager, f"{name} stays here, to the end.") for name in ("Kim", "Lee")]
    leaving = Listener(manager, "Max leaves now, before a word.")
    await asyncio.sleep(0.05)  # their first chunks wait behind the running call
    await leaving.hang_up()
    await drain(model, busy, *staying)
    assert not any(phonemes.startswith("Max") for phonemes in model.started)
    # The call after the one running gathered everything waiting but the stream that left.
    assert sorted(model.batches[1]) == ["Kim stays here,", "Lee stays here,", "for a while."]
    assert all(len(listener.chunks) == 2 for listener in staying)
    assert leaving.chunks == []
    await manager.close()


async def test_batched_calls_are_measured_once_per_model_call() -> None:
    model = StandInModel(gated=True)
    manager = await started(model, budgets=ONE_CLAUSE_EACH, batching=ROOMY)
    before = scrape()
    listeners = [Listener(manager, f"Stream {n} speaks once.") for n in range(4)]
    await until(lambda: len(model.batches) == 1)
    during = scrape()
    assert during.delta(before, "kokoropay_synth_active_streams") == 4
    await drain(model, *listeners)
    after = await _settled(
        before, "kokoropay_synth_active_streams", "kokoropay_synth_queued_streams"
    )
    assert [len(batch) for batch in model.batches] == [4]
    assert after.delta(before, "kokoropay_synth_model_call_seconds_count") == 1
    assert after.delta(before, "kokoropay_synth_batch_size_sum") == 4
    await manager.close()


class FailingBatches(StandInModel):
    """Every batched call fails; alone, only the chunk saying "boom" does."""

    def generate_batch(self, requests: Sequence[SpeechRequest]) -> list[Speech]:
        raise RuntimeError("CUDA out of memory")

    def generate(self, phonemes: str, voice: VoiceMix, speed: float) -> Speech:
        if "boom" in phonemes:
            raise RuntimeError("the model broke on boom")
        return super().generate(phonemes, voice, speed)


async def test_a_failed_batch_is_spoken_one_by_one_and_only_the_failing_stream_fails() -> None:
    model = FailingBatches()
    manager = await started(model, budgets=ONE_CLAUSE_EACH, batching=ROOMY)
    results = await asyncio.gather(
        collect(manager, "Fine words here."),
        collect(manager, "A boom here."),
        collect(manager, "More fine words."),
        return_exceptions=True,
    )
    fine, failed, more = results
    assert isinstance(failed, RuntimeError) and "boom" in str(failed)
    assert isinstance(fine, list) and isinstance(more, list)
    assert [chunk.text_end for chunk in fine] == [len("Fine words here.")]
    assert [chunk.text_end for chunk in more] == [len("More fine words.")]
    await manager.close()


async def test_a_call_cancelled_after_its_batch_was_taken_never_reaches_the_model() -> None:
    """The flag is read again in the worker, right before the model runs."""
    model = StandInModel()
    scheduler = CallScheduler(model, workers=1, batching=ROOMY)
    staying, leaving = SynthesisCancelled(), SynthesisCancelled()
    calls = [
        ModelCall("Staying here.", VOICE, 1.0, staying, first=True),
        ModelCall("Leaving now.", VOICE, 1.0, leaving, first=True),
    ]
    leaving.set()  # between the worker taking the batch and the model call
    spoken = await asyncio.to_thread(scheduler._speak, calls)
    assert model.batches == [["Staying here."]]
    assert isinstance(spoken[0], Speech) and spoken[1] is None
    await scheduler.close()
