"""The pinned-buffer / stream path on a real GPU, and the PyTorch backend through it.

Skipped (with the reason) where cuda-python or a CUDA device is missing; run
on a GPU machine with tests/gpu/run_gpu_checks.sh.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))  # tiny_model helper

from engine import cuda  # noqa: E402
from gpu_skips import cuda_runtime  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def rt():
    return cuda_runtime()


@pytest.fixture(scope="module")
def torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch.cuda.is_available() is False (CPU build of torch or no driver)")
    return torch


def test_device_info_reads_the_gpu(rt):
    info = cuda.device_info(0, rt)
    assert info["gpu_name"] and info["compute_capability"].count(".") == 1


def test_round_trip_through_device_memory(rt):
    data = np.random.default_rng(0).integers(0, 256, (64, 112, 112, 3), dtype=np.uint8)
    with cuda.PinnedBuffer(data.shape, np.uint8, rt) as src, cuda.DeviceBuffer(data.shape, np.uint8, rt) as dev, \
            cuda.PinnedBuffer(data.shape, np.uint8, rt) as dst, cuda.Stream(rt) as stream:
        src.array[:] = data
        start, end = cuda.Event(rt), cuda.Event(rt)
        start.record(stream)
        stream.copy_to_device(dev, src, src.nbytes)
        stream.copy_to_host(dst, dev, dev.nbytes)
        end.record(stream)
        stream.synchronize()
        np.testing.assert_array_equal(dst.array, data)
        assert start.elapsed_ms(end) > 0
        start.close()
        end.close()


def test_graph_replays_captured_copies(rt):
    with cuda.PinnedBuffer((1024,), np.float32, rt) as src, cuda.DeviceBuffer((1024,), np.float32, rt) as dev, \
            cuda.PinnedBuffer((1024,), np.float32, rt) as dst, cuda.Stream(rt) as stream:
        def work():
            stream.copy_to_device(dev, src, src.nbytes)
            stream.copy_to_host(dst, dev, dev.nbytes)

        graph = cuda.CudaGraph(stream, work, rt)
        for value in (1.0, 2.5):
            src.array[:] = value
            graph.launch(stream)
            stream.synchronize()
            assert (dst.array == value).all()
        graph.free()


def test_error_codes_become_exceptions_naming_the_call(rt):
    with pytest.raises(cuda.CudaError, match="cudaMalloc failed"):
        cuda.DeviceBuffer((1 << 62,), np.uint8, rt)  # far more than any GPU has


@pytest.mark.parametrize("precision, min_cos", [("fp32", 0.9999), ("fp16", 0.999)])
def test_torch_backend_on_cuda_matches_cpu(rt, torch_cuda, precision, min_cos):
    from engine.backends import open_backend
    from tiny_model import tiny_model_folder

    folder = tiny_model_folder()
    x = np.random.default_rng(1).integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)
    with open_backend(folder, backend="torch") as cpu:
        ref = cpu.embed(x)
    with open_backend(folder, backend="torch", device="cuda", precision=precision, max_batch=4, timing=True) as gpu:
        out = gpu.embed(x)  # 4 + 4 + 3: split across the pinned buffers
        single = np.concatenate([gpu.embed(x[i:i + 1]) for i in range(len(x))])
        assert set(gpu.last_timings_ms) == {"h2d", "compute", "d2h"}
    cos = np.sum(out * ref, axis=1)
    assert cos.min() > min_cos
    np.testing.assert_allclose(out, single, rtol=0, atol=1e-3 if precision == "fp16" else 1e-5)
