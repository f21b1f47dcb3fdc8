"""The speech tests' yardstick (tests/support/asr.py): word error rate on normalized words, and
audio brought to what Whisper takes. No model is loaded here."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.asr import (
    WHISPER_SAMPLE_RATE,
    cardinal,
    normalize_words,
    to_whisper_input,
    word_error_rate,
    word_errors,
)


def test_case_punctuation_apostrophes_and_hyphens_are_not_errors() -> None:
    reference = "Don't stop; the well-known road — it's long."
    assert " ".join(normalize_words(reference)) == "dont stop the well known road its long"
    assert word_error_rate(reference, "dont stop. The well known road, it’s LONG!") == 0.0


@pytest.mark.parametrize(
    ("written", "spoken"),
    [
        ("7", "seven"),
        ("21", "twenty one"),
        ("1,205", "one thousand two hundred five"),
        ("2.5", "two point five"),
        ("21st", "twenty first"),
        ("12th", "twelfth"),
        ("40th", "fortieth"),
        ("50%", "fifty percent"),
    ],
)
def test_numbers_compare_as_words(written: str, spoken: str) -> None:
    assert " ".join(normalize_words(written)) == spoken


def test_cardinals() -> None:
    assert cardinal(0) == "zero"
    assert cardinal(110) == "one hundred ten"
    assert cardinal(3_000_017) == "three million seventeen"


def test_substitutions_deletions_and_insertions_each_count_once() -> None:
    reference = "the bread rose in the oven"
    assert word_errors(reference, "the bread rows in the oven") == (1, 6)
    assert word_errors(reference, "the bread rose in oven") == (1, 6)
    assert word_errors(reference, "the bread rose up in the oven") == (1, 6)
    assert word_errors(reference, "") == (6, 6)
    assert word_errors("", "") == (0, 0)
    assert word_error_rate(reference, "bread rows in a the oven") == pytest.approx(3 / 6)


def test_the_distance_is_the_minimal_alignment() -> None:
    # A shift by one word is a deletion and an insertion, not a substitution of every word.
    assert word_errors("a b c d e f", "b c d e f g") == (2, 6)
    assert word_errors("a b c", "x y z w") == (4, 3)


def test_audio_becomes_16_khz_mono_float32() -> None:
    seconds = 0.5
    time = np.arange(int(24_000 * seconds)) / 24_000
    tone = 0.5 * np.sin(2 * np.pi * 440 * time)
    stereo_int16 = (np.stack([tone, tone], axis=1) * 32767).astype(np.int16)
    resampled = to_whisper_input(stereo_int16, 24_000)
    assert resampled.dtype == np.float32 and resampled.ndim == 1
    assert len(resampled) == pytest.approx(WHISPER_SAMPLE_RATE * seconds, abs=16)
    # The tone survives: same loudness, 440 Hz still the strongest frequency.
    assert np.sqrt(np.mean(resampled**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)
    spectrum = np.abs(np.fft.rfft(resampled))
    assert np.argmax(spectrum) * WHISPER_SAMPLE_RATE / len(resampled) == pytest.approx(440, abs=4)
    assert to_whisper_input(tone.astype(np.float32)[:160], WHISPER_SAMPLE_RATE).shape == (160,)
