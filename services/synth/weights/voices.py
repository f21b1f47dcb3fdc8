"""Turn kokoro-js's raw voice files into the `voices/<name>.pt` tensors KPipeline loads."""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

# A voice is one 256-wide style vector per input length (1..510 phonemes).
VOICE_SHAPE = (510, 1, 256)
_VOICE_MEMBER_PREFIX = "package/voices/"
_VOICE_MEMBER_SUFFIX = ".bin"

VoiceProgress = Callable[[Iterable[tarfile.TarInfo]], Iterable[tarfile.TarInfo]]


class VoiceFormatError(ValueError):
    """A voice file whose size does not match a (510, 1, 256) float32 tensor."""


def voice_tensor(raw: bytes, name: str) -> torch.Tensor:
    """Raw little-endian float32 (510, 1, 256) -> a torch tensor of that shape."""
    expected = int(np.prod(VOICE_SHAPE)) * 4
    if len(raw) != expected:
        raise VoiceFormatError(f"voice {name}: {len(raw)} bytes, expected {expected}")
    values = np.frombuffer(raw, dtype="<f4").reshape(VOICE_SHAPE)
    return torch.from_numpy(values.astype(np.float32, copy=True))


def extract_voices(
    npm_tarball: Path, voices_dir: Path, progress: VoiceProgress = lambda it: it
) -> list[str]:
    """Write every `package/voices/*.bin` of the kokoro-js tarball as `voices_dir/<name>.pt`."""
    voices_dir.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    with tarfile.open(npm_tarball, "r:gz") as archive:
        members = [
            member
            for member in archive.getmembers()
            if member.isfile()
            and member.name.startswith(_VOICE_MEMBER_PREFIX)
            and member.name.endswith(_VOICE_MEMBER_SUFFIX)
        ]
        for member in progress(members):
            name = Path(member.name).stem
            source = archive.extractfile(member)
            if source is None:
                raise VoiceFormatError(f"voice {name}: unreadable in {npm_tarball.name}")
            torch.save(voice_tensor(source.read(), name), voices_dir / f"{name}.pt")
            names.append(name)
    return sorted(names)
