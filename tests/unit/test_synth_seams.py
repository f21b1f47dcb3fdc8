"""Seams on synthetic chunks shaped like Kokoro's: silence, a voiced sound, silence."""

from __future__ import annotations

import numpy as np
import pytest

from services.synth.audio.seams import (
    CLAUSE_PAUSE_SECONDS,
    KEPT_HEAD_SECONDS,
    SENTENCE_PAUSE_SECONDS,
    pause_after,
    trim_edges,
)

RATE = 24_000


def chunk(lead: float, sound: float, trail: float, *, seed: int = 0) -> np.ndarray:
    """`lead` s of the vocoder's noise floor, `sound` s of a voiced tone, `trail` s of floor."""
    rng = np.random.default_rng(seed)
    floor = lambda seconds: (rng.standard_normal(int(seconds * RATE)) * 1e-5).astype(np.float32)  # noqa: E731
    t = np.arange(int(sound * RATE)) / RATE
    envelope = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.02)  # 20 ms attack and release
    voiced = (0.3 * envelope * np.sin(2 * np.pi * 180 * t + seed)).astype(np.float32)
    return np.concatenate([floor(lead), voiced, floor(trail)])


def silent_run(audio: np.ndarray, at: int, threshold: float = 10 ** (-50 / 20)) -> float:
    """Seconds of silence (5 ms frames under the threshold) around sample `at`."""
    frame = RATE // 200
    quiet = lambda i: np.sqrt(np.mean(audio[i : i + frame] ** 2)) < threshold  # noqa: E731
    start = at - at % frame
    before = start
    while before - frame >= 0 and quiet(before - frame):
        before -= frame
    after = start
    while after + frame <= len(audio) and quiet(after):
        after += frame
    return (after - before) / RATE


def test_a_seam_keeps_a_sentences_pause_and_leaves_the_rest_alone() -> None:
    audio = chunk(0.3, 1.0, 0.45)
    trimmed = trim_edges(audio, RATE, head=True, pause=SENTENCE_PAUSE_SECONDS)
    assert trimmed.head == pytest.approx((0.3 - KEPT_HEAD_SECONDS) * RATE, abs=RATE * 0.006)
    kept_tail = SENTENCE_PAUSE_SECONDS - KEPT_HEAD_SECONDS
    assert trimmed.tail == pytest.approx((0.45 - kept_tail) * RATE, abs=RATE * 0.006)
    assert len(trimmed.audio) + trimmed.head + trimmed.tail == len(audio)
    # The voiced part is untouched, sample for sample.
    np.testing.assert_array_equal(
        trimmed.audio[int(0.05 * RATE) : -int(0.4 * RATE)],
        audio[trimmed.head + int(0.05 * RATE) : len(audio) - trimmed.tail - int(0.4 * RATE)],
    )


def test_the_edges_of_the_stream_are_no_seam() -> None:
    audio = chunk(0.3, 0.5, 0.45)
    untouched = trim_edges(audio, RATE, head=False, pause=None)
    assert (untouched.head, untouched.tail) == (0, 0)
    assert untouched.audio is audio
    first = trim_edges(audio, RATE, head=False, pause=CLAUSE_PAUSE_SECONDS)
    assert first.head == 0 and first.tail > 0
    last = trim_edges(audio, RATE, head=True, pause=None)
    assert last.head > 0 and last.tail == 0


def test_silence_shorter_than_the_pause_is_kept_whole() -> None:
    audio = chunk(0.01, 0.5, 0.05)
    trimmed = trim_edges(audio, RATE, head=True, pause=SENTENCE_PAUSE_SECONDS)
    assert (trimmed.head, trimmed.tail) == (0, 0)
    assert len(trimmed.audio) == len(audio)


def test_nothing_but_silence_is_left_as_it_is() -> None:
    audio = np.zeros(RATE, dtype=np.float32)
    assert trim_edges(audio, RATE, head=True, pause=CLAUSE_PAUSE_SECONDS).audio is audio
    assert len(trim_edges(np.zeros(0, np.float32), RATE, head=True, pause=0.1).audio) == 0


@pytest.mark.parametrize("ends_sentence", [True, False])
def test_joined_chunks_meet_without_a_step_and_pause_as_the_model_does(
    ends_sentence: bool,
) -> None:
    pieces = [chunk(0.3, 0.8, 0.45, seed=n) for n in range(4)]
    pause = pause_after(ends_sentence)
    kept = [
        trim_edges(piece, RATE, head=n > 0, pause=None if n == 3 else pause).audio
        for n, piece in enumerate(pieces)
    ]
    joined = np.concatenate(kept)
    voiced = joined[np.abs(joined) > 0.01]
    typical_step = float(np.median(np.abs(np.diff(voiced))))
    seams = np.cumsum([len(piece) for piece in kept])[:-1]
    for seam in seams:
        # The samples either side of the seam: both faded to zero.
        assert abs(float(joined[seam]) - float(joined[seam - 1])) < 0.01 * typical_step
        assert silent_run(joined, seam) == pytest.approx(pause, abs=0.03)
    # Untrimmed, the same seams would be 0.75 s of silence each.
    assert silent_run(np.concatenate(pieces), len(pieces[0])) > 0.7
