"""Pure rules that turn the int8 ONNX export's names and layouts into KModel's.

No torch and no ONNX here: names in, names out; arrays in, arrays out. The derivation
(`kmodel_state.py`) applies these rules; the unit tests pin them on tiny inputs.
"""

from __future__ import annotations

import re

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

# The exporter's top-level scopes are `encoder` (bert, bert_encoder, text_encoder,
# predictor) and `decoder.decoder`; KModel has these five modules at the top instead.
KMODEL_MODULES = ("bert", "bert_encoder", "predictor", "text_encoder", "decoder")

# `predictor.F0Ntrain` was traced as a method call, so its submodules lost the
# `predictor` scope and appear directly under `encoder`.
_PREDICTOR_MODULES_SEEN_UNDER_ENCODER = frozenset({"F0", "N", "F0_proj", "N_proj", "shared"})

# A module called more than once (ALBERT's one shared layer runs 12 times) gets scopes
# `query`, `query_1`, ... `query_11`; every call uses the same weights.
_REPEATED_CALL_SUFFIX = re.compile(r"_\d+$")

# ONNX stores LSTM gates as (input, output, forget, cell); torch as (input, forget, cell,
# output). Entry k is the ONNX block that becomes torch block k.
_ONNX_GATE_FOR_TORCH_GATE = (0, 2, 3, 1)


class MappingError(ValueError):
    """An ONNX name or tensor that does not fit KModel: the export is not the expected one."""


def scope_path(node_name: str) -> str:
    """The dotted module path of an ONNX node, from its scope-carrying name.

    `/encoder/text_encoder/cnn.0/cnn.0.0/Conv_quant` -> `encoder.text_encoder.cnn.0.0`.
    The last segment is the operator's own name and is dropped. A module nested in an
    `nn.Sequential` repeats its parent's name as a prefix (`cnn.0` then `cnn.0.0`); only
    the part after that prefix is new.
    """
    segments = [segment for segment in node_name.split("/") if segment][:-1]
    if not segments:
        raise MappingError(f"ONNX node {node_name!r} carries no module scope")
    names: list[str] = []
    previous = ""
    for segment in segments:
        name = _REPEATED_CALL_SUFFIX.sub("", segment)
        if previous and name.startswith(previous + "."):
            names.append(name[len(previous) + 1 :])
        else:
            names.append(name)
        previous = name
    return ".".join(names)


def kmodel_path(export_path: str) -> str:
    """Map a dotted path of the export (a node scope or an initializer name) to KModel's.

    `decoder.decoder.X` -> `decoder.X`; `encoder.F0.1` -> `predictor.F0.1`;
    `encoder.bert.X` -> `bert.X`. Anything else is not part of this export.
    """
    if export_path.startswith("decoder.decoder."):
        return "decoder." + export_path.removeprefix("decoder.decoder.")
    if export_path.startswith("encoder."):
        rest = export_path.removeprefix("encoder.")
        if rest.split(".", 1)[0] in _PREDICTOR_MODULES_SEEN_UNDER_ENCODER:
            return "predictor." + rest
        if rest.split(".", 1)[0] in KMODEL_MODULES:
            return rest
    raise MappingError(f"{export_path!r} is outside the export's known scopes")


def split_top_module(key: str) -> tuple[str, str]:
    """`decoder.encode.conv1.bias` -> (`decoder`, `encode.conv1.bias`): KModel's file keys."""
    top, _, rest = key.partition(".")
    if top not in KMODEL_MODULES or not rest:
        raise MappingError(f"{key!r} does not belong to one of KModel's modules {KMODEL_MODULES}")
    return top, rest


def dequantize(
    quantized: npt.NDArray[np.integer], scale: npt.ArrayLike, zero_point: npt.ArrayLike
) -> FloatArray:
    """`(q - zero_point) * scale`, in int32 first so uint8/int8 arithmetic cannot wrap."""
    shifted = quantized.astype(np.int32) - np.asarray(zero_point, dtype=np.int32)
    return (shifted.astype(np.float32) * np.asarray(scale, dtype=np.float32)).astype(np.float32)


def reorder_lstm_gates(onnx_gates: FloatArray) -> FloatArray:
    """Reorder the 4 gate blocks along axis 0 from ONNX (i, o, f, c) to torch (i, f, g, o)."""
    if onnx_gates.shape[0] % 4:
        raise MappingError(f"LSTM gate axis of length {onnx_gates.shape[0]} is not 4 blocks")
    blocks = np.split(onnx_gates, 4, axis=0)
    return np.concatenate([blocks[k] for k in _ONNX_GATE_FOR_TORCH_GATE], axis=0)


def lstm_direction_tensors(
    input_weights: FloatArray,
    recurrent_weights: FloatArray,
    biases: FloatArray,
    direction: int,
) -> dict[str, FloatArray]:
    """Torch `nn.LSTM` parameters of one direction from `DynamicQuantizeLSTM`'s W, R, B.

    The quantized op stores W as (directions, input, 4*hidden) and R as
    (directions, hidden, 4*hidden): transposed against torch's (4*hidden, input).
    B is (directions, 8*hidden): the input biases, then the recurrent ones.
    """
    suffix = "_reverse" if direction == 1 else ""
    input_bias, recurrent_bias = np.split(biases[direction], 2)
    return {
        f"weight_ih_l0{suffix}": reorder_lstm_gates(input_weights[direction].T),
        f"weight_hh_l0{suffix}": reorder_lstm_gates(recurrent_weights[direction].T),
        f"bias_ih_l0{suffix}": reorder_lstm_gates(input_bias),
        f"bias_hh_l0{suffix}": reorder_lstm_gates(recurrent_bias),
    }


def split_weight_norm(weight: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(weight_g, weight_v) for torch's `weight_norm(dim=0)` such that g * v / |v| == weight.

    The export folded g * v / |v| into one tensor, so v = weight and g = |weight| per
    output channel. A channel that int8 rounded to all zeros gets v = 1 (and g = 0):
    with v = 0 the forward pass would compute 0 / 0 = NaN.
    """
    flat = weight.reshape(weight.shape[0], -1)
    norms = np.sqrt(np.square(flat, dtype=np.float64).sum(axis=1)).astype(np.float32)
    direction = flat.copy()
    direction[norms == 0] = 1.0
    g_shape = (weight.shape[0],) + (1,) * (weight.ndim - 1)
    return norms.reshape(g_shape), direction.reshape(weight.shape)
