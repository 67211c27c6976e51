"""Speed of the embedder end to end: files -> decode (threads) -> batches -> backend -> pairs scored.

Run: ``python -m pytest bench/test_bench_embedder.py --benchmark-only``.
The group compares the whole path with the backend alone on the same
already-decoded images, so the table shows what file reading, decoding and
batching cost on top of inference. ``pairs_per_s`` is in each row's extra info.
"""
from __future__ import annotations

import numpy as np
import pytest

from bench.conftest import open_or_skip
from engine.preprocess import load_image

ROUNDS, WARMUP = 5, 1


def open_default(model):
    """The runtime's automatic CPU choice, as `python -m engine.verify` would open it."""
    return open_or_skip(model, "auto", None, max_batch=32)


def score_pairs(emb: np.ndarray) -> np.ndarray:
    """Cosine of consecutive images (0,1), (2,3), ... as pairs."""
    return np.einsum("ij,ij->i", emb[0::2], emb[1::2])


def test_embedder_pairs(benchmark, bench_model, image_folder):
    from engine.embedder import Embedder

    benchmark.group = "embedder"
    default_backend = open_default(bench_model)
    emb = Embedder(default_backend, batch_size=32, progress=False)  # owns and closes the backend
    try:
        def run():
            result = emb.embed_paths(image_folder)
            return score_pairs(result.embeddings)

        scores = benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP)
    finally:
        emb.close()
    assert scores.shape == (len(image_folder) // 2,) and np.isfinite(scores).all()
    benchmark.extra_info.update(backend=default_backend.name, precision=default_backend.precision,
                                pairs_per_s=(len(image_folder) // 2) / benchmark.stats.stats.median)


def test_backend_only_same_images(benchmark, bench_model, image_folder):
    benchmark.group = "embedder"
    with open_default(bench_model) as default_backend:
        images = np.stack([load_image(p, default_backend.input_size) for p in image_folder])

        def run():
            return score_pairs(default_backend.embed(images))

        scores = benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP)
    assert scores.shape == (len(image_folder) // 2,) and np.isfinite(scores).all()
    benchmark.extra_info.update(backend=default_backend.name, precision=default_backend.precision,
                                pairs_per_s=(len(image_folder) // 2) / benchmark.stats.stats.median)
