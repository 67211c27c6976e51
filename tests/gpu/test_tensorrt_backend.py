"""TensorRT backend on a real GPU: build a plan from the tiny ONNX, run it, compare with ONNX Runtime.

Skipped (with the reason) where TensorRT (the builder) or a GPU is missing.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))  # tiny_model helper

from engine import cuda  # noqa: E402
from gpu_skips import tensorrt_builder  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]
S, D = 32, 16


@pytest.fixture(scope="module")
def trt():
    return tensorrt_builder()


def build_plan(trt, onnx_path: Path, plan: Path, batches=(1, 4, 8), size: int = S) -> Path:
    """Strongly typed network, one optimisation profile: what convert.build_engine does, minimally."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(onnx_path.read_bytes()), [parser.get_error(i) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("images", *[(b, size, size, 3) for b in batches])
    config.add_optimization_profile(profile)
    data = builder.build_serialized_network(network, config)
    assert data is not None, "engine build failed"
    plan.write_bytes(bytes(data))
    info = cuda.device_info()
    plan.with_name(plan.name + ".json").write_text(json.dumps({
        "tensorrt_version": trt.__version__, **info, "precision": "fp32",
        "profile": dict(zip(("min", "opt", "max"), batches))}))
    return plan


@pytest.fixture(scope="module")
def model_dir(trt, tmp_path_factory):
    import shutil

    from tiny_model import tiny_model_folder

    folder = tmp_path_factory.mktemp("trt-model")
    for name in ("model.json", "model.fp32.onnx"):
        shutil.copy(tiny_model_folder() / name, folder / name)
    build_plan(trt, folder / "model.fp32.onnx", folder / "model.fp32.plan")
    return folder


@pytest.mark.parametrize("graphs", [False, True])
def test_plan_matches_onnxruntime_and_splits_batches(model_dir, graphs):
    from engine.backends import open_backend

    x = np.random.default_rng(0).integers(0, 256, (11, S, S, 3), dtype=np.uint8)
    with open_backend(model_dir, backend="onnxruntime", precision="fp32") as ort:
        ref = ort.embed(x)
    with open_backend(model_dir, backend="tensorrt", cuda_graphs=graphs, timing=True) as be:
        assert be.max_batch == 8
        out = be.embed(x)  # 8 + 3
        single = np.concatenate([be.embed(x[i:i + 1]) for i in range(len(x))])
        assert set(be.last_timings_ms) == {"h2d", "compute", "d2h"}
    assert np.sum(out * ref, axis=1).min() > 0.9999
    np.testing.assert_allclose(out, single, rtol=0, atol=1e-5)


def test_auto_choice_takes_tensorrt(model_dir):
    from engine.backends import open_backend

    with open_backend(model_dir) as be:
        assert be.choice.backend == "tensorrt"


def test_plan_for_another_tensorrt_version_is_refused(model_dir, tmp_path):
    import shutil

    from engine.backends.tensorrt_backend import PlanMismatch, TensorRTBackend

    plan = Path(shutil.copy(model_dir / "model.fp32.plan", tmp_path / "model.fp32.plan"))
    side = json.loads((model_dir / "model.fp32.plan.json").read_text())
    side["tensorrt_version"] = "8.6.1"
    (tmp_path / "model.fp32.plan.json").write_text(json.dumps(side))
    with pytest.raises(PlanMismatch, match="built with TensorRT 8.6.1"):
        TensorRTBackend(plan)
