"""How the int8 ONNX export's names and layouts become KModel's: rules on tiny inputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from services.synth.weights.key_mapping import (
    MappingError,
    dequantize,
    kmodel_path,
    lstm_direction_tensors,
    reorder_lstm_gates,
    scope_path,
    split_top_module,
    split_weight_norm,
)
from services.synth.weights.onnx_export import read_exported_tensors


@pytest.mark.parametrize(
    ("node_name", "key"),
    [
        # nested nn.Sequential repeats its parent's name
        ("/encoder/text_encoder/cnn.0/cnn.0.0/Conv_quant", "text_encoder.cnn.0.0"),
        ("/decoder/decoder/asr_res/asr_res.0/Conv_quant", "decoder.asr_res.0"),
        # ALBERT's shared layer, called for the 8th time
        (
            "/encoder/bert/encoder/albert_layer_groups.0/albert_layers.0/attention/query_7/MatMul_quant",
            "bert.encoder.albert_layer_groups.0.albert_layers.0.attention.query",
        ),
        (
            "/encoder/bert/encoder/albert_layer_groups.0/albert_layers.0/ffn_output_3/MatMul_quant",
            "bert.encoder.albert_layer_groups.0.albert_layers.0.ffn_output",
        ),
        # predictor.F0Ntrain's modules appear directly under encoder
        ("/encoder/F0.1/conv1x1/Conv_quant", "predictor.F0.1.conv1x1"),
        ("/encoder/N_proj/Conv_quant", "predictor.N_proj"),
        ("/encoder/shared/LSTM_quant", "predictor.shared"),
        ("/encoder/predictor/text_encoder/lstms.2/LSTM_quant", "predictor.text_encoder.lstms.2"),
        ("/encoder/bert_encoder/MatMul_quant", "bert_encoder"),
        (
            "/decoder/decoder/generator/resblocks.4/adain2.2/fc/Gemm_MatMul_quant",
            "decoder.generator.resblocks.4.adain2.2.fc",
        ),
        ("/decoder/decoder/generator/conv_post/Conv", "decoder.generator.conv_post"),
    ],
)
def test_node_scopes_map_to_kmodel_modules(node_name: str, key: str) -> None:
    assert kmodel_path(scope_path(node_name)) == key


@pytest.mark.parametrize(
    ("initializer", "key"),
    [
        ("encoder.predictor.F0.0.conv1.bias", "predictor.F0.0.conv1.bias"),
        ("encoder.bert.embeddings.LayerNorm.weight", "bert.embeddings.LayerNorm.weight"),
        ("encoder.text_encoder.cnn.2.1.gamma", "text_encoder.cnn.2.1.gamma"),
        (
            "decoder.decoder.generator.noise_res.1.alpha2.0",
            "decoder.generator.noise_res.1.alpha2.0",
        ),
    ],
)
def test_initializer_names_map_to_kmodel_keys(initializer: str, key: str) -> None:
    assert kmodel_path(initializer) == key


@pytest.mark.parametrize("path", ["model.decoder.x", "encoder.unknown.weight", "decoder.x"])
def test_paths_outside_the_export_are_refused(path: str) -> None:
    with pytest.raises(MappingError):
        kmodel_path(path)


def test_scope_without_module_is_refused() -> None:
    with pytest.raises(MappingError):
        scope_path("/Conv_quant")


def test_keys_split_into_kmodel_file_sections() -> None:
    assert split_top_module("decoder.encode.conv1.bias") == ("decoder", "encode.conv1.bias")
    assert split_top_module("bert_encoder.weight") == ("bert_encoder", "weight")
    with pytest.raises(MappingError):
        split_top_module("generator.conv_post.bias")


def test_lstm_gates_reorder_from_iofc_to_ifgo() -> None:
    hidden = 2
    onnx_order = np.repeat(np.array([1, 2, 3, 4], dtype=np.float32), hidden)  # i, o, f, c
    torch_order = reorder_lstm_gates(onnx_order)
    assert torch_order.tolist() == [1, 1, 3, 3, 4, 4, 2, 2]  # i, f, g(=c), o


def test_lstm_gate_reorder_keeps_rows_whole() -> None:
    onnx_gates = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    torch_gates = reorder_lstm_gates(onnx_gates)
    np.testing.assert_array_equal(torch_gates[2:4], onnx_gates[4:6])
    np.testing.assert_array_equal(torch_gates[6:8], onnx_gates[2:4])


def test_lstm_gate_axis_must_hold_four_blocks() -> None:
    with pytest.raises(MappingError):
        reorder_lstm_gates(np.zeros(6, dtype=np.float32))


def test_lstm_directions_become_torch_parameters() -> None:
    directions, inputs, hidden = 2, 3, 2
    w = np.arange(directions * inputs * 4 * hidden, dtype=np.float32).reshape(
        directions, inputs, 4 * hidden
    )
    r = -np.arange(directions * hidden * 4 * hidden, dtype=np.float32).reshape(
        directions, hidden, 4 * hidden
    )
    b = np.arange(directions * 8 * hidden, dtype=np.float32).reshape(directions, 8 * hidden)

    reverse = lstm_direction_tensors(w, r, b, direction=1)

    assert set(reverse) == {
        "weight_ih_l0_reverse",
        "weight_hh_l0_reverse",
        "bias_ih_l0_reverse",
        "bias_hh_l0_reverse",
    }
    assert reverse["weight_ih_l0_reverse"].shape == (4 * hidden, inputs)
    np.testing.assert_array_equal(reverse["weight_ih_l0_reverse"], reorder_lstm_gates(w[1].T))
    np.testing.assert_array_equal(reverse["weight_hh_l0_reverse"], reorder_lstm_gates(r[1].T))
    np.testing.assert_array_equal(reverse["bias_ih_l0_reverse"], reorder_lstm_gates(b[1, :8]))
    np.testing.assert_array_equal(reverse["bias_hh_l0_reverse"], reorder_lstm_gates(b[1, 8:]))
    assert "weight_ih_l0" in lstm_direction_tensors(w, r, b, direction=0)


def test_weight_norm_split_reconstructs_the_weight() -> None:
    weight = np.random.default_rng(0).normal(size=(4, 3, 5)).astype(np.float32)
    g, v = split_weight_norm(weight)
    assert g.shape == (4, 1, 1)
    norms = np.linalg.norm(v.reshape(4, -1), axis=1).reshape(4, 1, 1)
    np.testing.assert_allclose(g * v / norms, weight, rtol=1e-5, atol=1e-6)


def test_weight_norm_split_keeps_zeroed_channels_finite() -> None:
    weight = np.ones((3, 2, 2), dtype=np.float32)
    weight[1] = 0.0  # int8 rounded this channel away
    g, v = split_weight_norm(weight)
    assert g[1].item() == 0.0
    assert np.linalg.norm(v[1]) > 0
    reconstructed = g * v / np.linalg.norm(v.reshape(3, -1), axis=1).reshape(3, 1, 1)
    assert np.isfinite(reconstructed).all()
    np.testing.assert_allclose(reconstructed, weight)


def test_dequantize_uses_zero_points_without_wrapping() -> None:
    uint8 = np.array([0, 128, 255], dtype=np.uint8)
    expected = np.array([-64, 0, 63.5], dtype=np.float32)
    np.testing.assert_allclose(dequantize(uint8, 0.5, np.uint8(128)), expected)
    int8 = np.array([[-128, 127], [1, -1]], dtype=np.int8)  # (in, out): per-column scale
    scale = np.array([1.0, 0.25], dtype=np.float32)
    np.testing.assert_allclose(dequantize(int8, scale, 0), [[-128, 31.75], [1, -0.25]])


# A miniature of the export: one of each way a weight is stored, with the export's names.
LINEAR = "encoder.bert_encoder.weight"
CONV = "/encoder/text_encoder/cnn.0/Mul_output_0"  # weight norm folded by a Mul
TABLE = "encoder.text_encoder.embedding.weight"
LSTM_W, LSTM_R, LSTM_B = "onnx::LSTM_1", "onnx::LSTM_2", "onnx::LSTM_0"
ISTFT_BASIS = "decoder.decoder.generator.stft.istft.stft.inverse_basis"
HIDDEN, INPUTS = 2, 3


def _tiny_export() -> onnx.ModelProto:
    rng = np.random.default_rng(1)

    def int8(*shape: int) -> np.ndarray:
        return rng.integers(-128, 127, size=shape, dtype=np.int8)

    def init(name: str, values: object, dtype: type = np.float32) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)

    initializers = [
        numpy_helper.from_array(int8(INPUTS, 2), f"{LINEAR}_quantized"),  # (in, out)
        init(f"{LINEAR}_scale", [0.5, 0.25]),
        init(f"{LINEAR}_zero_point", [0, 0], np.int8),
        init("encoder.bert_encoder.bias", [1.0, 2.0]),
        numpy_helper.from_array(
            rng.integers(0, 255, size=(2, 2, 3), dtype=np.uint8), f"{CONV}_quantized"
        ),
        init(f"{CONV}_scale", 0.1),
        init("deduplicated_zero_point", 100, np.uint8),
        numpy_helper.from_array(int8(5, 4), f"{TABLE}_quantized"),
        init(f"{TABLE}_scale", 0.01),
        init("table_zero_point", 0, np.int8),
        numpy_helper.from_array(int8(2, INPUTS, 4 * HIDDEN), f"{LSTM_W}_quantized"),
        init(f"{LSTM_W}_scale", [0.1, 0.2]),
        numpy_helper.from_array(int8(2, HIDDEN, 4 * HIDDEN), f"{LSTM_R}_quantized"),
        init(f"{LSTM_R}_scale", [0.3, 0.4]),
        init("lstm_zero_point", [0, 0], np.int8),
        init(LSTM_B, rng.normal(size=(2, 8 * HIDDEN))),
        init(ISTFT_BASIS, np.ones((2, 1, 4))),
    ]
    lstm_inputs = ["seq", f"{LSTM_W}_quantized", f"{LSTM_R}_quantized", LSTM_B, "", "", "", ""]
    lstm_inputs += [f"{LSTM_W}_scale", "lstm_zero_point", f"{LSTM_R}_scale", "lstm_zero_point"]
    nodes = [
        helper.make_node(
            "MatMulInteger",
            ["x_q", f"{LINEAR}_quantized", "x_zp", f"{LINEAR}_zero_point"],
            ["linear_out"],
            name="/encoder/bert_encoder/MatMul_quant",
        ),
        helper.make_node(
            "ConvInteger",
            ["x_q", f"{CONV}_quantized", "x_zp", "deduplicated_zero_point"],
            ["conv_out"],
            name="/encoder/text_encoder/cnn.0/cnn.0.0/Conv_quant",
        ),
        helper.make_node(
            "Gather",
            [f"{TABLE}_quantized", "ids"],
            ["rows"],
            name="/encoder/text_encoder/embedding/Gather_quant",
        ),
        helper.make_node(
            "DequantizeLinear",
            ["rows", f"{TABLE}_scale", "table_zero_point"],
            ["embedded"],
            name="/encoder/text_encoder/embedding/Gather_quant_DequantizeLinear",
        ),
        helper.make_node(
            "DynamicQuantizeLSTM",
            lstm_inputs,
            ["lstm_out"],
            name="/encoder/text_encoder/lstm/LSTM_quant",
            domain="com.microsoft",
        ),
        helper.make_node(
            "ConvTranspose",
            ["spec", ISTFT_BASIS],
            ["wave"],
            name="/decoder/decoder/generator/istft/stft/ConvTranspose",
        ),
    ]
    graph = helper.make_graph(nodes, "tiny", [], [], initializer=initializers)
    return helper.make_model(graph)


def test_tiny_export_reads_into_kmodel_keys() -> None:
    model = _tiny_export()
    arrays = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in model.graph.initializer}

    tensors = read_exported_tensors(model)

    lstm_keys = {
        f"text_encoder.lstm.{kind}_l0{suffix}"
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        for suffix in ("", "_reverse")
    }
    assert set(tensors) == {
        "bert_encoder.weight",
        "bert_encoder.bias",
        "text_encoder.cnn.0.0.weight",
        "text_encoder.embedding.weight",
        *lstm_keys,
    }  # the iSTFT's fixed basis is left out
    np.testing.assert_allclose(
        tensors["bert_encoder.weight"].value, (arrays[f"{LINEAR}_quantized"] * [0.5, 0.25]).T
    )
    np.testing.assert_allclose(
        tensors["text_encoder.cnn.0.0.weight"].value, (arrays[f"{CONV}_quantized"] - 100) * 0.1
    )
    np.testing.assert_allclose(
        tensors["text_encoder.lstm.weight_ih_l0_reverse"].value,
        reorder_lstm_gates((arrays[f"{LSTM_W}_quantized"][1] * np.float32(0.2)).T),
    )
    assert tensors["text_encoder.embedding.weight"].value.shape == (5, 4)


def test_two_tensors_claiming_one_key_are_refused() -> None:
    model = _tiny_export()
    model.graph.initializer.append(
        numpy_helper.from_array(np.zeros((2, 3), np.float32), "other_linear")
    )
    second = helper.make_node("MatMul", ["x", "other_linear"], ["y"])
    second.name = "/encoder/bert_encoder/MatMul"
    model.graph.node.append(second)
    with pytest.raises(MappingError, match="claimed by both"):
        read_exported_tensors(model)


def test_unknown_scope_is_refused() -> None:
    model = _tiny_export()
    model.graph.node[0].name = "/mystery/bert_encoder/MatMul_quant"
    with pytest.raises(MappingError):
        read_exported_tensors(model)
