"""What the GPU tests need, each returned or the test skipped with the reason it is missing.

One place for these checks, so every GPU test file skips for the same reasons
with the same words. A helper module rather than tests/gpu/conftest.py: the
tests import ``synthetic_face`` by ``from conftest import ...``, and a second
conftest module would shadow tests/conftest.py for them.
"""
from __future__ import annotations

import pytest

from engine import cuda


def cuda_runtime():
    """cuda-python's runtime module, with at least one usable CUDA device."""
    try:
        rt = cuda.load_runtime()
    except cuda.CudaUnavailable as exc:
        pytest.skip(str(exc))
    count, why = cuda.device_count(rt)
    if count == 0:
        pytest.skip(f"no CUDA device: {why}")
    return rt


def tensorrt_builder():
    """The ``tensorrt`` module with its builder, on a machine with a usable CUDA device."""
    trt = pytest.importorskip("tensorrt", reason="TensorRT Python package not installed")
    cuda_runtime()
    if not hasattr(trt, "Builder"):
        pytest.skip("only the TensorRT lean/dispatch runtime is installed; building a plan needs the builder")
    return trt
