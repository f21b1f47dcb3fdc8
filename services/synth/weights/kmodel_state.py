"""Build KModel's `kokoro-v1_0.pth` from the int8 ONNX export (int8-precision Kokoro-82M).

The target is whatever a KModel built from `config.json` expects, read from a KModel
constructed with no weights at all; every key must be filled, with the right shape,
or the derivation fails: a silently half-loaded model would still speak, badly.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import onnx
import torch

from services.synth.models import HUB_REPO_ID
from services.synth.weights.key_mapping import (
    KMODEL_MODULES,
    FloatArray,
    MappingError,
    split_top_module,
    split_weight_norm,
)
from services.synth.weights.onnx_export import ExportedTensor, read_exported_tensors

# Parameters the export cannot hold because they never touch the output.
# AlbertModel computes a pooled [CLS] vector that KModel throws away, so the export
# pruned it: zeros keep the file deterministic.
_UNUSED_PREFIXES = ("bert.pooler.",)

Progress = Callable[[Iterable[onnx.NodeProto]], Iterable[onnx.NodeProto]]


def empty_kmodel(config_path: Path) -> torch.nn.Module:
    """A KModel from `config.json` with no weights loaded (and nothing fetched)."""
    from kokoro import KModel  # heavy (transformers); only needed here

    with tempfile.TemporaryDirectory() as scratch:
        no_weights = Path(scratch) / "empty.pth"
        torch.save({}, no_weights)
        model: torch.nn.Module = KModel(
            repo_id=HUB_REPO_ID, config=str(config_path), model=str(no_weights)
        )
    return model.eval()


def _instance_norm_defaults(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """InstanceNorm affine parameters: absent from the export, identity (1, 0) by design.

    AdaIN1d only sets `affine=True` to dodge an old ONNX exporter bug; the scale and
    shift come from the style vector, so the norm's own affine is the identity.
    """
    defaults: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.InstanceNorm1d) and module.affine:
            defaults[f"{name}.weight"] = torch.ones(module.num_features)
            defaults[f"{name}.bias"] = torch.zeros(module.num_features)
    return defaults


def _as_tensor(value: FloatArray) -> torch.Tensor:
    # A fresh contiguous copy: torch.save writes a view's whole underlying storage.
    return torch.from_numpy(np.array(value, dtype=np.float32, copy=True))


def _assign(
    exported: dict[str, ExportedTensor], targets: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Place each exported tensor on its target key(s), splitting weight norm where needed."""
    state: dict[str, torch.Tensor] = {}
    for key, tensor in sorted(exported.items()):
        stem = key.removesuffix(".weight")
        if key in targets:
            state[key] = _as_tensor(tensor.value)
        elif key.endswith(".weight") and f"{stem}.weight_v" in targets:
            magnitude, direction = split_weight_norm(tensor.value)
            state[f"{stem}.weight_g"] = _as_tensor(magnitude)
            state[f"{stem}.weight_v"] = _as_tensor(direction)
        else:
            raise MappingError(f"{key} (from {tensor.origin!r}) matches no KModel parameter")
    return state


def _check_complete(state: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(targets) - set(state))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise MappingError(f"{len(missing)} KModel parameters are not in the export: {shown}")
    for key, target in targets.items():
        if tuple(state[key].shape) != tuple(target.shape):
            raise MappingError(
                f"{key}: the export gives shape {tuple(state[key].shape)}, "
                f"KModel expects {tuple(target.shape)}"
            )


def derive_state_dict(
    onnx_path: Path, config_path: Path, progress: Progress = lambda it: it
) -> dict[str, dict[str, torch.Tensor]]:
    """KModel's file layout: one state dict per top-level module, complete and shape-checked."""
    model = empty_kmodel(config_path)
    targets = {
        f"{top}.{key}": value
        for top in KMODEL_MODULES
        for key, value in getattr(model, top).state_dict().items()
    }
    exported = read_exported_tensors(onnx.load(str(onnx_path)), progress)
    state = _assign(exported, targets)
    for key, value in _instance_norm_defaults(model).items():
        state.setdefault(key, value)
    for key, target in targets.items():
        if key.startswith(_UNUSED_PREFIXES):
            state.setdefault(key, torch.zeros_like(target))
    _check_complete(state, targets)

    per_module: dict[str, dict[str, torch.Tensor]] = {top: {} for top in KMODEL_MODULES}
    for key, value in state.items():
        top, rest = split_top_module(key)
        per_module[top][rest] = value
    # KModel falls back to a lenient load when a strict one fails; prove the strict one works.
    for top, module_state in per_module.items():
        getattr(model, top).load_state_dict(module_state, strict=True)
    return per_module


def save_state_dict(state: dict[str, dict[str, torch.Tensor]], destination: Path) -> None:
    """Write atomically: a half-written .pth must never look like a finished one."""
    partial = destination.with_suffix(destination.suffix + ".partial")
    torch.save(state, partial)
    partial.replace(destination)
