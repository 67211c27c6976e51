"""``python -m bench``: a trtexec-style latency/throughput report for one model on several backends.

Each backend x precision runs in a process of its own (:mod:`bench.worker`),
in alternated rounds (the order rotates each round, so slow drifts of a shared
machine hit every backend alike); the report takes medians. Output: one JSON
per backend x precision, ``<out>/<backend>-<precision>-<machine>.json``, and a
combined Markdown table ``<out>/<name>-<machine>.md`` (also printed).

Example::

    python -m bench --model models/r34 --backends torch:fp32,onnxruntime:fp32,onnxruntime:int8,openvino:int8 \\
        --baseline torch:fp32 --batch-sizes 1,8,32 --rounds 3 --duration 5
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import report as rep
from bench.machine import describe_machine, load_average, machine_name, measure_matmul_peak, table_peak
from engine.files import printable

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BACKENDS = "torch:fp32,onnxruntime:fp32,onnxruntime:int8,openvino:int8"
KNOWN_BACKENDS = ("tensorrt", "onnxruntime", "openvino", "torch", "torch-compile")
KNOWN_PRECISIONS = ("fp32", "fp16", "bf16", "int8")

# GPU peaks (dense, no sparsity), from NVIDIA's data sheets, for % of peak on GPU runs.
GPU_PEAKS_TOPS = {
    "H200": {"fp32": 67, "fp16": 989, "bf16": 989, "int8": 1979},
    "H100": {"fp32": 67, "fp16": 989, "bf16": 989, "int8": 1979},  # SXM
    "A100": {"fp32": 19.5, "fp16": 312, "bf16": 312, "int8": 624},
    "L4": {"fp32": 30.3, "fp16": 121, "bf16": 121, "int8": 242},
}


class UsageError(ValueError):
    """A bad flag value; printed as one line, exit status 2."""


@dataclass(frozen=True)
class Spec:
    """One thing to measure: a backend, a precision and (TensorRT) whether CUDA graphs are on."""

    backend: str
    precision: str
    cuda_graphs: bool = False

    @property
    def label(self) -> str:
        return f"{self.backend}:{self.precision}" + ("+graphs" if self.cuda_graphs else "")

    def file_stem(self, machine: str) -> str:
        return f"{self.backend}-{self.precision}{'-graphs' if self.cuda_graphs else ''}-{machine}"


def parse_backends(text: str) -> list[Spec]:
    """``"onnxruntime:fp32,openvino:int8"`` -> specs; each item ``backend:precision``, no duplicates."""
    specs: list[Spec] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, sep, precision = item.partition(":")
        if not sep or not precision:
            raise UsageError(f"--backends: {item!r} is not backend:precision (e.g. onnxruntime:int8)")
        if name not in KNOWN_BACKENDS:
            raise UsageError(f"--backends: unknown backend {name!r}; choose from {', '.join(KNOWN_BACKENDS)}")
        if precision not in KNOWN_PRECISIONS:
            raise UsageError(f"--backends: unknown precision {precision!r} in {item!r}; "
                             f"choose from {', '.join(KNOWN_PRECISIONS)}")
        spec = Spec(name, precision)
        if spec in specs:
            raise UsageError(f"--backends: {item!r} is listed twice")
        specs.append(spec)
    if not specs:
        raise UsageError("--backends: no backend given")
    return specs


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"--batch-sizes: {text!r} is not a comma-separated list of integers") from None
    if not sizes or any(b < 1 for b in sizes):
        raise UsageError(f"--batch-sizes: need positive integers, got {text!r}")
    if len(set(sizes)) != len(sizes):
        raise UsageError(f"--batch-sizes: {text!r} repeats a size")
    return sizes


def compute_precision(backend: str, precision: str) -> str:
    """The arithmetic a backend actually does for a precision, which picks the peak to compare with.

    CPU runtimes compute FP16 files in FP32 (OpenVINO is asked for f32, ORT's
    CPU provider upcasts), so they are judged against the FP32 peak.
    """
    if precision == "fp16" and backend != "tensorrt":
        return "fp32"
    return precision


def gpu_peak(gpu_name: str, precision: str) -> dict | None:
    for key, peaks in GPU_PEAKS_TOPS.items():
        if key.lower() in gpu_name.lower() and precision in peaks:
            return {"gops_per_s": peaks[precision] * 1e3, "precision": precision, "unit_class": "gpu",
                    "source": f"NVIDIA {key} data sheet, dense {precision}"}
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="trtexec-style report: throughput and latency percentiles of one model on several "
                    "backends x precisions, each in its own process, in alternated rounds; achieved GFLOP/s "
                    "against the machine's peak; JSON + Markdown output.")
    p.add_argument("--model", default=None,
                   help="model folder from `python -m convert` (model.json + model.<precision>.onnx, "
                        "model.safetensors for torch backends), or one .onnx file; default: the bundled model")
    p.add_argument("--backends", default=DEFAULT_BACKENDS,
                   help=f"comma-separated backend:precision list; backends {', '.join(KNOWN_BACKENDS)} "
                        f"(torch-compile = torch.compile, bench only), precisions {', '.join(KNOWN_PRECISIONS)} "
                        f"(default: {DEFAULT_BACKENDS})")
    p.add_argument("--baseline", default=None,
                   help="backend:precision from --backends that ratios are computed against (default: the first)")
    p.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes (default: 1,8,32)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per batch size before timing (default: 3)")
    timing = p.add_mutually_exclusive_group()
    timing.add_argument("--iterations", type=int, default=None,
                        help="timed calls per batch size and round (default: 20 unless --duration is given)")
    timing.add_argument("--duration", type=float, default=None,
                        help="seconds of timed calls per batch size and round (at least 3 calls)")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternated rounds; each round starts every backend afresh in its own process (default: 3)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per backend (default: every core this process may use)")
    p.add_argument("--device", default=None, help="device for the backends: cpu or cuda[:N] (default: backend's own)")
    p.add_argument("--cuda-graphs", choices=("off", "on", "both"), default="both",
                   help="TensorRT runs without and/or with CUDA graphs (default: both)")
    p.add_argument("--peak", choices=("table", "matmul"), default="table",
                   help="CPU peak from the documented table in bench/machine.py or a measured matrix product "
                        "(default: table)")
    p.add_argument("--cpu-ghz", type=float, default=None,
                   help="clock for the table peak instead of the nominal one /proc/cpuinfo reports "
                        "(e.g. the all-core boost clock; table peaks at the nominal clock can be exceeded)")
    p.add_argument("--no-kernels", action="store_true", help="skip listing the kernels each backend runs")
    p.add_argument("--out", default=str(REPO / "bench" / "results"),
                   help="folder for <backend>-<precision>-<machine>.json and report-<machine>.md "
                        "(default: bench/results)")
    p.add_argument("--name", default="report",
                   help="stem of the combined Markdown file, <out>/<name>-<machine>.md (default: report)")
    p.add_argument("--timeout", type=float, default=900, help="seconds one worker process may take (default: 900)")
    return p


def validate(args) -> tuple[list[Spec], list[int], Spec]:
    specs = parse_backends(args.backends)
    sizes = parse_batch_sizes(args.batch_sizes)
    if args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
    if args.iterations is not None and args.iterations < 1:
        raise UsageError(f"--iterations must be >= 1, got {args.iterations}")
    if args.duration is not None and not args.duration > 0:
        raise UsageError(f"--duration must be > 0 seconds, got {args.duration}")
    if args.rounds < 1:
        raise UsageError(f"--rounds must be >= 1, got {args.rounds}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be > 0, got {args.timeout}")
    if args.model is not None and not Path(args.model).exists():
        raise UsageError(f"--model: {args.model}: no such file or folder")
    baseline = specs[0]
    if args.baseline is not None:
        wanted = parse_backends(args.baseline)
        if len(wanted) != 1 or wanted[0] not in specs:
            raise UsageError(f"--baseline: {args.baseline!r} is not one of --backends "
                             f"({', '.join(s.label for s in specs)})")
        baseline = wanted[0]
    if args.cuda_graphs != "off":  # TensorRT specs without/with graphs
        expanded = []
        for s in specs:
            if s.backend == "tensorrt":
                if args.cuda_graphs == "both":
                    expanded.append(s)
                expanded.append(Spec(s.backend, s.precision, True))
            else:
                expanded.append(s)
        specs = expanded
    return specs, sizes, baseline


def check_available(model, specs: list[Spec]) -> tuple[object, dict[Spec, Path | None]]:
    """Resolve the model and check every spec has its file; returns the source and each spec's ONNX file."""
    from engine.backends import BackendError, choose, resolve_model
    from engine.contract import ContractError

    try:
        src = resolve_model(model)
    except (BackendError, ContractError) as exc:
        raise UsageError(str(exc)) from None
    files: dict[Spec, Path | None] = {}
    any_onnx = src.onnx.get("fp32") or next(iter(src.onnx.values()), None)
    for s in specs:
        if s.backend == "torch-compile":
            if src.weights_dir is None:
                raise UsageError(f"{src.path}: torch-compile needs model.safetensors + model.json in the model folder")
            if s.precision not in ("fp32", "bf16"):
                raise UsageError(f"--backends: torch-compile runs fp32 or bf16, not {s.precision}")
        else:
            try:
                choose(src, s.backend, s.precision, env={"tensorrt": True, "openvino": True, "gpus": 1})
            except BackendError as exc:
                raise UsageError(str(exc)) from None
        onnx_prec = "fp32" if s.precision == "bf16" else s.precision
        files[s] = src.onnx.get(onnx_prec) if s.backend in ("onnxruntime", "openvino") else any_onnx
    return src, files


def conversion_gates(model_path: Path) -> dict | None:
    """Per precision: the accuracy gate verdict and embedding agreement from the model folder's report.json."""
    report = Path(model_path) / "report.json"
    if not report.is_file():
        return None
    try:
        variants = json.loads(report.read_text()).get("variants", {})
    except (OSError, ValueError, AttributeError):
        return None
    return {p: {"gate": v.get("gate"), "cos_min": (v.get("embedding") or {}).get("cos_min"),
                "verification": v.get("verification")} for p, v in variants.items() if isinstance(v, dict)}


def run_worker(spec: dict, timeout: float) -> dict:
    """Measure one spec in a fresh ``python -m bench.worker`` process; raise with its stderr on failure."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        try:
            proc = subprocess.run([sys.executable, "-m", "bench.worker", str(spec_path), str(out_path)],
                                  env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{spec['backend']}:{spec['precision']}: worker took more than {timeout:g} s") from None
        if proc.returncode != 0 or not out_path.is_file():
            tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
            raise RuntimeError(f"{spec['backend']}:{spec['precision']}: worker failed "
                               f"(exit {proc.returncode}):\n{tail}")
        return json.loads(out_path.read_text())


def peak_for(spec: Spec, machine: dict, how: str, on_gpu: bool, cache: dict, ghz: float | None = None) -> dict | None:
    precision = compute_precision(spec.backend, spec.precision)
    if on_gpu:
        return gpu_peak(machine["gpu"]["name"], precision) if machine.get("gpu") else None
    if how == "matmul":
        if precision not in cache:
            cache[precision] = measure_matmul_peak(precision).to_dict()
        return cache[precision]
    peak = table_peak(machine, precision, ghz)
    return peak.to_dict() if peak else None


def run(model=None, backends: str = DEFAULT_BACKENDS, baseline: str | None = None, batch_sizes: str = "1,8,32",
        warmup: int = 3, iterations: int | None = None, duration: float | None = None, rounds: int = 3,
        threads: int | None = None, device: str | None = None, cuda_graphs: str = "both", peak: str = "table",
        cpu_ghz: float | None = None, no_kernels: bool = False, out: str | os.PathLike = REPO / "bench" / "results",
        name: str = "report", timeout: float = 900, command: str | None = None, progress: bool = True) -> dict:
    """Measure, write ``<out>/<backend>-<precision>-<machine>.json`` + ``<name>-<machine>.md``; return the report."""
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise UsageError(f"--name: {name!r} is not a plain file-name stem (letters, digits, - _ .)")
    if cpu_ghz is not None and not cpu_ghz > 0:
        raise UsageError(f"--cpu-ghz must be > 0, got {cpu_ghz}")
    args = argparse.Namespace(model=model, backends=backends, baseline=baseline, batch_sizes=batch_sizes,
                              warmup=warmup, iterations=iterations, duration=duration, rounds=rounds,
                              threads=threads, timeout=timeout, cuda_graphs=cuda_graphs)
    specs, sizes, base = validate(args)
    if iterations is None and duration is None:
        iterations = 20
    src, onnx_files = check_available(model, specs)
    from bench.flops import count_flops, torch_model_flops

    flops: dict[Spec, float] = {}
    for s in specs:
        f = onnx_files.get(s)
        flops[s] = (count_flops(f).flops_per_image if f else torch_model_flops(src.config).flops_per_image)

    machine = describe_machine()
    mname = machine_name(machine)
    load_before = load_average()
    raw: dict[Spec, list[dict]] = {s: [] for s in specs}
    jobs = [(r, s) for r in range(rounds) for s in specs[r % len(specs):] + specs[:r % len(specs)]]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="bench", unit="run", file=sys.stderr)
    for r, s in jobs:
        spec = {"model": str(src.path), "backend": s.backend, "precision": s.precision, "batch_sizes": sizes,
                "warmup": warmup, "iterations": iterations, "duration": duration, "threads": threads,
                "device": device, "cuda_graphs": s.cuda_graphs, "kernels": (r == 0 and not no_kernels),
                "timing": s.backend == "tensorrt" or str(device or "").startswith("cuda"), "seed": 0}
        if bar:
            bar.set_postfix_str(f"round {r + 1} {s.label}")
        raw[s].append(run_worker(spec, timeout))
        if bar:
            bar.update()
    if bar:
        bar.close()
    load_after = load_average()

    peak_cache: dict = {}
    results: dict[str, dict] = {}
    for s in specs:
        first = raw[s][0]
        on_gpu = str(first["backend"].get("device", "cpu")).startswith("cuda")
        pk = peak_for(s, machine, peak, on_gpu, peak_cache, cpu_ghz)
        batches = []
        for b in sizes:
            entries = [w["batches"][str(b)] for w in raw[s]]
            summary = rep.summarise(b, [e["latencies_ms"] for e in entries], flops[s],
                                    pk["gops_per_s"] * 1e9 if pk else None)
            splits = [e["gpu_split_ms"] for e in entries if e.get("gpu_split_ms")]
            if splits:
                summary["gpu_split_ms"] = {k: float(sorted(x[k] for x in splits)[len(splits) // 2])
                                           for k in splits[0]}
            batches.append(summary)
        results[s.label] = {"backend": s.backend, "precision": s.precision, "cuda_graphs": s.cuda_graphs,
                            "compute_precision": compute_precision(s.backend, s.precision),
                            "onnx": str(onnx_files[s]) if onnx_files.get(s) else None,
                            "gflops_per_image": flops[s] / 1e9, "peak": pk, "describe": first["backend"],
                            "open_s": [w["open_s"] for w in raw[s]], "kernels": first.get("kernels"),
                            "batches": batches}
    rep.add_ratios(results, base.label)
    peaks = {f"{r['compute_precision']}": r["peak"] for r in results.values() if r.get("peak")}
    report = {
        "schema": 1,
        "command": command or "python -m bench",
        "model": str(src.path),
        "model_config": src.config.to_dict() if src.config else None,
        "model_gates": conversion_gates(src.path),
        "machine": machine,
        "machine_name": mname,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {"batch_sizes": sizes, "warmup": warmup, "iterations": iterations, "duration": duration,
                     "rounds": rounds, "threads": threads, "device": device, "peak": peak,
                     "cpu_ghz": cpu_ghz},
        "baseline": base.label,
        "gflops_per_image": next(iter(flops.values())) / 1e9,
        "peak_note": "; ".join(f"{p}: {v['gops_per_s']:,.0f} G ops/s ({v['source']})" for p, v in peaks.items())
                     or "none known for this machine",
        "results": results,
    }
    write_report(report, Path(out), specs, name)
    return report


def write_report(report: dict, out: Path, specs: list[Spec], name: str = "report") -> list[Path]:
    """One JSON per spec plus the combined Markdown, each via a temporary name and a rename."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    common = {k: v for k, v in report.items() if k != "results"}
    for s in specs:
        path = out / f"{s.file_stem(report['machine_name'])}.json"
        _write_atomic(path, json.dumps({**common, "result": report["results"][s.label]}, indent=2) + "\n")
        written.append(path)
    md = out / f"{name}-{report['machine_name']}.md"
    _write_atomic(md, rep.markdown_report(report))
    written.append(md)
    return written


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    command = "python -m bench " + " ".join(shlex.quote(a) for a in argv)
    try:
        report = run(model=args.model, backends=args.backends, baseline=args.baseline,
                     batch_sizes=args.batch_sizes, warmup=args.warmup, iterations=args.iterations,
                     duration=args.duration, rounds=args.rounds, threads=args.threads, device=args.device,
                     cuda_graphs=args.cuda_graphs, peak=args.peak, cpu_ghz=args.cpu_ghz,
                     no_kernels=args.no_kernels, out=args.out,
                     name=args.name, timeout=args.timeout, command=command)
    except UsageError as exc:
        print(f"python -m bench: error: {printable(exc)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # a backend that failed mid-run: exit 2, as every command's errors
        print(f"python -m bench: error: {printable(exc)}", file=sys.stderr)
        return 2
    print(rep.markdown_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
