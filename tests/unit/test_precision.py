"""FP16 (AutoCast) and INT8 (ModelOpt PTQ) variants, made and run on the CPU."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from conftest import synthetic_face
from convert.export import export_onnx
from convert.gate import compare_embeddings, embed_onnx
from convert.precision import PrecisionError, convert_fp16, quantize_int8
from convert.simplify import simplify_onnx
from engine.contract import ContractError, ModelConfig, check_onnx
from tiny_model import random_model

pytest.importorskip("modelopt.onnx.quantization", reason="ModelOpt's ONNX tools: pip install -e '.[convert]'")

CONFIG = ModelConfig(arch="resnet18", input_size=32, embedding_dim=16)


def face_batch(n: int, offset: int = 0) -> np.ndarray:
    return np.stack([synthetic_face(offset + i, 32) for i in range(n)])


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    model = random_model(CONFIG)
    folder = tmp_path_factory.mktemp("precision")
    export_onnx(model, folder / "raw.onnx")
    simplify_onnx(folder / "raw.onnx", folder / "model.fp32.onnx", config=CONFIG)
    return folder / "model.fp32.onnx"


@pytest.fixture(scope="module")
def calibration():
    return face_batch(48)


def io_types(proto):
    return proto.graph.input[0].type.tensor_type.elem_type, proto.graph.output[0].type.tensor_type.elem_type


def test_fp16_has_half_weights_keeps_io_types_and_runs(fp32, calibration, tmp_path):
    out = tmp_path / "model.fp16.onnx"
    info = convert_fp16(fp32, out, calibration, config=CONFIG)
    proto = onnx.load(str(out))
    check_onnx(proto, CONFIG)
    assert io_types(proto) == (TensorProto.UINT8, TensorProto.FLOAT)
    inits = [i for i in proto.graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    conv_weights = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
    assert conv_weights and all(i.data_type == TensorProto.FLOAT16 for i in inits if i.name in conv_weights)
    assert info["initializer_types"].get("FLOAT16", 0) > 0
    assert out.stat().st_size < 0.6 * fp32.stat().st_size  # half-size weights
    x = face_batch(7, offset=100)
    got = embed_onnx(out, x, batch_size=7)
    assert got.dtype == np.float32 and got.shape == (7, 16)
    assert compare_embeddings(embed_onnx(fp32, x), got)["cos_min"] > 0.999


def test_int8_has_qdq_nodes_and_runs(fp32, calibration, tmp_path, method="entropy"):
    out = tmp_path / "model.int8.onnx"
    info = quantize_int8(fp32, out, calibration, config=CONFIG, method=method, calib_batch=16)
    proto = onnx.load(str(out))
    check_onnx(proto, CONFIG)
    assert io_types(proto) == (TensorProto.UINT8, TensorProto.FLOAT)
    ops = [n.op_type for n in proto.graph.node]
    n_conv = ops.count("Conv")
    assert ops.count("DequantizeLinear") >= 2 * n_conv  # activations and weights of every conv
    assert ops.count("QuantizeLinear") >= n_conv
    # Every conv of the trunk reads its input and its weight through a DequantizeLinear
    # (ModelOpt leaves the head's depthwise conv after the unfused BatchNorm in float).
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    quantized = [n for n in convs if producers.get(n.input[0]) == "DequantizeLinear"
                 and producers.get(n.input[1]) == "DequantizeLinear"]
    assert len(quantized) >= n_conv - 1
    assert all(producers.get(n.input[0]) == "BatchNormalization" for n in convs if n not in quantized)
    int8_weights = [i for i in proto.graph.initializer if i.data_type == TensorProto.INT8 and len(i.dims) == 4]
    assert len(int8_weights) == len(quantized)  # weights stored as int8
    assert info["calibration_method"] == method and info["calibration_images"] == 48
    assert out.stat().st_size < 0.4 * fp32.stat().st_size
    x = face_batch(7, offset=200)
    got = embed_onnx(out, x, batch_size=7)
    assert got.shape == (7, 16) and np.isfinite(got).all()
    assert compare_embeddings(embed_onnx(fp32, x), got)["cos_min"] > 0.9


def test_int8_leaves_the_named_layers_in_fp32(fp32, calibration, tmp_path):
    from convert.sensitivity import quantized_layers

    first = next(n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv")
    info = quantize_int8(fp32, tmp_path / "mixed.onnx", calibration, config=CONFIG, calib_batch=16,
                         fp32_layers=[first])
    proto = onnx.load(str(tmp_path / "mixed.onnx"))
    left = quantized_layers(proto)
    assert first not in left and len(left) >= 5 and info["fp32_layers"] == [first]
    # Its weights are FP16 in the file, cast to float in the graph: FP32 arithmetic, half the bytes.
    conv = next(n for n in proto.graph.node if n.name == first)
    cast = next(n for n in proto.graph.node if conv.input[1] in n.output)
    assert cast.op_type == "Cast" and cast.input[0] in \
        {i.name for i in proto.graph.initializer if i.data_type == TensorProto.FLOAT16}
    assert info["fp32_layer_weights_stored_as_fp16"] >= 1
    x = face_batch(5, offset=300)
    assert compare_embeddings(embed_onnx(fp32, x), embed_onnx(tmp_path / "mixed.onnx", x))["cos_min"] > 0.9
    with pytest.raises(PrecisionError, match="no node named node_Conv_nope to keep in FP32"):
        quantize_int8(fp32, tmp_path / "bad.onnx", calibration, config=CONFIG, fp32_layers=["node_Conv_nope"])


def test_first_quantiser_sees_the_normalised_input_range(fp32, calibration, tmp_path):
    """Calibrated on uint8 images normalised in the graph: the first conv's input scale fits [-1, 1]."""
    out = tmp_path / "model.int8.onnx"
    quantize_int8(fp32, out, calibration, config=CONFIG, method="max")
    proto = onnx.load(str(out))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    first_conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    dq = producers[first_conv.input[0]]
    scale = float(inits[dq.input[1]]) if dq.input[1] in inits else None
    assert scale is not None
    # max calibration: 127 * scale = max |x| of the normalised input, at most 1 (and near it for real images)
    assert 0.5 / 127 < scale <= 1.0 / 127 + 1e-6


def test_bad_calibration_inputs(fp32, tmp_path):
    with pytest.raises(PrecisionError, match="uint8"):
        quantize_int8(fp32, tmp_path / "a.onnx", np.zeros((4, 32, 32, 3), np.float32), config=CONFIG)
    with pytest.raises(PrecisionError, match=r"\(N, 32, 32, 3\)"):
        convert_fp16(fp32, tmp_path / "b.onnx", np.zeros((4, 64, 64, 3), np.uint8), config=CONFIG)
    with pytest.raises(PrecisionError, match="no calibration images"):
        quantize_int8(fp32, tmp_path / "c.onnx", np.zeros((0, 32, 32, 3), np.uint8), config=CONFIG)
    with pytest.raises(PrecisionError, match="not offered"):
        quantize_int8(fp32, tmp_path / "d.onnx", np.zeros((4, 32, 32, 3), np.uint8), config=CONFIG,
                      method="percentile")
    assert not list(tmp_path.iterdir())


def test_corrupt_input_is_a_clear_error(tmp_path, calibration):
    bad = tmp_path / "model.fp32.onnx"
    bad.write_bytes(b"\x08\x01garbage" * 50)
    with pytest.raises(ContractError, match="model.fp32.onnx"):
        convert_fp16(bad, tmp_path / "model.fp16.onnx", calibration, config=CONFIG)
    with pytest.raises(ContractError, match="model.fp32.onnx"):
        quantize_int8(bad, tmp_path / "model.int8.onnx", calibration, config=CONFIG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fp32.onnx"]


def test_realness_variants_run_in_onnx_runtime(tmp_path, calibration):
    """Regression: AutoCast named every dim it could not infer ``unk``, so ONNX Runtime took the
    (B, 15) identity half and the (B, 16) embedding for one shape and reused a buffer between them.
    And INT8 leaves the realness head unquantized."""
    config = ModelConfig(arch="resnet18", input_size=32, embedding_dim=16, realness_weight=1.0)
    export_onnx(random_model(config), tmp_path / "raw.onnx")
    fp32 = tmp_path / "model.fp32.onnx"
    simplify_onnx(tmp_path / "raw.onnx", fp32, config=config)
    convert_fp16(fp32, tmp_path / "model.fp16.onnx", calibration, config=config)
    quantize_int8(fp32, tmp_path / "model.int8.onnx", calibration, config=config)
    x = face_batch(5, offset=100)
    reference = embed_onnx(fp32, x)
    for variant in ("fp16", "int8"):
        path = tmp_path / f"model.{variant}.onnx"
        dims = {d.dim_param for v in onnx.load(str(path)).graph.value_info
                for d in v.type.tensor_type.shape.dim if d.dim_param}
        assert dims <= {"batch"}
        if variant == "int8":  # the realness head stays in high precision (OpenVINO flipped its sign)
            proto = onnx.load(str(path))
            made_by = {o: n.op_type for n in proto.graph.node for o in n.output}
            head = [n for n in proto.graph.node if any(i.startswith("realness.") for i in n.input)]
            assert head and not any(made_by.get(i) == "DequantizeLinear" for n in head for i in n.input)
        assert compare_embeddings(reference, embed_onnx(path, x))["cos_min"] > 0.95
