"""Speed of the shared preprocessing: decode + centre crop + resize, per image (pytest-benchmark).

Run: ``python -m pytest bench/test_bench_preprocess.py --benchmark-only``.
Groups compare the steps at one source size: decode alone, preprocess
(crop+resize) alone, and both from a file, as every backend's input path does.
"""
from __future__ import annotations

import pytest

from bench.random_model import write_images
from engine.preprocess import decode, load_image, preprocess

ROUNDS, WARMUP, ITER = 20, 3, 10
SIZES = (128, 250, 640)  # a small crop, an LFW image, a phone-camera-sized face photo


@pytest.fixture(scope="module", params=SIZES, ids=[f"src{s}" for s in SIZES])
def source(request, tmp_path_factory):
    path = write_images(tmp_path_factory.mktemp(f"pre{request.param}"), 1, size=request.param)[0]
    return request.param, path


def run(benchmark, fn, *args):
    return benchmark.pedantic(fn, args=args, rounds=ROUNDS, iterations=ITER, warmup_rounds=WARMUP)


def test_decode(benchmark, source):
    size, path = source
    benchmark.group = f"preprocess src{size}"
    data = path.read_bytes()
    img = run(benchmark, decode, data, str(path))
    assert img.shape == (size, size, 3)


def test_crop_resize(benchmark, source):
    size, path = source
    benchmark.group = f"preprocess src{size}"
    rgb = decode(path.read_bytes(), str(path))
    out = run(benchmark, preprocess, rgb, 112)
    assert out.shape == (112, 112, 3)


def test_load_image(benchmark, source):
    size, path = source
    benchmark.group = f"preprocess src{size}"
    out = run(benchmark, load_image, path, 112)
    assert out.shape == (112, 112, 3)
    benchmark.extra_info["images_per_s"] = 1.0 / benchmark.stats.stats.median
