"""Speed of detection + alignment against the embedding alone, with the bundled model on real photos.

Run: ``python -m pytest bench/test_bench_faces.py --benchmark-only``. Both rows
embed the same 64 LFW photos with the Embedder (decode threads, batches of
32, the default CPU backend); ``align-face`` adds the detector and the warp,
``align-none`` is the centre crop. Needs the shared LFW data ($FACE_DATA).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

ROUNDS, WARMUP, IMAGES = 5, 1, 64


@pytest.fixture(scope="module")
def lfw_photos() -> list[Path]:
    root = Path(os.environ.get("FACE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    files = sorted((root / "lfw-deepfunneled").glob("*/*_0001.jpg"))[:IMAGES]
    if len(files) < IMAGES:
        pytest.skip(f"shared LFW data not found under {root} (set FACE_DATA)")
    return files


@pytest.mark.parametrize("align", ["face", "none"])
def test_embedder_align(benchmark, lfw_photos, align):
    from engine.backends import open_backend
    from engine.embedder import Embedder

    benchmark.group = "faces"
    backend = open_backend(None, max_batch=32)
    backend.config = dataclasses.replace(backend.config, align=align)
    emb = Embedder(backend, batch_size=32, progress=False)
    try:
        result = benchmark.pedantic(lambda: emb.embed_paths(lfw_photos), rounds=ROUNDS, iterations=1,
                                    warmup_rounds=WARMUP)
    finally:
        emb.close()
    assert result.ok.sum() >= IMAGES - 2 and np.isfinite(result.embeddings[result.ok]).all()
    benchmark.extra_info.update(align=align, backend=backend.name, precision=backend.precision,
                                images_per_s=IMAGES / benchmark.stats.stats.median)
