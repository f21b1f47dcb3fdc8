"""Joining chunks without a gap or a click: each seam's silence cut down to a natural pause.

Kokoro pads every chunk with silence, about 0.3 s before the first sound and 0.45 s after the
last, so two chunks played back to back leave most of a second of silence where a speaker would
pause for a fraction of that. Inside a chunk the model pauses about 0.4 s at a sentence's end
and well under 0.1 s at a comma; a seam gets the same (`pause_after`): the chunk after it keeps
`KEPT_HEAD_SECONDS` of its leading silence, the chunk before keeps the rest of the pause from
its trailing silence. Cuts fall in silence, and the kept silence fades to exactly zero over
`FADE_SECONDS` at each cut, so the samples either side of a seam meet at zero: no step,
whatever noise floor the vocoder left there. Nothing is added: a chunk with less silence than
the pause keeps what it has.

The stream's first head and its last tail are no seam and stay as the model made them (the
MP3 and AAC encoders skip their priming in that leading silence: audio/encoders.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.float32]

# Frames of 5 ms whose RMS is under -50 dBFS are silence: Kokoro's padding sits below -70 dBFS,
# and the softest onsets (a breathy "h", an "f") are above -50.
FRAME_SECONDS = 0.005
SILENCE_RMS = 10 ** (-50 / 20)
# Silence kept before a chunk's first sound: room for an onset's ramp under the threshold.
KEPT_HEAD_SECONDS = 0.03
# The pause at a seam, as the model makes it inside a chunk.
SENTENCE_PAUSE_SECONDS = 0.4
CLAUSE_PAUSE_SECONDS = 0.12
FADE_SECONDS = 0.005


@dataclass(frozen=True)
class Trimmed:
    audio: Samples
    # Samples cut from the start and from the end of the audio given.
    head: int
    tail: int


def pause_after(ends_sentence: bool) -> float:
    """The silence a seam keeps after a chunk ending at a sentence's end, or at a clause."""
    return SENTENCE_PAUSE_SECONDS if ends_sentence else CLAUSE_PAUSE_SECONDS


def trim_edges(audio: Samples, sample_rate: int, *, head: bool, pause: float | None) -> Trimmed:
    """`audio` cut down at the seams it has: before it (`head`), and after it when `pause` (the
    seconds of silence the seam should have in all) is given."""
    frame = max(1, round(FRAME_SECONDS * sample_rate))
    loud = np.flatnonzero(_frame_rms(audio, frame) > SILENCE_RMS)
    if not len(loud) or not (head or pause is not None):
        return Trimmed(audio, 0, 0)
    kept_head = round(KEPT_HEAD_SECONDS * sample_rate)
    start = max(0, int(loud[0]) * frame - kept_head) if head else 0
    end = len(audio)
    if pause is not None:
        kept_tail = max(0, round(pause * sample_rate) - kept_head)
        end = min(end, (int(loud[-1]) + 1) * frame + kept_tail)
    kept = audio[start:end].copy()
    fade = min(round(FADE_SECONDS * sample_rate), len(kept) // 2)
    ramp = (np.sin(np.linspace(0.0, np.pi / 2, fade)) ** 2).astype(np.float32)
    if start > 0:
        kept[:fade] *= ramp
    if end < len(audio):
        kept[len(kept) - fade :] *= ramp[::-1]
    return Trimmed(kept, start, len(audio) - end)


def _frame_rms(audio: Samples, frame: int) -> npt.NDArray[np.float64]:
    """RMS of each whole frame (a last partial frame is left out)."""
    count = len(audio) // frame
    frames = audio[: count * frame].reshape(count, frame).astype(np.float64)
    return np.sqrt((frames**2).mean(axis=1))
