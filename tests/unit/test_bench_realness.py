"""bench.realness and bench.identity_cost on a tiny model with a realness coordinate, through the runtime."""
from __future__ import annotations

import json

import numpy as np
import pytest

from engine.contract import ModelConfig
from test_train import _dfdc_folder, dataset  # noqa: F401  (module fixture of synthetic train/val folders)
from tiny_model import TINY, export_onnx, random_model


@pytest.fixture(scope="module")
def realness_model(tmp_path_factory):
    """A random tiny model with the realness coordinate, calibrated so that some faces look fake."""
    from nets.checkpoint import save_model

    folder = tmp_path_factory.mktemp("realness-model")
    config = ModelConfig(**TINY, realness_weight=2.0, realness_bias=0.0, threshold=0.3)
    model = random_model(config, seed=1)
    save_model(model, folder, config)
    export_onnx(model, folder / "model.fp32.onnx", config.input_size)
    return folder


def test_identity_only_drops_and_renormalises_the_last_coordinate():
    from bench.identity_cost import identity_only

    emb = np.array([[0.6, 0.0, -0.8], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(identity_only(emb), [[1.0, 0.0], [1.0, 0.0]])


def test_identity_cost_scores_the_same_pairs_both_ways(dataset, realness_model, tmp_path, capsys):  # noqa: F811
    from bench.identity_cost import main

    out = tmp_path / "cost.json"
    assert main(["--pairs", str(dataset / "val"), "--model", str(realness_model), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["scored"] == result["pairs"] == 18
    for name in ("shipped", "identity_only"):
        assert 0.0 <= result[name]["eer_real"] <= 1.0 and result[name]["eer_fake"] is not None
    assert result["impostor_eer_delta"] == pytest.approx(result["shipped"]["eer_real"]
                                                         - result["identity_only"]["eer_real"])
    assert "impostor EER: shipped" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--model", str(realness_model)])


def test_realness_bench_decides_fake_vs_source_pairs_at_the_threshold(realness_model, tmp_path, capsys):
    from bench.realness import main
    from engine.backends import open_backend
    from engine.datasets import read_dfdc_faces, split_by_identity
    from engine.api import realness

    dfdc = _dfdc_folder(tmp_path / "dfdc", n=10)
    out = tmp_path / "r.json"
    assert main(["--dfdc", str(dfdc), "--val-share", "0.5", "--model", str(realness_model), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == 10 and result["pairs_scored"] == 5
    # the same decisions by hand: a fake-vs-source pair is refused when its cosine is below the threshold
    _, val = split_by_identity(read_dfdc_faces(dfdc), 0.5, seed=0)
    backend = open_backend(str(realness_model))
    from engine.embedder import Embedder

    with Embedder(backend, progress=False) as emb:
        res = emb.embed_paths([s.path for s in val])
    e = res.embeddings
    src = {s.identity: i for i, s in enumerate(val) if not s.is_fake}
    refused = [float(e[i] @ e[src[s.identity]]) < 0.3 for i, s in enumerate(val) if s.is_fake]
    assert result["fake_pairs_refused"] == pytest.approx(np.mean(refused))
    t = realness(e, 2.0)
    real = np.array([not s.is_fake for s in val])
    assert result["real_faces_looking_fake"] == pytest.approx(float((t[real] < 0).mean()))
    assert "fake-vs-source pairs refused" in capsys.readouterr().out
    assert main(["--dfdc", str(tmp_path / "nowhere"), "--model", str(realness_model)]) == 2
