"""The engine builder's own logic, without TensorRT or a GPU.

Pure helpers (profile shapes, timing-cache key, sidecar) are tested directly;
``build_engine``'s use of the TensorRT API is tested against a recording fake
``tensorrt`` module, so flag wiring, cache handling and file output are
checked here and the real build is left to tests/gpu.
"""
from __future__ import annotations

import hashlib
import json
import sys
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from convert import tensorrt_build as tb
from engine.contract import ContractError, ModelConfig

CONFIG = ModelConfig(arch="resnet18", input_size=32, embedding_dim=16)
GPU = {"gpu_name": "NVIDIA H200", "compute_capability": "9.0", "cuda_runtime_version": "12.8",
       "cuda_driver_version": "13.0"}


# ------------------------------------------------------------------ pure helpers

def test_profile_shapes():
    assert tb.profile_shapes(112, min_batch=1, opt_batch=8, max_batch=64) == {
        "min": (1, 112, 112, 3), "opt": (8, 112, 112, 3), "max": (64, 112, 112, 3)}
    # DLA is static: everything collapses to the opt batch
    assert tb.profile_shapes(112, min_batch=1, opt_batch=4, max_batch=64, dla=True) == {
        "min": (4, 112, 112, 3), "opt": (4, 112, 112, 3), "max": (4, 112, 112, 3)}
    with pytest.raises(ValueError, match="min_batch <= opt_batch <= max_batch"):
        tb.profile_shapes(112, min_batch=8, opt_batch=4, max_batch=16)
    with pytest.raises(ValueError, match="min_batch must be a positive integer"):
        tb.profile_shapes(112, min_batch=0)


def test_timing_cache_key_names_every_field_and_is_a_safe_file_name():
    key = tb.timing_cache_key("NVIDIA H200", "9.0", "10.13.0.35", "12.8")
    assert key == "NVIDIA-H200_sm90_trt10.13.0.35_cuda12.8"
    variants = {key, tb.timing_cache_key("NVIDIA H100 80GB HBM3", "9.0", "10.13.0.35", "12.8"),
                tb.timing_cache_key("NVIDIA H200", "8.9", "10.13.0.35", "12.8"),
                tb.timing_cache_key("NVIDIA H200", "9.0", "11.0.0", "12.8"),
                tb.timing_cache_key("NVIDIA H200", "9.0", "10.13.0.35", "13.0")}
    assert len(variants) == 5
    odd = tb.timing_cache_key("Orin (nvgpu)/x", "8.7", "10.3.0", "12.6")
    assert "/" not in odd and " " not in odd and "(" not in odd
    assert tb.timing_cache_path("/c", key).name == f"timing-{key}.cache"


def test_cuda_version_and_precision_names():
    assert tb.cuda_version_string(12080) == "12.8"
    assert tb.cuda_version_string(13000) == "13.0"
    assert tb.cuda_version_string(None) == "unknown"
    assert tb.precision_from_name("models/x/model.int8.onnx") == "int8"
    assert tb.precision_from_name("other.onnx") == "unknown"


def test_sidecar_contents():
    profile = tb.profile_shapes(32, min_batch=1, opt_batch=4, max_batch=8)
    s = tb.sidecar_contents(precision="fp16", config=CONFIG, profile=profile, onnx_name="model.fp16.onnx",
                            onnx_sha256="ab" * 32, plan_name="model.fp16.plan", plan_sha256="cd" * 32,
                            tensorrt_version="10.3.0", opt_level=4, version_compatible=True,
                            hardware_compatibility_level="ampere_plus", timing_cache_key="k", **GPU)
    assert s["precision"] == "fp16" and s["tensorrt_version"] == "10.3.0"
    assert s["gpu_name"] == "NVIDIA H200" and s["compute_capability"] == "9.0"
    assert s["cuda_runtime_version"] == "12.8" and s["onnx_sha256"] == "ab" * 32
    assert s["profile"] == {"input": "images", "min": [1, 32, 32, 3], "opt": [4, 32, 32, 3], "max": [8, 32, 32, 3]}
    assert s["input"]["name"] == "images" and s["input"]["dtype"] == "uint8" and s["input"]["layout"] == "NHWC"
    assert s["input"]["crop_fraction"] == 1.0
    assert s["input"]["shape"] == [-1, 32, 32, 3] and s["output"] == {
        "name": "embeddings", "dtype": "float32", "shape": [-1, 16], "l2_normalised": True}
    flags = s["build_flags"]
    assert flags["strongly_typed"] is True and flags["builder_optimization_level"] == 4
    assert flags["version_compatible"] is True and flags["hardware_compatibility_level"] == "ampere_plus"
    assert flags["dla_core"] is None and flags["gpu_fallback"] is False
    json.dumps(s)  # JSON-ready


def test_the_runtime_accepts_our_sidecar_only_on_a_matching_machine():
    backend = pytest.importorskip("engine.backends.tensorrt_backend")
    profile = tb.profile_shapes(32)
    s = tb.sidecar_contents(precision="int8", config=CONFIG, profile=profile, onnx_name="m", onnx_sha256="",
                            plan_name="p", plan_sha256="", tensorrt_version="10.3.0", **GPU)
    same = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H200", "compute_capability": "9.0"}
    backend.check_plan_sidecar(s, same)
    with pytest.raises(backend.PlanMismatch):
        backend.check_plan_sidecar(s, {**same, "gpu_name": "NVIDIA A100", "compute_capability": "8.0"})
    with pytest.raises(backend.PlanMismatch):
        backend.check_plan_sidecar(s, {**same, "tensorrt_version": "10.4.0"})


# ------------------------------------------------------------------ without TensorRT

def tiny_onnx(path, size: int = 32, dim: int = 16):
    """A contract-valid graph (uint8 NHWC -> float (B, D)) without torch: cast, flatten, matmul."""
    w = numpy_helper.from_array(np.ones((size * size * 3, dim), np.float32) / 100, "w")
    shape = numpy_helper.from_array(np.array([-1, size * size * 3], np.int64), "shape")
    nodes = [helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Reshape", ["f", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["embeddings"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.UINT8,
                                                                            ["batch", size, size, 3])],
                              [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", dim])],
                              [w, shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_missing_tensorrt_is_explained(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(tb.TensorRTUnavailable, match="TensorRT is not installed"):
        tb.load_tensorrt()
    with pytest.raises(tb.TensorRTUnavailable, match="TensorRT is not installed"):
        tb.build_engine(tiny_onnx(tmp_path / "model.fp32.onnx"), config=CONFIG, timing_cache=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fp32.onnx"]
    lean = types.ModuleType("tensorrt")
    lean.__version__ = "10.3.0"
    monkeypatch.setitem(sys.modules, "tensorrt", lean)
    with pytest.raises(tb.TensorRTUnavailable, match="without a builder"):
        tb.load_tensorrt()


def test_gpu_info_without_a_usable_gpu_is_explained(monkeypatch):
    from engine import cuda

    class NoGPU:  # the two cuda-python calls a machine without a GPU gets as far as
        def cudaGetDeviceCount(self):
            return 100, None

        def cudaGetErrorString(self, err):
            return 0, b"no CUDA-capable device is detected"

    monkeypatch.setattr(cuda, "load_runtime", NoGPU)
    with pytest.raises(tb.TensorRTUnavailable, match=r"^no usable CUDA GPU \(cudaGetDeviceCount: .*no CUDA-capable "
                                                      r"device is detected\); a TensorRT engine can only be built"):
        tb.gpu_info(0)

    def missing():
        raise cuda.CudaUnavailable("cuda-python is not installed")

    monkeypatch.setattr(cuda, "load_runtime", missing)
    with pytest.raises(tb.TensorRTUnavailable, match="^cuda-python is not installed"):
        tb.gpu_info(0)


def test_corrupt_onnx_fails_before_tensorrt(tmp_path):
    bad = tmp_path / "model.int8.onnx"
    bad.write_bytes(b"not onnx" * 20)
    with pytest.raises(ContractError, match="model.int8.onnx: not a readable ONNX model"):
        tb.build_engine(bad, config=CONFIG, timing_cache=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx"]


def test_cli_without_tensorrt(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    onnx_path = tiny_onnx(tmp_path / "model.fp16.onnx")
    assert tb.main(["--onnx", str(onnx_path), "--timing-cache", "none"]) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err
    assert not (tmp_path / "model.fp16.plan").exists()


# ------------------------------------------------------------------ against a recording fake

class _Enum:
    def __init__(self, **members):
        for k, v in members.items():
            setattr(self, k, v)


def fake_tensorrt(version="10.3.0", strongly_typed_flag=True, parse_ok=True, build_ok=True):
    """A stand-in for the tensorrt module that records every call build_engine makes."""
    rec = {"flags": set(), "timing_cache_in": None, "profile": None}
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.recorded = rec

    class Logger:
        WARNING, VERBOSE = "warning", "verbose"

        def __init__(self, level):
            rec["log_level"] = level

    creation = {"STRONGLY_TYPED": 5} if strongly_typed_flag else {}
    trt.Logger = Logger
    trt.NetworkDefinitionCreationFlag = _Enum(**creation)
    trt.BuilderFlag = _Enum(VERSION_COMPATIBLE="VERSION_COMPATIBLE", GPU_FALLBACK="GPU_FALLBACK")
    trt.HardwareCompatibilityLevel = _Enum(NONE="NONE", AMPERE_PLUS="AMPERE_PLUS",
                                           SAME_COMPUTE_CAPABILITY="SAME_COMPUTE_CAPABILITY")
    trt.DeviceType = _Enum(GPU="GPU", DLA="DLA")
    trt.MemoryPoolType = _Enum(WORKSPACE="WORKSPACE")

    class Tensor:
        def __init__(self, name):
            self.name = name

    class Network:
        num_inputs = 0
        inputs: list = []

        def get_input(self, i):
            return Tensor(self.inputs[i])

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            rec["parsed"] = path
            model = onnx.load(path)
            self.network.inputs = [i.name for i in model.graph.input]
            self.network.num_inputs = len(self.network.inputs)
            return parse_ok

        def get_error(self, i):
            return "In node 3 (Conv): unsupported"

    class Cache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return b"CACHE" + self.data[-1:] + b"+"

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            rec["profile"] = (name, tuple(lo), tuple(opt), tuple(hi))

    class Config:
        def __init__(self):
            self.hardware_compatibility_level = "NONE"
            self.default_device_type = "GPU"
            self.DLA_core = -1
            self.builder_optimization_level = None

        def add_optimization_profile(self, profile):
            rec["profiles_added"] = rec.get("profiles_added", 0) + 1

        def set_flag(self, flag):
            rec["flags"].add(flag)

        def set_memory_pool_limit(self, pool, size):
            rec["workspace"] = (pool, size)

        def create_timing_cache(self, data):
            rec["timing_cache_in"] = bytes(data)
            return Cache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            rec["ignore_mismatch"] = ignore_mismatch

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            rec["network_flags"] = flags
            return Network()

        def create_builder_config(self):
            rec["config"] = Config()
            return rec["config"]

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"\x00PLANBYTES\x01" if build_ok else None

    trt.Builder, trt.OnnxParser = Builder, Parser
    return trt


@pytest.fixture
def fake(monkeypatch):
    def install(**kwargs):
        trt = fake_tensorrt(**kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(tb, "gpu_info", lambda device=0: dict(GPU))
        return trt.recorded
    return install


def test_build_writes_plan_sidecar_and_keyed_timing_cache(fake, tmp_path):
    rec = fake()
    onnx_path = tiny_onnx(tmp_path / "model.fp16.onnx")
    cache_dir = tmp_path / "cache"
    sidecar = tb.build_engine(onnx_path, config=CONFIG, min_batch=1, opt_batch=4, max_batch=16,
                              timing_cache=cache_dir, opt_level=5)
    plan = tmp_path / "model.fp16.plan"
    assert plan.read_bytes() == b"\x00PLANBYTES\x01"  # exactly TensorRT's bytes, nothing prepended
    on_disk = json.loads((tmp_path / "model.fp16.plan.json").read_text())
    assert on_disk == sidecar
    assert sidecar["precision"] == "fp16" and sidecar["tensorrt_version"] == "10.3.0"
    assert sidecar["onnx_sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert sidecar["plan_sha256"] == hashlib.sha256(plan.read_bytes()).hexdigest()
    assert sidecar["profile"]["max"] == [16, 32, 32, 3]
    assert rec["network_flags"] == 1 << 5  # strongly typed on TensorRT 10
    assert rec["profile"] == ("images", (1, 32, 32, 3), (4, 32, 32, 3), (16, 32, 32, 3))
    assert rec["profiles_added"] == 1 and rec["config"].builder_optimization_level == 5
    assert rec["flags"] == set() and rec["ignore_mismatch"] is False
    key = tb.timing_cache_key("NVIDIA H200", "9.0", "10.3.0", "12.8")
    cache_file = tb.timing_cache_path(cache_dir, key)
    assert rec["timing_cache_in"] == b"" and cache_file.read_bytes() == b"CACHE+"
    assert sidecar["build_flags"]["timing_cache_key"] == key
    # the second build starts from the saved cache
    tb.build_engine(onnx_path, config=CONFIG, timing_cache=cache_dir)
    assert rec["timing_cache_in"] == b"CACHE+"


def test_build_flags_reach_tensorrt(fake, tmp_path):
    rec = fake()
    onnx_path = tiny_onnx(tmp_path / "model.int8.onnx")
    sidecar = tb.build_engine(onnx_path, tmp_path / "out" / "engine.plan", config=CONFIG, opt_batch=2,
                              max_batch=8, timing_cache=None, version_compatible=True,
                              hardware_compat="ampere_plus", dla_core=1, workspace_gb=0.5)
    cfg = rec["config"]
    assert rec["flags"] == {"VERSION_COMPATIBLE", "GPU_FALLBACK"}
    assert cfg.hardware_compatibility_level == "AMPERE_PLUS"
    assert cfg.default_device_type == "DLA" and cfg.DLA_core == 1
    assert rec["workspace"] == ("WORKSPACE", 1 << 29)
    assert rec["profile"][1:] == ((2, 32, 32, 3),) * 3  # static for DLA
    assert rec["timing_cache_in"] is None
    assert (tmp_path / "out" / "engine.plan").is_file() and (tmp_path / "out" / "engine.plan.json").is_file()
    flags = sidecar["build_flags"]
    assert flags["dla_core"] == 1 and flags["gpu_fallback"] and flags["version_compatible"]
    assert flags["hardware_compatibility_level"] == "ampere_plus" and flags["timing_cache_key"] is None
    assert sidecar["precision"] == "int8"


def test_tensorrt_11_without_the_strongly_typed_flag(fake, tmp_path):
    rec = fake(version="11.0.0", strongly_typed_flag=False)
    sidecar = tb.build_engine(tiny_onnx(tmp_path / "model.fp32.onnx"), config=CONFIG, timing_cache=None)
    assert rec["network_flags"] == 0 and sidecar["tensorrt_version"] == "11.0.0"


def test_parser_and_build_failures_leave_no_plan(fake, tmp_path):
    fake(parse_ok=False)
    onnx_path = tiny_onnx(tmp_path / "model.fp32.onnx")
    with pytest.raises(tb.EngineBuildError, match="ONNX parser failed: In node 3"):
        tb.build_engine(onnx_path, config=CONFIG, timing_cache=None)
    fake(build_ok=False)
    with pytest.raises(tb.EngineBuildError, match="could not build"):
        tb.build_engine(onnx_path, config=CONFIG, timing_cache=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fp32.onnx"]


def test_bad_options(fake, tmp_path):
    fake()
    onnx_path = tiny_onnx(tmp_path / "model.fp32.onnx")
    with pytest.raises(ValueError, match="hardware_compat"):
        tb.build_engine(onnx_path, config=CONFIG, hardware_compat="turing_plus")
    with pytest.raises(ValueError, match="opt_level"):
        tb.build_engine(onnx_path, config=CONFIG, opt_level=9)
    with pytest.raises(ContractError, match="input size 32, model.json says 64"):
        tb.build_engine(onnx_path, config=ModelConfig(arch="resnet18", input_size=64, embedding_dim=16))


def test_the_face_detector_builds_with_its_own_io_names(fake, tmp_path):
    """No model.json beside the detector: the plan's contract comes from its graph (192 px, 'detections')."""
    import shutil

    from engine.detect import detector_path

    rec = fake()
    onnx_path = tmp_path / "blazeface_full_range.onnx"
    shutil.copy(detector_path(), onnx_path)
    sidecar = tb.build_engine(onnx_path, precision="fp32", max_batch=8, timing_cache=None)
    assert (tmp_path / "blazeface_full_range.plan").is_file()  # where open_detector(backend="tensorrt") looks
    assert rec["profile"] == ("images", (1, 192, 192, 3), (8, 192, 192, 3), (8, 192, 192, 3))
    assert sidecar["output"]["name"] == "detections" and sidecar["output"]["shape"] == [-1, 2304 * 17]
