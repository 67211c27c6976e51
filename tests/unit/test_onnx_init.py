"""init=model.onnx: our own exported (BN-folded) ONNX back into a trainable PyTorch model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from convert.export import export_onnx
from convert.simplify import simplify_onnx
from engine.contract import ModelConfig
from test_train import dataset, tiny  # noqa: F401  (module fixture of synthetic train/val folders)
from tiny_model import random_model
from nets.model import get_model
from training.onnx_init import OnnxInitError, _folded_pairs, load_onnx_weights
from training.train import TrainError, train

CONFIG = ModelConfig(arch="resnet18", input_size=32, embedding_dim=16)


def images(n: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def folded(tmp_path_factory):
    """A random model and its simplified FP32 ONNX, in which every BN after a conv/linear is folded."""
    import onnx

    model = random_model(CONFIG)
    folder = tmp_path_factory.mktemp("onnx_init")
    export_onnx(model, folder / "raw.onnx")
    simplify_onnx(folder / "raw.onnx", folder / "model.onnx")
    names = {i.name for i in onnx.load(str(folder / "model.onnx")).graph.initializer}
    assert "backbone.layer1.0.conv1.weight_bias" in names and "backbone.layer1.0.bn1.weight" not in names
    return model, folder / "model.onnx"


def test_the_folded_network_comes_back_exactly_and_trains_from_the_same_function(folded):
    source, path = folded
    torch.manual_seed(5)
    target = get_model(CONFIG)
    calib = images(64, seed=1)
    report = load_onnx_weights(target, str(path), calib)
    assert report["missing"] == [] and report["unexpected"] == []
    assert report["unfolded"] == len(_folded_pairs(target)) == 21  # conv1 + 16 block convs + 3 downsample + fc
    held_out = images(8, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(target.eval()(held_out), source(held_out), rtol=0, atol=1e-5)
        # Un-folded BN statistics come from the sample images: on them, training mode computes the same
        # function (head.bn_in is stored unfolded with this random model's statistics, so it stays in eval).
        expected = target.eval()(calib)
        target.train()
        target.head.bn_in.eval()
        torch.testing.assert_close(target(calib), expected, rtol=0, atol=1e-4)


def test_a_resized_head_keeps_its_fresh_init_and_is_reported(folded):
    source, path = folded
    target = get_model(ModelConfig(**{**CONFIG.to_dict(), "realness_weight": 1.0}))
    report = load_onnx_weights(target, str(path), images(16, seed=1))
    assert not any(k.startswith("backbone.") for k in report["missing"])
    assert "head.fc.weight" in report["missing"] and "realness.fc.weight" in report["missing"]
    assert report["unexpected"] == ["head.fc.weight", "head.fc.weight_bias"]


def test_files_that_cannot_seed_the_model_are_named(folded, tmp_path):
    _, path = folded
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(OnnxInitError, match="bad.onnx: not a readable ONNX file"):
        load_onnx_weights(get_model(CONFIG), str(bad), images(4, 1))
    pytest.importorskip("modelopt.onnx.quantization", reason="ModelOpt's ONNX tools: pip install -e '.[convert]'")
    from convert.precision import quantize_int8

    int8 = tmp_path / "model.int8.onnx"
    quantize_int8(path, int8, images(16, 1).numpy(), config=CONFIG)
    with pytest.raises(OnnxInitError, match="INT8 file holds quantised weights"):
        load_onnx_weights(get_model(CONFIG), str(int8), images(4, 1))
    with pytest.raises(OnnxInitError, match=r"not the trunk of this resnet50 \(backbone\.layer1\.0\.conv1\.weight is "):
        load_onnx_weights(get_model(ModelConfig(arch="resnet50", input_size=32, embedding_dim=16)), str(path),
                          images(4, 1))


def test_training_starts_from_an_exported_model(dataset, folded, tmp_path, capsys):  # noqa: F811
    _, path = folded
    train(tiny(dataset, tmp_path / "run", "epochs=1", "steps_per_epoch=1", "realness_weight=1.0", f"init={path}"),
          progress=False)
    assert "init: loaded" in capsys.readouterr().err and (tmp_path / "run" / "model.safetensors").is_file()
    with pytest.raises(TrainError, match="nowhere.onnx: neither a weights file"):
        train(tiny(dataset, tmp_path / "x", f"init={tmp_path / 'nowhere.onnx'}"), progress=False)
