"""``python -m bench.serve``: load test of ``engine.serve`` against the in-process Embedder on the same images.

1. In process: the Embedder (same backend, same preprocessing) embeds the
   images as one job (throughput) and one at a time (latency).
2. Served: ``engine.serve`` on loopback ports picked free; for each client
   concurrency N, N threads (one tritonclient each) send one-image ``embed``
   requests until ``--requests`` are done or ``--max-seconds`` pass. Per
   level: img/s, latency p50/p99, and the batches Triton formed, read from
   its metrics (``nv_inference_count`` images / ``nv_inference_exec_count``
   executions = mean batch).

The in-process part runs before the server starts: two runtimes' thread pools
in one moment would fight over the cores. Results go to
``OUT/serve-<machine>.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


from bench.report import latency_stats

REPO = Path(__file__).resolve().parents[1]


def lfw_images(data: Path, count: int) -> list[Path]:
    """The first ``count`` photos of LFW in name order (deterministic)."""
    root = data / "lfw-deepfunneled" if (data / "lfw-deepfunneled").is_dir() else data
    paths = sorted(root.glob("*/*.jpg"))[:count]
    if not paths:
        raise SystemExit(f"bench.serve: no LFW images under {root} (set --data or $FACE_DATA)")
    return paths


def in_process(paths: list[Path], backend: str, precision: str | None, max_batch: int) -> tuple[dict, list[Path]]:
    """Embedder throughput over all paths and latency of one-image calls; the paths whose face was found."""
    from engine.backends import open_backend
    from engine.embedder import Embedder

    be = open_backend(None, backend=backend, precision=precision, max_batch=max_batch)
    with Embedder(be, progress=False) as embedder:
        embedder.embed_paths(paths[:max_batch])  # warm-up: detectors open, kernels compile
        start = time.perf_counter()
        res = embedder.embed_paths(paths)
        seconds = time.perf_counter() - start
        ok = [p for p, good in zip(paths, res.ok) if good]
        latencies = []
        for p in ok[:64]:
            t = time.perf_counter()
            embedder.embed_paths([p])
            latencies.append((time.perf_counter() - t) * 1000)
        return {"backend": be.name, "precision": be.precision, "images": len(ok),
                "img_per_s": round(len(ok) / seconds, 1), "batch": embedder.batch_size,
                "single_image_latency_ms": _rounded(latency_stats(latencies))}, ok


def _rounded(stats: dict) -> dict:
    return {k: round(v, 2) for k, v in stats.items()}


def load_level(url: str, metrics_url: str, images: list[bytes], concurrency: int, requests: int,
               max_seconds: float) -> dict:
    """``requests`` one-image embed calls from ``concurrency`` clients (bounded by ``max_seconds``)."""
    from engine.client import FaceClient, read_metrics

    lock = threading.Lock()
    state = {"next": 0, "latencies": [], "errors": 0}
    deadline = time.monotonic() + max_seconds

    def client_loop():
        with FaceClient(url, timeout_s=60) as client:
            while time.monotonic() < deadline:
                with lock:
                    k = state["next"]
                    if k >= requests:
                        return
                    state["next"] += 1
                t = time.perf_counter()
                try:
                    client.embed([images[k % len(images)]])
                except Exception:
                    with lock:
                        state["errors"] += 1
                    continue
                with lock:
                    state["latencies"].append((time.perf_counter() - t) * 1000)

    before = read_metrics(metrics_url)
    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max_seconds + 120)
    seconds = time.perf_counter() - start
    after = read_metrics(metrics_url)

    def delta(name):
        return after.get(name, {}).get("embed", 0.0) - before.get(name, {}).get("embed", 0.0)

    done = len(state["latencies"])
    executions = delta("nv_inference_exec_count")
    return {"concurrency": concurrency, "requests": done, "errors": state["errors"], "seconds": round(seconds, 2),
            "img_per_s": round(done / seconds, 1) if seconds > 0 else None,
            "latency_ms": _rounded(latency_stats(state["latencies"])) if done else None,
            "triton_images": int(delta("nv_inference_count")), "triton_batches": int(executions),
            "mean_batch": round(delta("nv_inference_count") / executions, 2) if executions else None,
            "queue_us_per_request": round(delta("nv_inference_queue_duration_us") / max(1, done), 1)}


class Server:
    """``python -m engine.serve`` as a child process on free loopback ports; always stopped on exit."""

    def __init__(self, python: str, args: list[str]):
        from engine.serve import free_port

        self.ports = [free_port() for _ in range(3)]
        self.url = f"127.0.0.1:{self.ports[0]}"
        self.metrics_url = f"http://127.0.0.1:{self.ports[2]}/metrics"
        self.proc = subprocess.Popen([python, "-m", "engine.serve", "--host", "127.0.0.1",
                                      "--http-port", str(self.ports[0]), "--grpc-port", str(self.ports[1]),
                                      "--metrics-port", str(self.ports[2]), *args],
                                     cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def __enter__(self):
        from engine.client import FaceClient

        try:
            with FaceClient(self.url) as client:
                client.wait_ready(timeout_s=180, alive=lambda: self.proc.poll() is None)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.out, self.err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own child, by its handle
            self.out, self.err = self.proc.communicate()
        if exc and exc[0] is not None and self.err:
            print(self.err[-2000:], file=sys.stderr)


def run(data=None, backend: str = "auto", precision: str | None = None, concurrency: str = "1,2,4,8",
        requests: int = 128, images: int = 128, max_seconds: float = 60.0, max_batch: int = 32,
        queue_delay_us: int = 2000, instances: int = 1, server_python: str | None = None,
        out="bench/results") -> dict:
    """Run the benchmark, write ``serve-<machine>.json`` + ``.md`` into ``out``; returns the report."""
    from bench.machine import describe_machine, load_average, machine_name
    from engine.backends import choose, resolve_model

    levels = [int(c) for c in str(concurrency).split(",") if c.strip()]
    if not levels or min(levels) < 1 or requests < 1 or images < 1 or max_seconds <= 0:
        raise SystemExit("bench.serve: --concurrency (>= 1 each), --requests, --images and --max-seconds must be > 0")
    data = Path(data or os.environ.get("FACE_DATA", REPO.parent / "shared" / "data"))
    choice = choose(resolve_model(None), backend, precision)  # one backend and precision on both sides
    load_start = load_average()
    baseline, ok = in_process(lfw_images(data, images), choice.backend, choice.precision, max_batch)
    payload = [p.read_bytes() for p in ok]
    python = server_python or os.environ.get("SERVE_PYTHON", sys.executable)
    args = ["--backend", choice.backend, "--precision", choice.precision, "--max-batch", str(max_batch),
            "--queue-delay-us", str(queue_delay_us), "--instances", str(instances)]
    with Server(python, args) as server:
        load_level(server.url, server.metrics_url, payload, 2, min(16, requests), max_seconds)  # warm-up
        served = [load_level(server.url, server.metrics_url, payload, c, requests, max_seconds) for c in levels]
    first = served[0]["img_per_s"] or 0
    for level in served:
        level["speedup_vs_first"] = round(level["img_per_s"] / first, 2) if first and level["img_per_s"] else None
    machine = describe_machine(with_gpu=False)
    report = {"command": " ".join(["python -m bench.serve", *sys.argv[1:]]),
              "machine": machine, "machine_name": machine_name(machine),
              "load_average": {"start": load_start, "end": load_average()},
              "server": {"backend": choice.backend, "precision": choice.precision, "max_batch": max_batch,
                         "queue_delay_us": queue_delay_us, "instances": instances, "python": python,
                         "requests_per_level": requests, "images_per_request": 1},
              "in_process": baseline, "served": served, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"serve-{choice.backend}-{choice.precision}-{instances}inst-{report['machine_name']}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    return report


def markdown(report: dict) -> str:
    m, base, srv = report["machine"], report["in_process"], report["server"]
    lines = [f"# engine.serve load test ({report['machine_name']})", "",
             f"Command: `{report['command']}` (server interpreter `{report['server']['python']}`: "
             f"PyTriton needs NumPy 1.x, see engine.serve)", "",
             f"Machine: {m['cpu_model']}, {m['cores']} cores (`/proc/cpuinfo`), {platform.system()}, "
             f"load average {report['load_average']['start']} -> {report['load_average']['end']} (shared machine).", "",
             f"Backend {srv['backend']} {srv['precision']}, server max batch {srv['max_batch']}, queue delay "
             f"{srv['queue_delay_us']} us, {srv['instances']} instance(s); one image per request, "
             f"{srv['requests_per_level']} requests per level, {base['images']} distinct LFW photos (decode + "
             f"detect + align + embed on the server).", "",
             f"In process (Embedder, batch {base['batch']}): **{base['img_per_s']} img/s**; one image per call: "
             f"p50 {base['single_image_latency_ms']['median']} ms, p99 {base['single_image_latency_ms']['p99']} ms.", "",
             "| clients | img/s | x 1 client | p50 ms | p99 ms | mean batch (Triton) | batches | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for lv in report["served"]:
        lat = lv["latency_ms"] or {}
        lines.append(f"| {lv['concurrency']} | {lv['img_per_s']} | {lv['speedup_vs_first']} | {lat.get('median')} | "
                     f"{lat.get('p99')} | {lv['mean_batch']} | {lv['triton_batches']} | {lv['errors']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description="Load test of engine.serve on loopback "
                                "against the in-process Embedder on the same images.")
    p.add_argument("--data", help="folder with lfw-deepfunneled/ (default: $FACE_DATA or ../shared/data)")
    p.add_argument("--backend", default="auto", help="backend on both sides (default: %(default)s)")
    p.add_argument("--precision", help="precision on both sides (default: the backend's preferred one)")
    p.add_argument("--concurrency", default="1,2,4,8", help="client counts, comma-separated (default: %(default)s)")
    p.add_argument("--requests", type=int, default=128, help="requests per level (default: %(default)s)")
    p.add_argument("--images", type=int, default=128, help="distinct LFW photos used (default: %(default)s)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="time bound per level (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=32, help="server max batch (default: %(default)s)")
    p.add_argument("--queue-delay-us", type=int, default=2000, help="server queue delay (default: %(default)s)")
    p.add_argument("--instances", type=int, default=1, help="server model instances (default: %(default)s)")
    p.add_argument("--server-python", help="interpreter that runs the server (default: $SERVE_PYTHON or this one; "
                   "PyTriton needs one with numpy<2)")
    p.add_argument("--out", default="bench/results", help="results folder (default: %(default)s)")
    args = p.parse_args(argv)
    report = run(**vars(args))
    print(markdown(report), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
