"""Measuring a seam between two chunks in the audio a caller hears."""

from __future__ import annotations

import numpy as np

RATE = 24_000


def silence_around(pcm: np.ndarray, at: int, frame: int = RATE // 200) -> float:
    """Seconds of silence (5 ms frames under -50 dBFS) reaching either side of sample `at`."""

    def quiet(start: int) -> bool:
        return float(np.sqrt(np.mean(pcm[start : start + frame] ** 2))) < 10 ** (-50 / 20)

    before = after = at - at % frame
    while before >= frame and quiet(before - frame):
        before -= frame
    while after + frame <= len(pcm) and quiet(after):
        after += frame
    return (after - before) / RATE
