"""Fixtures for the benchmark suites and the ratio guards: a small real model folder, generated images.

The model folder is made by the project's own pipeline (``training.checkpoint``
then :func:`convert.convert_checkpoint`: export, simplify, ModelOpt FP16 and
INT8 Q/DQ with calibration, accuracy gates), once per session: a random
ResNet-18 at 64x64 with 128-d embeddings, big enough that compute (not call
overhead) dominates a batch, small enough to build in seconds. Set
``BENCH_MODEL=/path/to/model_folder`` to measure a real model instead.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

SMALL_MODEL = dict(arch="resnet18", input_size=64, embedding_dim=128)
CALIB_IMAGES = 32


def generated_image(seed: int, size: int = 128) -> np.ndarray:
    """A deterministic smooth RGB image (blurred noise + a bright ellipse): decodes and resizes like a photo."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    img = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    cv2.ellipse(img, (size // 2, size // 2), (size // 4, size // 3), 0, 0, 360,
                tuple(int(v) for v in rng.integers(120, 255, 3)), -1)
    return img


def write_images(folder: Path, count: int, size: int = 128, seed: int = 0) -> list[Path]:
    """``count`` JPEGs of generated images under ``folder``."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:04d}.jpg"
        ok, buf = cv2.imencode(".jpg", generated_image(seed + i, size)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
        assert ok
        path.write_bytes(buf.tobytes())
        paths.append(path)
    return paths


def build_model_folder(root: Path, precisions: str = "fp32,fp16,int8") -> Path:
    """Random small model -> run folder -> ``python -m convert``'s model folder (+ weights for torch)."""
    import shutil

    import torch

    from convert import convert_checkpoint
    from convert.calibration import CalibrationImage, write_manifest
    from engine.contract import ModelConfig
    from training.checkpoint import save_model
    from training.model import get_model

    torch.manual_seed(0)
    config = ModelConfig(**SMALL_MODEL)
    save_model(get_model(config).eval(), root / "run", config)
    paths = write_images(root / "calib", CALIB_IMAGES)
    write_manifest([CalibrationImage(p.name, str(i), False) for i, p in enumerate(paths)], root / "calib.csv")
    out = root / "model"
    convert_checkpoint(root / "run", out, precision=precisions, calib_manifest=root / "calib.csv",
                       calib_root=root / "calib", gate_images=CALIB_IMAGES, quiet=True)
    shutil.copy(root / "run" / "model.safetensors", out / "model.safetensors")  # for the torch backend
    return out


@pytest.fixture(scope="session")
def bench_model(tmp_path_factory) -> Path:
    """A model folder: $BENCH_MODEL, or the small random model built through the convert pipeline."""
    given = os.environ.get("BENCH_MODEL")
    if given:
        if not (Path(given) / "model.json").is_file():
            pytest.fail(f"BENCH_MODEL={given}: not a model folder (no model.json)")
        return Path(given)
    return build_model_folder(tmp_path_factory.mktemp("bench-model"))


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> list[Path]:
    """64 generated 128x128 JPEGs (decode + centre crop + resize, like real face crops)."""
    return write_images(tmp_path_factory.mktemp("bench-images"), 64)


def openvino_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def open_or_skip(model, backend: str, precision: str, **kwargs):
    """``open_backend`` or skip with the reason (backend not installed here, precision not in the folder)."""
    from engine.backends import BackendError, open_backend

    if backend == "openvino" and not openvino_installed():
        pytest.skip("openvino is not installed here")
    try:
        return open_backend(model, backend=backend, precision=precision, **kwargs)
    except BackendError as exc:
        pytest.skip(f"{backend}:{precision} not available: {exc}")


def random_batch(batch: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def interleaved_medians(fns: dict, rounds: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternation (A B A B ...).

    Alternating makes a burst of load from another process hit every
    candidate alike, so their ratio survives a noisy shared machine.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        order = list(fns.items())
        if r % 2:
            order.reverse()
        for name, fn in order:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}
