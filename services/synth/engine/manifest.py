"""`manifest.json`: where a weights folder came from, at what precision, and each file's hash."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, cast

Source = Literal["local", "hub", "derived"]
MANIFEST_FORMAT = 1
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileRecord:
    """A file's size and, when it was hashed, its sha256."""

    size: int
    sha256: str | None = None


@dataclass(frozen=True)
class Manifest:
    """Provenance of one weights folder.

    `precision` is what callers should show wherever weights are listed:
    "int8-derived" means int8-precision Kokoro-82M (dequantized from the int8 ONNX).
    `root` is set only for source "local": the folder used as is.
    """

    source: Source
    precision: str
    description: str
    artifacts: dict[str, str] = field(default_factory=dict)
    files: dict[str, FileRecord] = field(default_factory=dict)
    root: str | None = None

    def to_json(self) -> str:
        return json.dumps({"format": MANIFEST_FORMAT, **asdict(self)}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"manifest format {data.get('format')!r}, expected {MANIFEST_FORMAT}")
        return cls(
            source=cast(Source, data["source"]),
            precision=data["precision"],
            description=data["description"],
            artifacts=dict(data.get("artifacts", {})),
            files={name: FileRecord(**record) for name, record in data["files"].items()},
            root=data.get("root"),
        )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe_files(root: Path, relative_paths: list[str], *, hashed: bool) -> dict[str, FileRecord]:
    return {
        name: FileRecord(
            size=(root / name).stat().st_size,
            sha256=sha256_of(root / name) if hashed else None,
        )
        for name in sorted(relative_paths)
    }


def file_problems(root: Path, manifest: Manifest, *, hashed: bool) -> list[str]:
    """What no longer matches the manifest: missing files, other sizes, other hashes."""
    problems = []
    for name, record in manifest.files.items():
        path = root / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != record.size:
            problems.append(f"{name} has {path.stat().st_size} bytes, expected {record.size}")
        elif hashed and record.sha256 is not None and sha256_of(path) != record.sha256:
            problems.append(f"{name} has changed (sha256 differs)")
    return problems


def read_manifest(path: Path) -> Manifest | None:
    """The manifest at `path`, or None when there is none or it cannot be read."""
    try:
        return Manifest.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Written last and atomically: its presence means the folder is complete."""
    partial = path.with_suffix(".json.partial")
    partial.write_text(manifest.to_json() + "\n", encoding="utf-8")
    os.replace(partial, path)
