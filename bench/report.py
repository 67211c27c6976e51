"""Statistics and the trtexec-style report: from raw per-round latencies to JSON and Markdown.

Throughput is computed per round as ``batch / median latency`` and the
report takes the median over rounds: on a shared machine a round disturbed
by another process moves a mean, not a median. Latency percentiles pool all
timed calls of all rounds.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

LATENCY_KEYS = ("min", "median", "mean", "p90", "p99", "max")


def latency_stats(latencies_ms) -> dict:
    """min/median/mean/p90/p99/max of latencies in ms (linear-interpolated percentiles)."""
    x = np.asarray(latencies_ms, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no latencies to summarise")
    return {"min": float(x.min()), "median": float(np.median(x)), "mean": float(x.mean()),
            "p90": float(np.percentile(x, 90)), "p99": float(np.percentile(x, 99)), "max": float(x.max())}


def summarise(batch: int, rounds: list[list[float]], flops_per_image: float | None = None,
              peak_ops_per_s: float | None = None) -> dict:
    """One backend at one batch size over several rounds of latencies (ms)."""
    rounds = [r for r in rounds if len(r)]
    if not rounds:
        raise ValueError(f"batch {batch}: no timed calls")
    per_round = [batch * 1e3 / float(np.median(r)) for r in rounds]
    pooled = [v for r in rounds for v in r]
    lat = latency_stats(pooled)
    out = {"batch": batch, "throughput_img_s": float(np.median(per_round)),
           # From the fastest call: the least disturbed estimate when neighbours share the cores.
           "throughput_best_img_s": batch * 1e3 / lat["min"] if lat["min"] > 0 else None,
           "throughput_per_round": per_round, "timed_calls": len(pooled), "latency_ms": lat}
    if flops_per_image:
        gflops = out["throughput_img_s"] * flops_per_image / 1e9
        out["gflop_s"] = gflops
        if peak_ops_per_s:
            out["percent_of_peak"] = 100.0 * gflops * 1e9 / peak_ops_per_s
    return out


def add_ratios(results: dict[str, dict], baseline: str | None) -> None:
    """Set ``ratio_to_baseline`` (throughput / baseline's at the same batch) on every entry, in place."""
    if not baseline or baseline not in results:
        return
    base = {s["batch"]: s for s in results[baseline]["batches"]}
    for res in results.values():
        for s in res["batches"]:
            b = base.get(s["batch"])
            s["ratio_to_baseline"] = s["throughput_img_s"] / b["throughput_img_s"] if b else None
            best, base_best = s.get("throughput_best_img_s"), b.get("throughput_best_img_s") if b else None
            s["best_ratio_to_baseline"] = best / base_best if best and base_best else None


def _fmt(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown_table(results: dict[str, dict], baseline: str | None = None) -> str:
    """The side-by-side table: backend x precision x batch, img/s, latencies, GFLOP/s, % of peak, ratio."""
    ratio_head = f"x {baseline}" if baseline else "ratio"
    head = ["backend", "precision", "batch", "img/s", "best img/s", "p50 ms", "p90 ms", "p99 ms", "min ms",
            "max ms", "GFLOP/s", "% of peak", "peak", ratio_head, f"{ratio_head} (best)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for label, res in results.items():
        for s in res["batches"]:
            lat = s["latency_ms"]
            peak = res.get("peak") or {}
            lines.append("| " + " | ".join([
                res["backend"], res["precision"] + (" +graphs" if res.get("cuda_graphs") else ""), str(s["batch"]),
                _fmt(s["throughput_img_s"]), _fmt(s.get("throughput_best_img_s")),
                _fmt(lat["median"], 2), _fmt(lat["p90"], 2), _fmt(lat["p99"], 2), _fmt(lat["min"], 2),
                _fmt(lat["max"], 2), _fmt(s.get("gflop_s")), _fmt(s.get("percent_of_peak")),
                f"{peak['precision']} {peak['gops_per_s']:,.0f}" if peak else "-",
                _fmt(s.get("ratio_to_baseline"), 2), _fmt(s.get("best_ratio_to_baseline"), 2),
            ]) + " |")
    return "\n".join(lines)


def gpu_split_table(results: dict[str, dict]) -> str:
    """H2D / compute / D2H medians (CUDA events) per backend and batch; empty when nothing ran on a GPU."""
    rows = []
    for res in results.values():
        for s in res["batches"]:
            split = s.get("gpu_split_ms")
            if split:
                rows.append(f"| {res['backend']} | {res['precision']} | {'on' if res.get('cuda_graphs') else 'off'} "
                            f"| {s['batch']} | {_fmt(split.get('h2d'), 3)} | {_fmt(split.get('compute'), 3)} "
                            f"| {_fmt(split.get('d2h'), 3)} |")
    if not rows:
        return ""
    return "\n".join(["| backend | precision | CUDA graphs | batch | H2D ms | compute ms | D2H ms |",
                      "|---|---|---|---|---|---|---|", *rows])


def kernels_section(results: dict[str, dict]) -> str:
    """One line per backend: the kernels/ops it ran (most frequent first)."""
    lines = []
    for label, res in results.items():
        k = res.get("kernels")
        if not k:
            continue
        if "top_ops" in k:
            text = f"ATen dispatch {k.get('cpu_capability')}; top ops: " + ", ".join(k["top_ops"])
        else:  # OpenVINO's "unknown_*" are inputs, constants and reshapes: nothing executes there
            shown = [(name, n) for name, n in k.items() if not str(name).startswith("unknown")]
            text = ", ".join(f"{name} x{n}" for name, n in shown[:8])
        lines.append(f"- **{label}**: {text}")
    return "\n".join(lines)


def model_line(report: dict) -> str:
    """The model's architecture and the conversion accuracy gates its files passed."""
    cfg = report.get("model_config") or {}
    text = "Model: " + (f"{cfg.get('arch')} at {cfg.get('input_size')}x{cfg.get('input_size')}, "
                        f"{cfg.get('embedding_dim')}-d embeddings" if cfg else "(no model.json)")
    gates = report.get("model_gates")
    if gates:
        text += "; conversion gates: " + ", ".join(
            f"{p} {g.get('gate')} (min cosine to PyTorch {g['cos_min']:.4f})" if g.get("cos_min") is not None
            else f"{p} {g.get('gate')}" for p, g in gates.items())
    return text + "."


def markdown_report(report: dict) -> str:
    """The whole Markdown report: command, machine, load, table, GPU split, kernels."""
    m = report["machine"]
    isa = ", ".join(k for k, v in (m.get("isa") or {}).items() if v)
    gpu = m.get("gpu")
    parts = [
        f"# Benchmark: {report['model']}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine `{report['machine_name']}`: {m.get('cpu_model')} ({m.get('vendor')} family {m.get('family')} "
        f"model {m.get('model')}), {m.get('cores')} cores at {m.get('nominal_ghz')} GHz nominal, ISA: {isa}"
        + (f"; GPU: {gpu['name']} ({gpu['memory_gib']} GiB, sm {gpu['compute_capability']})" if gpu else "; no GPU")
        + ".",
        "",
        model_line(report),
        "",
        f"Load average before/after: {report.get('loadavg_before')} / {report.get('loadavg_after')}. "
        f"{report['settings']['rounds']} alternated rounds, each backend in its own process; "
        f"img/s = median over rounds of batch / median latency; best img/s = batch / fastest call "
        f"(the least disturbed estimate on a shared machine).",
        "",
        f"FLOPs per image (conv+matmul MACs x2, from the ONNX graph): "
        f"{report['gflops_per_image']:.3f} GFLOP. Peaks: {report['peak_note']}",
        "",
        markdown_table(report["results"], report.get("baseline")),
    ]
    split = gpu_split_table(report["results"])
    if split:
        parts += ["", "GPU time split (median per call, CUDA events):", "", split]
    kernels = kernels_section(report["results"])
    if kernels:
        parts += ["", "Kernels:", "", kernels]
    return "\n".join(parts) + "\n"


def write_result(path, data) -> None:
    """A measurement as JSON at ``path`` (folders made), atomically: a killed run leaves the previous numbers."""
    from engine.contract import write_json_atomic

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data)
