"""The shipped face detector as a real TensorRT engine beside the embedder (skips without TensorRT + GPU)."""
from __future__ import annotations

import numpy as np
import pytest

from gpu_skips import tensorrt_builder


@pytest.fixture(scope="module")
def trt():
    return tensorrt_builder()


def test_detector_engine_matches_onnx_runtime(trt, tmp_path):
    from test_tensorrt_backend import build_plan

    from engine.backends.onnxruntime_backend import OnnxRuntimeBackend
    from engine.detect import _io_shape, detector_path, open_detector

    onnx_path = detector_path("blazeface_full_range")
    size, dim = _io_shape(onnx_path)
    plan = build_plan(trt, onnx_path, tmp_path / "blazeface_full_range.plan", batches=(1, 8, 32), size=size)
    images = np.random.default_rng(0).integers(0, 256, (9, size, size, 3), dtype=np.uint8)
    ort = OnnxRuntimeBackend(onnx_path, input_size=size, embedding_dim=dim, max_batch=32, input_name="images",
                             output_name="detections")
    detector = open_detector(backend="tensorrt", plan=plan)
    ours, ref = detector.backend.embed(images), ort.embed(images)
    # decoded boxes/keypoints are in pixels of the 192 px input, scores are probabilities
    np.testing.assert_allclose(ours, ref, atol=0.05, rtol=1e-3)
    assert detector.detect_batch(list(images)) is not None
    detector.close()
    ort.close()
