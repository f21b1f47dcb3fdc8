"""What the manager needs from a model: load once, warm up, turn phonemes into audio."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from services.synth.voices import VoiceMix

Samples = npt.NDArray[np.float32]


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

    def generate(self, phonemes: str, voice: VoiceMix, speed: float) -> Samples:
        """Mono float32 audio for at most the model's limit of phonemes."""
        ...
