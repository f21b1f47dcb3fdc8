"""Which weights folder the service loads: the one configured, else the one `make weights` made."""

from __future__ import annotations

from pathlib import Path

from services.synth.weights.errors import WeightsError
from services.synth.weights.layout import (
    MANIFEST_FILE,
    WeightsPaths,
    missing_from_layout,
    weights_paths,
)
from services.synth.weights.manifest import Manifest, read_manifest
from services.synth.weights.resolve import LOCAL_PRECISION, locate_weights


def find_weights(weights_dir: Path | None) -> WeightsPaths:
    """`weights_dir` used as is (its manifest, if any, says the precision), else the resolved
    weights under `.data/weights`. Never downloads; WeightsError says what to run."""
    if weights_dir is None:
        return locate_weights()
    missing = missing_from_layout(weights_dir)
    if missing:
        raise WeightsError(
            f"SYNTH_WEIGHTS_DIR={weights_dir} lacks {', '.join(missing)}: point it at a folder "
            "in hexgrad/Kokoro-82M's layout, or unset it and run `make weights`"
        )
    manifest = read_manifest(weights_dir / MANIFEST_FILE) or Manifest(
        source="local", precision=LOCAL_PRECISION, description=f"Kokoro-82M from {weights_dir}"
    )
    return weights_paths(weights_dir, manifest)
