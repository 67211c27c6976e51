#!/usr/bin/env bash
# GPU checks for a CUDA machine, in under 5 minutes: the GPU/TensorRT tests and
# the GPU benchmarks. Results go to the folder given as $1 (or $OUT, or ./gpu-results):
#   machine.txt        nvidia-smi and package versions
#   gpu-tests.xml/.log pytest tests/gpu (junit + log)
#   bench-gpu.json     pytest-benchmark's GPU suites from bench/ (when present)
#   runtime-gpu.json   throughput and H2D/compute/D2H split of the engine's CUDA backends
# Usage (repository root or anywhere): bash tests/gpu/run_gpu_checks.sh results/
# Needs: torch with CUDA, cuda-python, onnxruntime, onnx (+ tensorrt for the TensorRT part).
set -uo pipefail
RESULTS="${1:-${OUT:-gpu-results}}"
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0

{
  date -u; nvidia-smi || true
  python - <<'PY'
import importlib
for name in ("torch", "tensorrt", "cuda.bindings", "onnxruntime", "onnx", "openvino"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as exc:
        print(name, "missing:", type(exc).__name__, exc)
PY
} > "$RESULTS/machine.txt" 2>&1

# 1. Tests (pinned buffers, streams, graphs, TorchBackend on CUDA, TensorRT plan build + run, the face detector
#    as a TensorRT engine, the GPU training path: loader=device, bf16): ~1-2 min.
timeout 150 python -m pytest tests/gpu -v -rs -p no:cacheprovider --junitxml="$RESULTS/gpu-tests.xml" \
  2>&1 | tee "$RESULTS/gpu-tests.log" || status=1

# 2. The benchmark engineer's GPU suites, if any: ~1 min.
if ls bench/test_*.py >/dev/null 2>&1 || ls bench/bench_*.py >/dev/null 2>&1; then
  timeout 90 python -m pytest bench/ --benchmark-only -k "cuda or tensorrt or gpu" -p no:cacheprovider \
    --benchmark-json="$RESULTS/bench-gpu.json" 2>&1 | tail -40 || true
fi

# 3. Runtime throughput on a random ResNet-34 at 112x112: torch CUDA fp32/fp16, TensorRT fp32: ~1-2 min.
timeout 150 python - "$RESULTS/runtime-gpu.json" <<'PY' || status=1
import json, sys, tempfile, time
from pathlib import Path
import numpy as np, torch
from engine.contract import ModelConfig
from nets.checkpoint import save_model
from nets.model import get_model
from engine.backends import open_backend

out, results = Path(sys.argv[1]), []
folder = Path(tempfile.mkdtemp())
cfg = ModelConfig(arch="resnet34", input_size=112, embedding_dim=512, threshold=0.5)
model = get_model(cfg).eval()
save_model(model, folder, cfg)

def measure(be, batch, seconds=4.0):
    x = np.random.default_rng(0).integers(0, 256, (batch, 112, 112, 3), dtype=np.uint8)
    for _ in range(5):
        be.embed(x)
    times, splits, t_end = [], [], time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter(); be.embed(x); times.append(time.perf_counter() - t)
        splits.append(dict(getattr(be, "last_timings_ms", {})))
    med = float(np.median(times))
    row = {"backend": be.name, "precision": be.precision, "batch": batch, "img_per_s": round(batch / med, 1),
           "p50_ms": round(1e3 * med, 3), "p99_ms": round(1e3 * float(np.percentile(times, 99)), 3),
           "iterations": len(times)}
    if splits and splits[0]:
        row.update({f"{k}_ms": round(float(np.median([s[k] for s in splits])), 3) for k in splits[0]})
    print(row, flush=True); results.append(row)

for precision in ("fp32", "fp16"):
    try:
        with open_backend(folder, backend="torch", device="cuda", precision=precision, max_batch=128,
                          timing=True) as be:
            for b in (1, 32, 128):
                measure(be, b)
    except Exception as exc:  # record and go on: the TensorRT part may still run
        results.append({"backend": "torch", "precision": precision, "error": f"{type(exc).__name__}: {exc}"})
try:
    import tensorrt as trt
    sys.path.insert(0, "tests/gpu")
    from test_tensorrt_backend import build_plan  # also puts tests/unit on the path
    from tiny_model import export_onnx
    onnx_path = export_onnx(model, folder / "model.fp32.onnx", 112)
    build_plan(trt, onnx_path, folder / "model.fp32.plan", batches=(1, 32, 128), size=112)
    for graphs in (False, True):
        with open_backend(folder, backend="tensorrt", cuda_graphs=graphs, timing=True) as be:
            for b in (1, 32, 128):
                measure(be, b)
                results[-1]["cuda_graphs"] = graphs
except ImportError as exc:
    results.append({"backend": "tensorrt", "skipped": f"{exc}"})
except Exception as exc:
    results.append({"backend": "tensorrt", "error": f"{type(exc).__name__}: {exc}"})
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
out.write_text(json.dumps({"gpu": gpu, "results": results}, indent=2))
sys.exit(1 if any("error" in r for r in results) else 0)
PY
echo "results in $RESULTS"; ls -l "$RESULTS"
exit $status
