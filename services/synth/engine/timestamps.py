"""When each word of the input is spoken, from the model's phoneme durations.

Two steps, because the stream's timeline is the servicer's:
- `time_words`, by the stream's producer right after the model call: each word's voiced phonemes
  (text/words.py) become samples of the chunk's audio as the model made it, from where the
  backend says each phoneme is spoken (`Speech.phoneme_bounds`: Kokoro's `pred_dur`, frames of
  600 samples, already divided by the speed; a blend's durations are its own). The durations
  say which frames speak which word; the audio says where sound starts and stops inside them.
  Kokoro gives a phrase's last phoneme the pause after it too (up to 300 ms of silence), and a
  word's sound starts a frame or two before its first phoneme's frames, so each word is fitted
  to the sound in its frames: it ends at its last sound, and starts at its first, looking back
  up to 100 ms but never into the word before;
- `place_words`, in the servicer as the chunk is sent: samples of the chunk become seconds from
  the start of the whole stream, after the audio sent before it. Audio trimmed from the chunk's
  head moves its words earlier by as much; a time that falls into trimmed audio (head or tail)
  is clamped to the audio kept, so times never leave their chunk and rise through the stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.synth.engine.backend import Speech
from services.synth.text.split import Span
from services.synth.text.words import WordPhonemes

# A sample quieter than this (about -50 dBFS) is silence: Kokoro's pauses stay below 1e-3.
_SILENCE = 0.003
# How long before its first phoneme's frames a word's sound may start.
_LEAD_IN_SECONDS = 0.1


@dataclass(frozen=True)
class TimedWord:
    """A word of the input and where it is spoken in its chunk's audio, in samples."""

    span: Span
    start: int
    end: int


@dataclass(frozen=True)
class ChunkWords:
    """A chunk's words, timed in the audio the model made for it (before any trimming)."""

    words: tuple[TimedWord, ...]
    # The length of that audio, in samples.
    model_samples: int


@dataclass(frozen=True)
class PlacedWord:
    """A word of the input and when it is spoken, in seconds from the start of the stream."""

    span: Span
    start_seconds: float
    end_seconds: float


def time_words(words: Sequence[WordPhonemes], speech: Speech, sample_rate: int) -> ChunkWords:
    """Where each word's voiced phonemes are heard in `speech` (in order, never overlapping);
    no words if the backend does not say where its phonemes are."""
    bounds = speech.phoneme_bounds
    samples = len(speech.audio)
    if not len(bounds):
        return ChunkWords((), samples)
    last = len(bounds) - 1
    sounding = np.abs(speech.audio) > _SILENCE
    lead_in = int(_LEAD_IN_SECONDS * sample_rate)

    def at(index: int) -> int:
        return min(int(bounds[min(index, last)]), samples)

    timed: list[TimedWord] = []
    previous_end = 0
    for word in words:
        start, end = max(at(word.phonemes.start), previous_end), at(word.phonemes.end)
        if end > start:
            floor = max(previous_end, start - lead_in)
            heard = np.flatnonzero(sounding[floor:end])
            if len(heard):
                start, end = floor + int(heard[0]), floor + int(heard[-1]) + 1
        end = max(end, start)
        timed.append(TimedWord(word.span, start, end))
        previous_end = end
    return ChunkWords(tuple(timed), samples)


def place_words(
    chunk: ChunkWords,
    *,
    stream_offset_samples: int,
    sample_rate: int,
    trimmed_head_samples: int = 0,
    trimmed_tail_samples: int = 0,
) -> list[PlacedWord]:
    """The chunk's words in the stream's time: `stream_offset_samples` is the audio sent before
    the chunk; `trimmed_head_samples` and `trimmed_tail_samples` are the samples cut from the
    start and the end of the model's audio for it before it was sent."""
    kept = max(chunk.model_samples - trimmed_head_samples - trimmed_tail_samples, 0)

    def seconds(sample: int) -> float:
        in_kept = min(max(sample - trimmed_head_samples, 0), kept)
        return (stream_offset_samples + in_kept) / sample_rate

    return [PlacedWord(word.span, seconds(word.start), seconds(word.end)) for word in chunk.words]
