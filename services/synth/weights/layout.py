"""hexgrad/Kokoro-82M's folder layout, which every source is brought to, and its paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.synth.weights.manifest import Manifest

CONFIG_FILE = "config.json"
MODEL_FILE = "kokoro-v1_0.pth"
VOICES_DIR = "voices"
VOICE_SUFFIX = ".pt"
MANIFEST_FILE = "manifest.json"
ARTIFACTS_DIR = "_artifacts"  # raw registry downloads, kept so a re-run fetches nothing


@dataclass(frozen=True)
class WeightsPaths:
    """Where KModel's config and weights and KPipeline's voices are, and where they came from.

    Load without touching the model hub:
        KModel(repo_id="hexgrad/Kokoro-82M", config=str(paths.config_path),
               model=str(paths.model_path))
        pipeline.load_voice(str(paths.voice_path("af_heart")))
    """

    root: Path
    config_path: Path
    model_path: Path
    voices_dir: Path
    manifest: Manifest

    @property
    def voice_names(self) -> list[str]:
        return sorted(path.stem for path in self.voices_dir.glob(f"*{VOICE_SUFFIX}"))

    def voice_path(self, name: str) -> Path:
        return self.voices_dir / f"{name}{VOICE_SUFFIX}"


def weights_paths(root: Path, manifest: Manifest) -> WeightsPaths:
    return WeightsPaths(
        root=root,
        config_path=root / CONFIG_FILE,
        model_path=root / MODEL_FILE,
        voices_dir=root / VOICES_DIR,
        manifest=manifest,
    )


def missing_from_layout(root: Path) -> list[str]:
    """What a folder lacks to be used as is: config.json, kokoro-v1_0.pth, voices/*.pt."""
    if not root.is_dir():
        return [f"the folder {root}"]
    missing = [name for name in (CONFIG_FILE, MODEL_FILE) if not (root / name).is_file()]
    if not any((root / VOICES_DIR).glob(f"*{VOICE_SUFFIX}")):
        missing.append(f"{VOICES_DIR}/*{VOICE_SUFFIX}")
    return missing


def layout_files(root: Path) -> list[str]:
    """The files that make up the weights, relative to `root` (manifest keys)."""
    voices = sorted((root / VOICES_DIR).glob(f"*{VOICE_SUFFIX}"))
    return [CONFIG_FILE, MODEL_FILE, *(f"{VOICES_DIR}/{voice.name}" for voice in voices)]
