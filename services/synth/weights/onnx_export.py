"""Read the parameters out of the int8 `kokoro-v1.0.int8.onnx`, dequantized, under KModel names.

Where each kind of parameter lives in the export (read from the file itself):
- Linear weights: the second input of `MatMulInteger`, (in, out), per-column scale.
- Conv weights: the second input of `ConvInteger`, per-tensor scale and uint8 zero point.
  Weight-normed convs were folded to g * v / |v| before quantizing.
- LSTMs: W, R, B of `DynamicQuantizeLSTM`, per-direction scales.
- Embedding tables: a `Gather` on an int8 table followed by `DequantizeLinear`.
- A few weights stayed float: `Conv`, `ConvTranspose` and `MatMul` with an initializer.
- Biases, norms and alphas: float initializers named like module paths.
A quantized weight's scale is the initializer named like it with `_scale` for `_quantized`;
zero points were deduplicated across tensors, so they are taken from the node's inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from services.synth.weights.key_mapping import (
    FloatArray,
    MappingError,
    dequantize,
    kmodel_path,
    lstm_direction_tensors,
    scope_path,
)

# KModel computes the iSTFT's fixed DFT kernels itself; the export carries them as weights.
FIXED_ISTFT_PREFIXES = ("decoder.generator.stft.", "decoder.generator.istft.")

_QUANTIZED_SUFFIX = "_quantized"
_WEIGHT_OPS = ("MatMulInteger", "ConvInteger", "DynamicQuantizeLSTM", "Conv", "ConvTranspose")


@dataclass(frozen=True)
class ExportedTensor:
    """One parameter in KModel's naming, with the ONNX tensor it was read from."""

    key: str
    value: FloatArray
    origin: str


class _Graph:
    """Lookups over one ONNX graph: initializers by name, consumers by tensor name."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.initializers = {tensor.name: tensor for tensor in model.graph.initializer}
        self.nodes = list(model.graph.node)
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def array(self, name: str) -> np.ndarray:
        if name not in self.initializers:
            raise MappingError(f"the export has no initializer {name!r}")
        return numpy_helper.to_array(self.initializers[name])

    def scale_of(self, quantized_name: str) -> np.ndarray:
        if not quantized_name.endswith(_QUANTIZED_SUFFIX):
            raise MappingError(f"{quantized_name!r} is not a quantized initializer")
        return self.array(quantized_name.removesuffix(_QUANTIZED_SUFFIX) + "_scale")

    def optional_input(self, node: onnx.NodeProto, index: int) -> np.ndarray | int:
        """An optional constant input (a zero point): 0 when the node leaves it out."""
        if index < len(node.input) and node.input[index]:
            return self.array(node.input[index])
        return 0


def _module_of(node: onnx.NodeProto) -> str:
    return kmodel_path(scope_path(node.name))


def _is_fixed_istft(path: str) -> bool:
    return (path + ".").startswith(FIXED_ISTFT_PREFIXES)


def _linear(graph: _Graph, node: onnx.NodeProto) -> list[ExportedTensor]:
    weight_name = node.input[1]
    weight = dequantize(
        graph.array(weight_name), graph.scale_of(weight_name), graph.optional_input(node, 3)
    )
    return [ExportedTensor(_module_of(node) + ".weight", weight.T.copy(), weight_name)]


def _float_linear(graph: _Graph, node: onnx.NodeProto) -> list[ExportedTensor]:
    weight_name = node.input[1]
    weight = graph.array(weight_name).astype(np.float32)
    return [ExportedTensor(_module_of(node) + ".weight", weight.T.copy(), weight_name)]


def _conv(graph: _Graph, node: onnx.NodeProto) -> list[ExportedTensor]:
    weight_name = node.input[1]
    weight = dequantize(
        graph.array(weight_name), graph.scale_of(weight_name), graph.optional_input(node, 3)
    )
    return [ExportedTensor(_module_of(node) + ".weight", weight, weight_name)]


def _float_conv(graph: _Graph, node: onnx.NodeProto) -> list[ExportedTensor]:
    path = _module_of(node)
    if _is_fixed_istft(path):
        return []
    weight_name = node.input[1]
    weight = graph.array(weight_name).astype(np.float32)
    return [ExportedTensor(path + ".weight", weight, weight_name)]


def _lstm(graph: _Graph, node: onnx.NodeProto) -> list[ExportedTensor]:
    # Inputs: X, W, R, B, sequence_lens, initial_h, initial_c, P,
    #         W_scale, W_zero_point, R_scale, R_zero_point.
    w_name, r_name, b_name = node.input[1], node.input[2], node.input[3]
    input_weights = _dequantize_per_direction(
        graph.array(w_name), graph.array(node.input[8]), graph.optional_input(node, 9)
    )
    recurrent_weights = _dequantize_per_direction(
        graph.array(r_name), graph.array(node.input[10]), graph.optional_input(node, 11)
    )
    biases = graph.array(b_name).astype(np.float32)
    path = _module_of(node)
    tensors: list[ExportedTensor] = []
    for direction in range(input_weights.shape[0]):
        per_direction = lstm_direction_tensors(input_weights, recurrent_weights, biases, direction)
        tensors += [
            ExportedTensor(f"{path}.{name}", value, w_name) for name, value in per_direction.items()
        ]
    return tensors


def _dequantize_per_direction(
    quantized: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | int
) -> FloatArray:
    """Scales and zero points are per direction (D,) or per direction and gate column (D, 4H)."""

    def per_direction(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values)
        return values.reshape(values.shape[0], 1, -1) if values.ndim else values

    return dequantize(quantized, per_direction(scale), per_direction(np.asarray(zero_point)))


def _embeddings(graph: _Graph) -> list[ExportedTensor]:
    """Quantized tables: `Gather(table_quantized)` -> `DequantizeLinear(scale, zero point)`."""
    tensors = []
    for node in graph.nodes:
        if node.op_type != "Gather" or node.input[0] not in graph.initializers:
            continue
        table_name = node.input[0]
        dequantizers = [
            consumer
            for consumer in graph.consumers.get(node.output[0], [])
            if consumer.op_type == "DequantizeLinear"
        ]
        if not dequantizers:
            continue  # a Gather on a shape constant, not an embedding table
        dequantizer = dequantizers[0]
        table = dequantize(
            graph.array(table_name),
            graph.array(dequantizer.input[1]),
            graph.optional_input(dequantizer, 2),
        )
        tensors.append(ExportedTensor(_module_of(node) + ".weight", table, table_name))
    return tensors


def _named_initializers(graph: _Graph) -> list[ExportedTensor]:
    """Float initializers that kept their module-path names: biases, norms, alphas."""
    tensors = []
    for name, tensor in graph.initializers.items():
        looks_like_module_path = "/" not in name and ":" not in name and "." in name
        if not looks_like_module_path or name.endswith(
            (_QUANTIZED_SUFFIX, "_scale", "_zero_point")
        ):
            continue
        if tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        key = kmodel_path(name)
        if _is_fixed_istft(key.rsplit(".", 1)[0]):
            continue
        tensors.append(ExportedTensor(key, numpy_helper.to_array(tensor).copy(), name))
    return tensors


def _weights_of(graph: _Graph, node: onnx.NodeProto) -> list[ExportedTensor]:
    if len(node.input) < 2 or node.input[1] not in graph.initializers:
        return []  # an activation-by-activation product (attention scores), no weight
    if node.op_type == "MatMulInteger":
        return _linear(graph, node)
    if node.op_type == "MatMul":
        return _float_linear(graph, node)
    if node.op_type == "ConvInteger":
        return _conv(graph, node)
    if node.op_type in ("Conv", "ConvTranspose"):
        return _float_conv(graph, node)
    if node.op_type == "DynamicQuantizeLSTM":
        return _lstm(graph, node)
    return []


def read_exported_tensors(
    model: onnx.ModelProto,
    progress: Callable[[Iterable[onnx.NodeProto]], Iterable[onnx.NodeProto]] = lambda it: it,
) -> dict[str, ExportedTensor]:
    """Every parameter the export holds, dequantized, keyed by KModel's name (before the
    weight-norm split: weight-normed layers appear as `.weight`).

    Raises MappingError when two different ONNX tensors claim the same KModel key.
    """
    graph = _Graph(model)
    found: dict[str, ExportedTensor] = {}

    def add(tensors: Iterable[ExportedTensor]) -> None:
        for tensor in tensors:
            seen = found.get(tensor.key)
            if seen is not None and seen.origin != tensor.origin:
                raise MappingError(
                    f"{tensor.key} is claimed by both {seen.origin!r} and {tensor.origin!r}"
                )
            found[tensor.key] = tensor

    add(_embeddings(graph))
    add(_named_initializers(graph))
    weight_nodes = [node for node in graph.nodes if node.op_type in (*_WEIGHT_OPS, "MatMul")]
    for node in progress(weight_nodes):
        add(_weights_of(graph, node))
    return found
