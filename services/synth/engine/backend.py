"""What the manager needs from a model: load once, warm up, turn phonemes into audio."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from services.synth.voices import VoiceMix

Samples = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Speech:
    """A model call's audio, and where in it each phoneme is spoken."""

    audio: Samples
    # len(phonemes) + 1 sample offsets into `audio`: phoneme k (the k-th character of the
    # input) is spoken from phoneme_bounds[k] to phoneme_bounds[k + 1]; a character the model
    # has no symbol for takes no time. Empty when the model does not say.
    phoneme_bounds: npt.NDArray[np.int64]


@dataclass(frozen=True)
class SpeechRequest:
    """One input of a batched model call."""

    phonemes: str
    voice: VoiceMix
    speed: float


class SynthesisBackend(Protocol):
    """A speech model. `generate` may be called from several worker threads at once."""

    sample_rate: int

    @property
    def device(self) -> str: ...

    @property
    def voice_names(self) -> list[str]:
        """The built-in voices it can speak with."""
        ...

    def load(self) -> None:
        """Load the weights and voices; called once, before anything else."""
        ...

    def generate(self, phonemes: str, voice: VoiceMix, speed: float) -> Speech:
        """Mono float32 audio for at most the model's limit of phonemes, at `speed`, with
        where each phoneme is spoken."""
        ...

    def generate_batch(self, requests: Sequence[SpeechRequest]) -> list[Speech]:
        """Several inputs in one padded model call: each as `generate` would speak it (up to
        the vocoder's random draws), in the order given."""
        ...
