"""One backend x precision, measured in a process of its own (``python -m bench.worker SPEC.json OUT.json``).

``python -m bench`` starts one of these per backend and round, so thread
pools of different runtimes (OpenMP in PyTorch, ORT's pool, OpenVINO's TBB)
never share the cores within one process. The worker opens the backend
through :func:`engine.backends.open_backend` (the runtime users get), times
``embed`` on random uint8 images at each batch size and writes the raw
latencies; statistics are made by the parent (:mod:`bench.report`).

Bench-only variant: ``torch-compile`` (``torch.compile`` of the training
model, fp32 or bf16 autocast), to see what a compiled PyTorch path would gain.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

EXTRA_BACKENDS = ("torch-compile",)


class CompiledTorch:
    """``torch.compile`` of the model in a folder with model.safetensors; same ``embed`` as a Backend."""

    name = "torch-compile"

    def __init__(self, model_dir, precision: str = "fp32", threads: int | None = None):
        import torch

        from nets.checkpoint import load_model

        if precision not in ("fp32", "bf16"):
            raise ValueError(f"torch-compile: precision must be fp32 or bf16, got {precision!r}")
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        model = load_model(model_dir).eval()
        self.config = model.config
        self._model = torch.compile(model)
        self._dtype = torch.bfloat16 if precision == "bf16" else None
        self.precision, self.device = precision, "cpu"
        self.input_size, self.embedding_dim = model.config.input_size, model.config.embedding_dim

    def embed(self, images: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self._dtype is not None):
            return self._model(torch.from_numpy(images)).float().numpy()

    def describe(self) -> dict:
        return {"backend": self.name, "precision": self.precision, "device": "cpu"}

    def close(self) -> None:
        self._model = None


def open_for_bench(spec: dict):
    """The backend ``spec`` names (``model``, ``backend``, ``precision``, ``device``, ``threads``...)."""
    if spec["backend"] == "torch-compile":
        from engine.backends import resolve_model

        src = resolve_model(spec["model"])
        if src.weights_dir is None:
            raise ValueError(f"{src.path}: torch-compile needs model.safetensors + model.json in the model folder")
        return CompiledTorch(src.weights_dir, spec["precision"], spec.get("threads"))
    from engine.backends import open_backend

    return open_backend(spec["model"], backend=spec["backend"], precision=spec["precision"],
                        device=spec.get("device"), max_batch=max(spec["batch_sizes"]), threads=spec.get("threads"),
                        cuda_graphs=spec.get("cuda_graphs", False), timing=spec.get("timing", False))


def time_calls(fn, warmup: int, iterations: int | None, duration: float | None, min_iterations: int = 3,
               after=None) -> tuple[list[float], list]:
    """Call ``fn`` ``warmup`` times untimed, then ``iterations`` times or for ``duration`` seconds.

    Returns the latencies in ms and, when ``after`` is given, what it
    returned after each timed call (e.g. the CUDA-event split of that call).
    """
    for _ in range(warmup):
        fn()
    latencies, extra = [], []
    end = time.perf_counter() + duration if duration else None
    while True:
        t0 = time.perf_counter()
        fn()
        latencies.append((time.perf_counter() - t0) * 1e3)
        if after is not None:
            extra.append(after())
        n = len(latencies)
        if end is None and n >= iterations:
            break
        if end is not None and n >= min_iterations and time.perf_counter() >= end:
            break
    return latencies, extra


def ort_kernels(onnx_path, threads: int | None, batch: np.ndarray) -> dict[str, int]:
    """ONNX Runtime CPU: node op types after graph optimisation, from one profiled run.

    Q/DQ convolutions that ORT fuses show up as ``QLinearConv`` (MLAS int8,
    VNNI/AMX where the build has it); unfused ones as ``DequantizeLinear`` + ``Conv``.
    """
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        opts.intra_op_num_threads = threads or 0
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        sess.run(None, {sess.get_inputs()[0].name: batch})
        events = json.loads(Path(sess.end_profiling()).read_text())
    counts: Counter = Counter()
    for ev in events:
        args = ev.get("args", {})
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            counts[f"{args.get('op_name', '?')}@{args.get('provider', '?').removesuffix('ExecutionProvider')}"] += 1
    return dict(counts.most_common())


def torch_kernels(backend, batch: np.ndarray) -> dict:
    """PyTorch: the ATen ops that took the time in one profiled call, and the CPU ISA ATen dispatches to."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        backend.embed(batch)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:6]
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn": torch.backends.mkldnn.is_available(),
            "top_ops": {e.key[:48]: e.count for e in ops}}  # compiled-graph names carry long hashes


def kernels_of(backend, spec: dict, batch: np.ndarray) -> dict | None:
    """Which kernels run, per runtime; None where the runtime does not say."""
    try:
        if hasattr(backend, "kernels"):  # OpenVINO: exec-graph primitive types (e.g. brgconv_avx512_amx_I8)
            return backend.kernels()
        if spec["backend"] == "onnxruntime" and str(getattr(backend, "device", "cpu")) == "cpu":
            return ort_kernels(backend.model_path, spec.get("threads"), batch)
        if spec["backend"] in ("torch", "torch-compile") and str(getattr(backend, "device", "cpu")) == "cpu":
            return torch_kernels(backend, batch)
    except Exception as exc:  # kernel names are a courtesy; never lose the timings over them
        return {"error": f"{type(exc).__name__}: {exc}"}
    return None


def _median_split(splits: list[dict]) -> dict:
    keys = splits[0].keys() if splits and splits[0] else []
    return {k: float(np.median([s[k] for s in splits if k in s])) for k in keys}


def measure(spec: dict) -> dict:
    """Open the backend, time each batch size, collect kernels (first round only) and describe it."""
    rng = np.random.default_rng(spec.get("seed", 0))
    t0 = time.perf_counter()
    backend = open_for_bench(spec)
    open_s = time.perf_counter() - t0
    size = backend.input_size
    out = {"spec": spec, "open_s": open_s, "pid": os.getpid(), "batches": {}}
    try:
        on_gpu = str(getattr(backend, "device", "cpu")).startswith("cuda")
        for b in spec["batch_sizes"]:
            images = rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)
            split = (lambda: dict(backend.last_timings_ms)) if on_gpu and spec.get("timing") else None
            lat, splits = time_calls(lambda: backend.embed(images), spec["warmup"], spec.get("iterations"),
                                     spec.get("duration"), after=split)
            entry = {"latencies_ms": lat}
            if splits:
                entry["gpu_split_ms"] = _median_split(splits)
            out["batches"][str(b)] = entry
        if spec.get("kernels"):
            out["kernels"] = kernels_of(backend, spec, rng.integers(0, 256, (max(spec["batch_sizes"]), size, size, 3),
                                                                     dtype=np.uint8))
        out["backend"] = backend.describe()
        choice = getattr(backend, "choice", None)
        if choice is not None:
            out["backend"]["choice_reason"] = choice.reason
    finally:
        backend.close()
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m bench.worker SPEC.json OUT.json (started by python -m bench)", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    result = measure(spec)
    tmp = Path(argv[1]).with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, argv[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
