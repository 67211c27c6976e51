"""Fixtures for the benchmark suites and the ratio guards: a small real model folder, generated images.

The model folder is made by the project's own pipeline (:mod:`bench.random_model`:
``nets.checkpoint`` then :func:`convert.convert_checkpoint`: export,
simplify, ModelOpt FP16 and INT8 Q/DQ with calibration, accuracy gates), once
per session: a random ResNet-18 at 64x64 with 128-d embeddings, big enough
that compute (not call overhead) dominates a batch, small enough to build in
seconds. Set
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


def build_model_folder(root: Path) -> Path:
    """The small random model through the convert pipeline (see :mod:`bench.random_model`)."""
    from bench.random_model import make_random_model

    return make_random_model(root / "model", **SMALL_MODEL, calib_images=CALIB_IMAGES)


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
    from bench.random_model import write_images

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


@pytest.hookimpl(optionalhook=True)  # pytest-benchmark's hooks: no error where the plugin is absent
def pytest_benchmark_update_machine_info(config, machine_info):
    """Add the machine class (CPU model, ISA flags, cores) that picks the saved baseline folder."""
    from bench.machine import describe_machine, load_average, machine_name

    desc = describe_machine()
    machine_info["machine_class"] = machine_name(desc)
    machine_info["machine_description"] = desc
    machine_info["loadavg"] = load_average()


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_compare_machine_info(config, benchmarksession, machine_info, compared_benchmark):
    """Warn when a run is compared with a baseline saved on another machine class."""
    saved = compared_benchmark.get("machine_info", {}).get("machine_class")
    if saved and saved != machine_info.get("machine_class"):
        benchmarksession.logger.warning(
            f"comparing against a baseline from machine class {saved}, this is {machine_info.get('machine_class')}: "
            f"use --benchmark-storage=bench/baselines/{machine_info.get('machine_class')}")
