"""The weights folder the service loads: hexgrad's layout, and finding it without downloading.

Every source of weights is brought to hexgrad/Kokoro-82M's layout (config.json,
kokoro-v1_0.pth, voices/*.pt, and our manifest.json). The service uses `SYNTH_WEIGHTS_DIR` as
is when set, else `$KOKORO_WEIGHTS_DIR`, else what `make weights` resolved under
`.data/weights`; it never downloads. Resolving them (and downloading) is the job of `make weights`,
an offline tool in synth's `weights/` folder that builds on this module, never the reverse.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from services.synth.engine.manifest import Manifest, describe_files, file_problems, read_manifest
from services.synth.models import HUB_REPO_ID

CONFIG_FILE = "config.json"
MODEL_FILE = "kokoro-v1_0.pth"
VOICES_DIR = "voices"
VOICE_SUFFIX = ".pt"
MANIFEST_FILE = "manifest.json"

LOCAL_DIR_ENV = "KOKORO_WEIGHTS_DIR"
CACHE_DIR_ENV = "KOKORO_WEIGHTS_CACHE"
_REPO_ROOT = Path(__file__).resolve().parents[3]
LOCAL_PRECISION = "as supplied"


class WeightsError(RuntimeError):
    """Weights missing, unreachable or inconsistent.

    The message is one line that says what went wrong and what to do about it; the service
    and `make weights` print it as is, without a traceback.
    """


@dataclass(frozen=True)
class WeightsPaths:
    """Where KModel's config and weights and KPipeline's voices are, and where they came from.

    Load without touching the model hub:
        KModel(repo_id=HUB_REPO_ID, config=str(paths.config_path),
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


def default_cache_dir() -> Path:
    """`$KOKORO_WEIGHTS_CACHE`, else `.data/weights` at the repository root."""
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured) if configured else _REPO_ROOT / ".data" / "weights"


def local_dir() -> Path | None:
    """`$KOKORO_WEIGHTS_DIR`, a folder of weights to use as is, when set."""
    configured = os.environ.get(LOCAL_DIR_ENV)
    return Path(configured).expanduser().resolve() if configured else None


def require_layout(root: Path) -> None:
    """Raise WeightsError unless `$KOKORO_WEIGHTS_DIR` (`root`) holds the whole layout."""
    if not root.is_dir():
        raise WeightsError(f"{LOCAL_DIR_ENV}={root} is not a folder: fix or unset it")
    missing = missing_from_layout(root)
    if missing:
        raise WeightsError(
            f"{LOCAL_DIR_ENV}={root} lacks {', '.join(missing)}: point it at a folder with "
            f"{HUB_REPO_ID}'s config.json, kokoro-v1_0.pth and voices/*.pt, or unset it"
        )


def local_manifest(root: Path, *, hashed: bool) -> Manifest:
    """What a `$KOKORO_WEIGHTS_DIR` folder is: used as is, precision unknown."""
    return Manifest(
        source="local",
        precision=LOCAL_PRECISION,
        description=f"Kokoro-82M from {LOCAL_DIR_ENV}, used as is",
        files=describe_files(root, layout_files(root), hashed=hashed),
        root=str(root),
    )


def locate_weights(cache_dir: Path | None = None) -> WeightsPaths:
    """Weights resolved earlier by `make weights`, found without downloading or hashing.

    `$KOKORO_WEIGHTS_DIR` wins when set (a mounted volume needs no `make weights`);
    otherwise `cache_dir` (default: `default_cache_dir()`) must hold a manifest whose
    files are all present at their recorded sizes. Raises WeightsError naming `make weights`.
    """
    local = local_dir()
    if local is not None:
        require_layout(local)
        return weights_paths(local, local_manifest(local, hashed=False))

    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    manifest = read_manifest(cache_dir / MANIFEST_FILE)
    if manifest is None or manifest.source == "local":
        raise WeightsError(
            f"no Kokoro weights in {cache_dir}: run `make weights` (or set {LOCAL_DIR_ENV})"
        )
    problems = file_problems(cache_dir, manifest, hashed=False)
    if problems:
        raise WeightsError(
            f"Kokoro weights in {cache_dir} are incomplete ({problems[0]}): run `make weights`"
        )
    return weights_paths(cache_dir, manifest)


def find_weights(weights_dir: Path | None) -> WeightsPaths:
    """`weights_dir` used as is (its manifest, if any, says the precision), else the resolved
    weights under `.data/weights`. Never downloads; WeightsError says what to run."""
    if weights_dir is None:
        return locate_weights()
    missing = missing_from_layout(weights_dir)
    if missing:
        raise WeightsError(
            f"SYNTH_WEIGHTS_DIR={weights_dir} lacks {', '.join(missing)}: point it at a folder "
            f"in {HUB_REPO_ID}'s layout, or unset it and run `make weights`"
        )
    manifest = read_manifest(weights_dir / MANIFEST_FILE) or Manifest(
        source="local", precision=LOCAL_PRECISION, description=f"Kokoro-82M from {weights_dir}"
    )
    return weights_paths(weights_dir, manifest)
