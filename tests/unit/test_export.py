"""Export and simplification: parity with PyTorch, dynamic batch, the contract on every file."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from convert.export import export_onnx, load_checkpoint, load_onnx
from convert.gate import compare_embeddings, embed_onnx, embed_torch
from convert.simplify import SimplifyError, simplify_onnx
from engine.contract import ContractError, ModelConfig, check_onnx
from tiny_model import random_model
from nets.checkpoint import save_model
from nets.model import get_model

CONFIG = ModelConfig(arch="resnet18", input_size=32, embedding_dim=16)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = random_model(CONFIG)
    folder = tmp_path_factory.mktemp("export")
    path = folder / "raw.onnx"
    info = export_onnx(model, path)
    return model, path, info


def images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_export_matches_pytorch_and_keeps_the_contract(exported):
    model, path, info = exported
    assert info["input_size"] == 32 and info["embedding_dim"] == 16 and info["opset"] >= 17
    proto = onnx.load(str(path))
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "images" and inp.type.tensor_type.elem_type == TensorProto.UINT8
    assert out.name == "embeddings" and out.type.tensor_type.elem_type == TensorProto.FLOAT
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    x = images(16)
    parity = compare_embeddings(embed_torch(model, x), embed_onnx(path, x))
    assert parity["cos_min"] > 0.9999
    assert parity["max_abs"] < 1e-4


def test_preprocessing_is_inside_the_graph(exported):
    _, path, _ = exported
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Cast" in ops and "Transpose" in ops  # uint8 NHWC -> float NCHW in the graph
    e = embed_onnx(path, images(3))
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)  # L2-normalised in the graph


@pytest.mark.parametrize("batch", [1, 7])
def test_dynamic_batch(exported, batch):
    model, path, _ = exported
    x = images(batch, seed=batch)
    got = embed_onnx(path, x, batch_size=batch)
    assert got.shape == (batch, 16) and got.dtype == np.float32
    assert compare_embeddings(embed_torch(model, x), got)["cos_min"] > 0.9999


def _with_input(proto, elem_type, dims):
    bad = onnx.ModelProto()
    bad.CopyFrom(proto)
    new = helper.make_tensor_value_info("images", elem_type, dims)
    bad.graph.input[0].CopyFrom(new)
    return bad


def test_contract_rejects_wrong_input_size(exported):
    _, path, _ = exported
    proto = onnx.load(str(path))
    bad = _with_input(proto, TensorProto.UINT8, ["batch", 48, 48, 3])
    with pytest.raises(ContractError, match="input size 48"):
        check_onnx(bad, CONFIG, source="bad.onnx")


def test_contract_rejects_wrong_dtype(exported):
    _, path, _ = exported
    bad = _with_input(onnx.load(str(path)), TensorProto.FLOAT, ["batch", 32, 32, 3])
    with pytest.raises(ContractError, match="input dtype is FLOAT"):
        check_onnx(bad, CONFIG, source="bad.onnx")


def test_contract_rejects_extra_output(exported):
    _, path, _ = exported
    bad = onnx.load(str(path))
    first = bad.graph.node[0].output[0]
    bad.graph.output.append(helper.make_tensor_value_info(first, TensorProto.FLOAT, None))
    with pytest.raises(ContractError, match="expected 1 output"):
        check_onnx(bad, CONFIG, source="bad.onnx")


def test_contract_rejects_fixed_batch(exported):
    _, path, _ = exported
    bad = _with_input(onnx.load(str(path)), TensorProto.UINT8, [4, 32, 32, 3])
    with pytest.raises(ContractError, match="batch dimension is fixed"):
        check_onnx(bad, CONFIG, source="bad.onnx")


def test_onnxslim_keeps_dynamic_batch_and_parity(exported, tmp_path):
    _, path, _ = exported
    out = tmp_path / "slim.onnx"
    info = simplify_onnx(path, out, simplifier="onnxslim", config=CONFIG)
    assert info["nodes_after"] <= info["nodes_before"]
    check_onnx(out, CONFIG)
    for batch in (1, 7):
        x = images(batch, seed=10 + batch)
        assert compare_embeddings(embed_onnx(path, x), embed_onnx(out, x))["cos_min"] > 0.99999


def test_onnxsim_when_installed(exported, tmp_path):
    pytest.importorskip("onnxsim", reason="onnxsim is optional (pip install onnxsim)")
    _, path, _ = exported
    out = tmp_path / "sim.onnx"
    simplify_onnx(path, out, simplifier="onnxsim", config=CONFIG)
    x = images(7, seed=3)
    assert compare_embeddings(embed_onnx(path, x), embed_onnx(out, x))["cos_min"] > 0.99999


def test_unknown_simplifier(exported, tmp_path):
    with pytest.raises(SimplifyError, match="unknown simplifier"):
        simplify_onnx(exported[1], tmp_path / "x.onnx", simplifier="magic")
    assert not (tmp_path / "x.onnx").exists()


def test_corrupt_onnx_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.fp32.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\x01\x02" * 10)
    with pytest.raises(ContractError, match="model.fp32.onnx: not a readable ONNX model"):
        load_onnx(bad, CONFIG)
    with pytest.raises(ContractError, match="model.fp32.onnx: not a readable ONNX model"):
        simplify_onnx(bad, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    torch.manual_seed(0)
    model = get_model(CONFIG).eval()
    save_model(model, tmp_path / "run")
    loaded = load_checkpoint(tmp_path / "run")
    x = torch.from_numpy(images(2))
    torch.testing.assert_close(loaded(x), model(x))
    # model.json says dim 32, the weights hold dim 16: a ContractError naming both files
    ModelConfig(arch="resnet18", input_size=32, embedding_dim=32).save(tmp_path / "run" / "model.json")
    with pytest.raises(ContractError, match="does not match"):
        load_checkpoint(tmp_path / "run")
    with pytest.raises(ContractError, match="no such checkpoint folder"):
        load_checkpoint(tmp_path / "missing")


def test_realness_model_exports_with_parity(tmp_path):
    """The realness coordinate (pooling, tanh, concat) is inside the graph; output stays (B, embedding_dim)."""
    model = random_model(ModelConfig(arch="resnet18", input_size=32, embedding_dim=16, realness_weight=1.0))
    info = export_onnx(model, tmp_path / "raw.onnx")
    assert info["embedding_dim"] == 16
    x = images(8)
    parity = compare_embeddings(embed_torch(model, x), embed_onnx(tmp_path / "raw.onnx", x))
    assert parity["cos_min"] > 0.9999 and parity["max_abs"] < 1e-4
