"""Kokoro-82M on torch: KModel from local files, voices from their .pt tensors.

Text chunking and G2P happen before this; the backend only maps phonemes and a voice mix to
audio, as `KPipeline.infer` does, so one model serves every language. It also says where each
phoneme is spoken, from the durations the model predicted for it (`pred_dur`, in frames of
audio, already divided by the speed), as `KPipeline.join_timestamps` reads them.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch

from services.synth import metrics
from services.synth.engine.backend import Speech, SpeechRequest
from services.synth.engine.batched_forward import BatchItem, forward_batch
from services.synth.engine.model_files import WeightsPaths
from services.synth.models import HUB_REPO_ID, SAMPLE_RATE
from services.synth.voices import VoiceMix

_log = logging.getLogger("synth.engine")

# Blended voice tensors kept, so a popular blend is mixed once.
_BLEND_CACHE_SIZE = 64


def choose_device(requested: Literal["auto", "cpu", "cuda"]) -> str:
    """auto: CUDA when torch sees a GPU. Asking for CUDA without one is a start-up error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("SYNTH_DEVICE=cuda but torch sees no CUDA device")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


class KokoroBackend:
    sample_rate = SAMPLE_RATE

    def __init__(self, weights: WeightsPaths, device: str, torch_threads: int = 0) -> None:
        self._weights = weights
        self._device = device
        self._torch_threads = torch_threads
        self._model: torch.nn.Module | None = None
        # Each phoneme the model has a symbol for, and the symbol (KModel.vocab).
        self._token_ids: dict[str, int] = {}
        self._voices: dict[str, torch.Tensor] = {}
        self._blends: OrderedDict[tuple[tuple[str, float], ...], torch.Tensor] = OrderedDict()
        self._blends_lock = threading.Lock()

    @property
    def device(self) -> str:
        return self._device

    @property
    def voice_names(self) -> list[str]:
        return self._weights.voice_names

    def load(self) -> None:
        # Only local files: a hub lookup here would hang a pod without network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from kokoro import KModel
        from loguru import logger

        logger.disable("kokoro")
        if self._torch_threads:
            torch.set_num_threads(self._torch_threads)
        with warnings.catch_warnings():
            # KModel's own construction warns about its LSTM dropout and torch's weight_norm
            # deprecation: nothing an operator can act on.
            warnings.simplefilter("ignore", (UserWarning, FutureWarning))
            model = KModel(
                repo_id=HUB_REPO_ID,
                config=str(self._weights.config_path),
                model=str(self._weights.model_path),
            )
        self._model = model.to(self._device).eval()
        self._token_ids = dict(model.vocab)
        for name in self._weights.voice_names:
            pack = torch.load(self._weights.voice_path(name), map_location="cpu", weights_only=True)
            self._voices[name] = pack.to(self._device)
        if self._device.startswith("cuda"):
            device = torch.device(self._device)
            metrics.watch_device_memory(
                lambda: torch.cuda.memory_allocated(device),
                lambda: torch.cuda.memory_reserved(device),
            )
        _log.info(
            "model loaded",
            extra={
                "device": self._device,
                "voices": len(self._voices),
                "torch_threads": torch.get_num_threads(),
                "precision": self._weights.manifest.precision,
            },
        )

    def generate(self, phonemes: str, voice: VoiceMix, speed: float) -> Speech:
        if self._model is None:
            raise RuntimeError("generate() before load()")
        pack = self._pack(voice)
        with torch.inference_mode():
            # The voice holds one style per input length: pick the one for this chunk.
            output = self._model(phonemes, pack[len(phonemes) - 1], speed, return_output=True)
        audio = np.asarray(output.audio.float().numpy(), dtype=np.float32).reshape(-1)
        frames = output.pred_dur.numpy().reshape(-1)
        return Speech(audio, self._phoneme_bounds(phonemes, frames, len(audio)))

    def generate_batch(self, requests: Sequence[SpeechRequest]) -> list[Speech]:
        """One padded model call (engine/batched_forward.py); each input's audio and durations
        as `generate` gives them, but for the vocoder's random draws."""
        if self._model is None:
            raise RuntimeError("generate_batch() before load()")
        items = [
            BatchItem(
                self._input_ids(request.phonemes),
                self._pack(request.voice)[len(request.phonemes) - 1],
                request.speed,
            )
            for request in requests
        ]
        outputs = forward_batch(self._model, items)
        speeches = []
        for request, output in zip(requests, outputs, strict=True):
            audio = np.asarray(output.audio.float().numpy(), dtype=np.float32).reshape(-1)
            frames = output.pred_dur.numpy().reshape(-1)
            speeches.append(
                Speech(audio, self._phoneme_bounds(request.phonemes, frames, len(audio)))
            )
        return speeches

    def _input_ids(self, phonemes: str) -> torch.Tensor:
        """The model's tokens for `phonemes`, between its boundary token 0, as KModel.forward
        builds them (phonemes it has no symbol for dropped)."""
        ids = [self._token_ids[phoneme] for phoneme in phonemes if phoneme in self._token_ids]
        return torch.tensor([0, *ids, 0], dtype=torch.long)

    def _phoneme_bounds(
        self, phonemes: str, frames: npt.NDArray[np.int64], samples: int
    ) -> npt.NDArray[np.int64]:
        """Where each phoneme starts and the last ends, in samples. `frames` has one duration
        per symbol the model read: a boundary token, then the phonemes it has a symbol for
        (KModel.forward drops the others), then another boundary token."""
        known = np.array([phoneme in self._token_ids for phoneme in phonemes], dtype=bool)
        per_phoneme = np.zeros(len(phonemes), dtype=np.int64)
        per_phoneme[known] = frames[1 : 1 + int(known.sum())]
        # Every frame is the same number of samples (600 at 24 kHz: the decoder's upsampling).
        frame_samples = samples // max(int(frames.sum()), 1)
        starts = np.concatenate(([0], np.cumsum(per_phoneme))) + int(frames[0])
        return np.asarray(starts * frame_samples, dtype=np.int64)

    def _pack(self, voice: VoiceMix) -> torch.Tensor:
        if len(voice.components) == 1:
            return self._voices[voice.components[0][0]]
        key = voice.components
        with self._blends_lock:
            cached = self._blends.get(key)
            if cached is not None:
                self._blends.move_to_end(key)
                return cached
        blend = sum(
            (self._voices[name] * weight for name, weight in voice.components),
            start=torch.zeros_like(self._voices[voice.components[0][0]]),
        )
        with self._blends_lock:
            self._blends[key] = blend
            while len(self._blends) > _BLEND_CACHE_SIZE:
                self._blends.popitem(last=False)
        return blend
