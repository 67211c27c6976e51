"""Ratio guards: speed relations that hold on any machine, measured within one run.

Absolute times on shared 2-core machines swing by 2x; ratios of two things
timed in alternation (A B A B ..., medians) do not. Each guard catches a
class of regression that an absolute threshold could not tell from noise:

- batching: embedding 16 images in one call must beat 16 calls of one image
  (a backend that silently loops per image, or re-plans per call, fails);
- the default CPU precision must not be slower than FP32 on its own backend
  (an INT8 file whose Q/DQ the runtime does not fuse runs FP32 kernels plus
  dequantisation, and is slower: then int8 must not be the default there);
- the default CPU backend must not be slower than ONNX Runtime, the
  portable fallback, on the bundled model (else the automatic choice is
  wrong for this machine);
- the embedder's threads, prefetching and batching must cost no more than
  decoding and inferring the same files one after the other by hand.

Tolerances are wide (noise on a shared machine is large); a failure means a
factor, not a few percent. These run in the unit-test command (pytest.ini
testpaths) without pytest-benchmark's timing machinery, so
``--benchmark-only`` skips them: run ``python -m pytest bench/test_ratio_guards.py``
(add ``--junitxml=FILE`` to keep each measured ratio as a test property).
"""
from __future__ import annotations

import numpy as np
import pytest

from bench.conftest import interleaved_medians, open_or_skip, random_batch

ROUNDS = 7


def record(record_property, **info) -> None:
    """Keep the measured ratio in the test report (``--junitxml`` writes it as properties)."""
    for key, value in info.items():
        record_property(key, round(value, 3) if isinstance(value, float) else value)


@pytest.fixture(scope="module")
def default_cpu(bench_model):
    """The runtime's automatic choice on this machine (CPU here: OpenVINO where installed, else ORT)."""
    with open_or_skip(bench_model, "auto", None, device="cpu", max_batch=32) as be:
        yield be


def test_batched_beats_unbatched(record_property, default_cpu):
    images = random_batch(16, default_cpu.input_size)
    singles = [images[i:i + 1] for i in range(len(images))]

    def one_by_one():
        for x in singles:
            default_cpu.embed(x)

    t = interleaved_medians({"batched": lambda: default_cpu.embed(images), "unbatched": one_by_one}, ROUNDS)
    speedup = t["unbatched"] / t["batched"]
    record(record_property, backend=default_cpu.name, precision=default_cpu.precision, batched_over_unbatched=speedup)
    assert speedup >= 1.05, (f"{default_cpu.name}:{default_cpu.precision}: one call of 16 images is not faster than "
                             f"16 calls of 1 (x{speedup:.2f}); per-call work is being repeated per image")


def test_default_precision_not_slower_than_fp32(record_property, bench_model, default_cpu):
    if default_cpu.precision == "fp32":
        pytest.skip(f"the default CPU precision on {default_cpu.name} is fp32 already")
    images = random_batch(16, default_cpu.input_size)
    with open_or_skip(bench_model, default_cpu.name, "fp32", device="cpu", max_batch=32) as fp32:
        t = interleaved_medians({"default": lambda: default_cpu.embed(images), "fp32": lambda: fp32.embed(images)},
                                ROUNDS)
    ratio = t["fp32"] / t["default"]
    record(record_property, backend=default_cpu.name, precision=default_cpu.precision, default_over_fp32=ratio)
    assert ratio >= 0.8, (f"{default_cpu.name}: default precision {default_cpu.precision} runs at x{ratio:.2f} of "
                          f"fp32 on the same backend; the default should be fp32 here")


def test_default_backend_not_slower_than_onnxruntime(record_property, bench_model, tmp_path):
    """The automatic choice on the model it is made for (the bundled one, or $BENCH_MODEL), against the
    portable fallback, ONNX Runtime's own choice from the same folder, each in its own process (python -m
    bench's workers, alternated rounds): in one process the two thread pools fight over the cores, and on
    the bundled dlib_resnet29 (0.55 GFLOP) that read OpenVINO FP16 at x0.73-0.74 of ONNX Runtime FP16 where
    separate processes measure x1.08 at batch 16 (2-core AVX-512 EPYC). On the small random model the
    per-call overhead dominates instead: OpenVINO FP32 ran at x0.74-0.85 of ONNX Runtime FP32 on it on an
    AVX2-only EPYC."""
    import os

    from bench.__main__ import run
    from engine.backends import default_model_dir

    model = bench_model if os.environ.get("BENCH_MODEL") else default_model_dir()
    with open_or_skip(model, "auto", None, device="cpu", max_batch=16) as default, \
            open_or_skip(model, "onnxruntime", None, device="cpu", max_batch=16) as ort:
        if (default.name, default.precision) == (ort.name, ort.precision):
            pytest.skip(f"the default CPU path is ONNX Runtime {ort.precision} itself")
        pair = [f"{default.name}:{default.precision}", f"onnxruntime:{ort.precision}"]
    report = run(model=str(model), backends=",".join(pair), baseline=pair[1], batch_sizes="16", iterations=10,
                 rounds=3, device="cpu", no_kernels=True, out=tmp_path, progress=False)
    ratio = report["results"][pair[0]]["batches"][0]["ratio_to_baseline"]
    record(record_property, backend=default.name, precision=default.precision, ort_precision=ort.precision,
           default_over_ort=ratio)
    assert ratio >= 0.8, (f"default CPU path {pair[0]} runs at x{ratio:.2f} of ONNX Runtime {ort.precision} on "
                          f"{model}; the automatic choice is wrong for this machine")


def test_embedder_overhead(record_property, bench_model, image_folder):
    from engine.embedder import Embedder
    from engine.preprocess import Preprocessor

    backend = open_or_skip(bench_model, "auto", None, device="cpu", max_batch=32)
    embedder = Embedder(backend, batch_size=32, progress=False)  # owns the backend
    # The same work by hand, in one thread: read, decode, the face-quality gate, crop; one backend call.
    pre = Preprocessor(backend.config, size=backend.input_size, refuse_non_faces=True)
    try:
        def by_hand():
            images = np.stack([pre.load(p).image for p in image_folder])
            return backend.embed(images)

        def pipeline():
            return embedder.embed_paths(image_folder).embeddings

        t = interleaved_medians({"embedder": pipeline, "by_hand": by_hand}, 5, warmup=1)
        np.testing.assert_allclose(pipeline(), by_hand(), rtol=0, atol=1e-5)
    finally:
        pre.close()
        embedder.close()
    ratio = t["embedder"] / t["by_hand"]
    record(record_property, backend=backend.name, precision=backend.precision, embedder_over_by_hand=ratio)
    assert ratio <= 1.5, (f"the embedder takes x{ratio:.2f} the time of decoding + one backend call by hand "
                          f"for {len(image_folder)} files")


def test_interleaved_medians_alternates():
    """The timing helper itself: warm-up calls first, then rounds in alternating order, one median per name."""
    calls = []
    t = interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=4, warmup=1)
    assert calls == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert set(t) == {"a", "b"} and all(v >= 0 for v in t.values())
