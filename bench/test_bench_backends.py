"""Speed of every available backend x precision at batch 1, 8 and 32 (pytest-benchmark).

Run: ``python -m pytest bench/test_bench_backends.py --benchmark-only``.
One group per batch size, so a group's table compares backends and
precisions on equal work. Each backend is opened for its own test and closed
after it, so only one runtime's threads are alive at a time (PyTorch, whose
OpenMP pool outlives its calls, runs last). The model is the small one from
``bench/conftest.py`` or ``$BENCH_MODEL``. Absent runtimes, GPUs and files
skip with the reason.
"""
from __future__ import annotations

import pytest

from bench.conftest import open_or_skip, random_batch

ROUNDS, WARMUP = 10, 3
BATCHES = (1, 8, 32)
CASES = [
    ("onnxruntime", "fp32"), ("onnxruntime", "fp16"), ("onnxruntime", "int8"),
    ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"),
    ("tensorrt", "fp16"), ("tensorrt", "int8"),
    ("torch", "fp32"), ("torch", "bf16"),
]


@pytest.mark.parametrize("batch", BATCHES, ids=[f"b{b}" for b in BATCHES])
@pytest.mark.parametrize("backend,precision", CASES, ids=[f"{b}-{p}" for b, p in CASES])
def test_backend_embed(benchmark, bench_model, backend, precision, batch):
    with open_or_skip(bench_model, backend, precision, max_batch=max(BATCHES)) as be:
        images = random_batch(batch, be.input_size)
        benchmark.group = f"backends batch {batch}"
        benchmark.extra_info.update(backend=backend, precision=precision, batch=batch, device=str(be.device))
        out = benchmark.pedantic(be.embed, args=(images,), rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP)
        assert out.shape == (batch, be.embedding_dim)
        benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.median
