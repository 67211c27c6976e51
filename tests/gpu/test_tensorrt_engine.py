"""convert.tensorrt_build on a real GPU: FP32/FP16/INT8 plans from the conversion's ONNX files.

Each plan is built with ``build_engine``, checked against its sidecar, then run
through the runtime's TensorRT backend and compared with ONNX Runtime on the
same ONNX file. Skipped (with the reason) where TensorRT's builder or a GPU is missing.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from gpu_skips import tensorrt_builder

pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]
SIZE, DIM = 32, 16


@pytest.fixture(scope="module")
def trt():
    return tensorrt_builder()


def _faces(n: int, offset: int = 0) -> np.ndarray:
    from conftest import synthetic_face

    return np.stack([synthetic_face(offset + i, SIZE) for i in range(n)])


@pytest.fixture(scope="module")
def converted(trt, tmp_path_factory):
    """A converted tiny model folder with all three precisions (no engines yet)."""
    import torch

    from convert.export import export_onnx
    from convert.precision import convert_fp16, quantize_int8
    from convert.simplify import simplify_onnx
    from engine.contract import ModelConfig
    from nets.model import get_model

    pytest.importorskip("modelopt.onnx.quantization", reason="ModelOpt's ONNX tools not installed")
    config = ModelConfig(arch="resnet18", input_size=SIZE, embedding_dim=DIM)
    torch.manual_seed(0)
    model = get_model(config).eval()
    folder = tmp_path_factory.mktemp("engine")
    config.save(folder / "model.json")
    export_onnx(model, folder / "raw.onnx")
    simplify_onnx(folder / "raw.onnx", folder / "model.fp32.onnx", config=config)
    calib = _faces(32)
    convert_fp16(folder / "model.fp32.onnx", folder / "model.fp16.onnx", calib, config=config)
    quantize_int8(folder / "model.fp32.onnx", folder / "model.int8.onnx", calib, config=config)
    return folder, config


@pytest.mark.parametrize("precision, min_cos", [("fp32", 0.9999), ("fp16", 0.999), ("int8", 0.95)])
def test_build_and_run(converted, precision, min_cos, tmp_path):
    from convert.gate import compare_embeddings, embed_onnx
    from convert.tensorrt_build import build_engine, timing_cache_path
    from engine.backends.tensorrt_backend import TensorRTBackend

    folder, config = converted
    onnx_path = folder / f"model.{precision}.onnx"
    plan = folder / f"model.{precision}.plan"
    sidecar = build_engine(onnx_path, plan, config=config, min_batch=1, opt_batch=4, max_batch=8,
                           timing_cache=tmp_path / "cache")
    assert plan.is_file() and json.loads(plan.with_name(plan.name + ".json").read_text()) == sidecar
    assert sidecar["precision"] == precision and sidecar["profile"]["max"] == [8, SIZE, SIZE, 3]
    key = sidecar["build_flags"]["timing_cache_key"]
    assert timing_cache_path(tmp_path / "cache", key).stat().st_size > 0
    x = _faces(7, offset=100)
    with TensorRTBackend(plan) as backend:  # checks the sidecar against this machine first
        got = backend.embed(x)
    assert got.shape == (7, DIM) and got.dtype == np.float32
    parity = compare_embeddings(embed_onnx(onnx_path, x), got)
    assert parity["cos_min"] > min_cos, parity


def test_plan_tensors_follow_the_contract(converted, trt, tmp_path):
    from convert.tensorrt_build import build_engine

    folder, config = converted
    plan = tmp_path / "model.int8.plan"
    build_engine(folder / "model.int8.onnx", plan, config=config, min_batch=1, opt_batch=2, max_batch=4,
                 timing_cache=None)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan.read_bytes())
    assert engine is not None
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    assert sorted(names) == ["embeddings", "images"]
    assert engine.get_tensor_dtype("images") == trt.DataType.UINT8
    assert engine.get_tensor_dtype("embeddings") == trt.DataType.FLOAT
    lo, opt, hi = engine.get_tensor_profile_shape("images", 0)
    assert (tuple(lo), tuple(opt), tuple(hi)) == ((1, SIZE, SIZE, 3), (2, SIZE, SIZE, 3), (4, SIZE, SIZE, 3))


def test_convert_command_builds_engines(trt, tmp_path):
    import torch

    from convert import convert_checkpoint
    from engine.contract import ModelConfig
    from nets.checkpoint import save_model
    from nets.model import get_model

    config = ModelConfig(arch="resnet18", input_size=SIZE, embedding_dim=DIM)
    torch.manual_seed(0)
    save_model(get_model(config).eval(), tmp_path / "run", config)
    out = tmp_path / "model"
    report = convert_checkpoint(tmp_path / "run", out, precision="fp32,fp16", engine=True, quiet=True,
                                engine_options={"max_batch": 8, "opt_batch": 4, "timing_cache": None})
    names = sorted(p.name for p in out.iterdir())
    for p in ("fp32", "fp16"):
        assert f"model.{p}.plan" in names and f"model.{p}.plan.json" in names
    assert set(report["engines"]) == {"fp32", "fp16"}
    assert ModelConfig.load(out / "model.json").extra["engines"] == {"fp32": "model.fp32.plan",
                                                                    "fp16": "model.fp16.plan"}
