"""A randomly initialised Kokoro in hexgrad's layout: same shapes, same speed, noise for speech.

For timing where the real weights are not at hand (a GPU machine with only config.json):
`python -m bench.synth_bench --random-weights CONFIG_JSON`. Its manifest says "random-init" so
nothing that lists it can pass it off as the model.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

from services.synth.engine.manifest import Manifest, describe_files, write_manifest
from services.synth.engine.model_files import (
    CONFIG_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    VOICES_DIR,
    layout_files,
)
from services.synth.models import HUB_REPO_ID

RANDOM_PRECISION = "random-init (for timing only)"
_VOICE_SHAPE = (510, 1, 256)
_KMODEL_MODULES = ("bert", "bert_encoder", "predictor", "text_encoder", "decoder")


# Kokoro speaks about three 25 ms frames per phoneme; the duration head sums 50 sigmoids.
_FRAMES_PER_PHONEME = 3.0


def _speak_at_a_natural_rate(model: torch.nn.Module) -> None:
    """Random duration logits make every phoneme ~25 frames long (0.6 s), and the decoder's
    cost follows the audio's length: pin the durations near real speech so timings compare."""
    projection = model.get_submodule("predictor.duration_proj.linear_layer")
    assert isinstance(projection, torch.nn.Linear)
    max_duration = projection.out_features
    with torch.no_grad():
        projection.weight.mul_(1e-3)
        projection.bias.fill_(float(torch.logit(torch.tensor(_FRAMES_PER_PHONEME / max_duration))))


def write_random_weights(
    config_json: Path, destination: Path, voice_names: Iterable[str], seed: int = 0
) -> Path:
    """Fill `destination` with config.json, a random kokoro-v1_0.pth and random voices."""
    from kokoro import KModel

    torch.manual_seed(seed)
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config_json, destination / CONFIG_FILE)
    with tempfile.TemporaryDirectory() as scratch:
        empty = Path(scratch) / "empty.pth"
        torch.save({}, empty)
        # An empty state dict leaves KModel with torch's default initialisation.
        model = KModel(repo_id=HUB_REPO_ID, config=str(config_json), model=str(empty))
    _speak_at_a_natural_rate(model)
    state = {name: getattr(model, name).state_dict() for name in _KMODEL_MODULES}
    torch.save(state, destination / MODEL_FILE)
    voices = destination / VOICES_DIR
    voices.mkdir(exist_ok=True)
    for name in voice_names:
        torch.save(torch.randn(_VOICE_SHAPE) * 0.2, voices / f"{name}.pt")
    manifest = Manifest(
        source="local",
        precision=RANDOM_PRECISION,
        description="Kokoro-82M architecture with random weights",
        files=describe_files(destination, layout_files(destination), hashed=False),
    )
    write_manifest(destination / MANIFEST_FILE, manifest)
    return destination
