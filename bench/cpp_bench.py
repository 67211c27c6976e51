"""``python -m bench.cpp_bench``: the C++ runner's throughput beside the Python runtime's, same images and backend.

Three stages, each runtime in its own process (two runtimes' thread pools in
one process fight over the cores), alternated over rounds, medians reported:

* ``end_to_end``: image files -> embeddings, each runtime's normal path
  (C++: ``fv_embed``, a batch's files prepared on up to 4 threads, then
  embedded; Python: ``Embedder.embed_paths``, decode threads running ahead
  of the backend);
* ``prepare``: read, decode, detect, align, one image at a time in one thread
  (``fv_prepare`` / ``Preprocessor.load``);
* ``backend``: the model alone on a batch of prepared inputs.

Writes ``bench/results/cpp-<machine>.json`` and ``.md`` with the command, the
CPU model from /proc/cpuinfo and the load average. Needs the C++ build
(``cmake -S . -B build && cmake --build build -j2``; built here if missing).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("end_to_end_img_s", "prepare_img_s", "backend_img_s")


def pick_images(root: Path, count: int) -> list[Path]:
    """The first photo of the first ``count`` people (sorted): fixed, no randomness."""
    people = sorted(d for d in root.iterdir() if d.is_dir())
    images = [min(d.glob("*.jpg")) for d in people if any(d.glob("*.jpg"))]
    if len(images) < count:
        raise SystemExit(f"{root}: {len(images)} photos, {count} asked for")
    return images[:count]


def ensure_built(build: Path) -> Path:
    exe = build / "faceverify_bench"
    if not exe.is_file():
        for cmd in (["cmake", "-S", str(REPO), "-B", str(build), f"-DFV_PYTHON={sys.executable}"],
                    ["cmake", "--build", str(build), "-j2", "--target", "faceverify_bench"]):
            subprocess.run(cmd, check=True)
    return exe


def python_worker(images: list[str], precision: str, repeat: int, batch: int) -> dict:
    """The Python runtime's numbers for the same stages (runs in its own process)."""
    import numpy as np

    from engine.backends import open_backend
    from engine.embedder import Embedder
    from engine.preprocess import Preprocessor

    def median_s(fn, n):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    t0 = time.perf_counter()
    backend = open_backend(None, backend="openvino", precision=precision)
    open_s = time.perf_counter() - t0
    with Embedder(backend, progress=False) as embedder:
        embedder.embed_paths(images)  # warm-up: detectors open, first inferences allocate
        e2e = median_s(lambda: embedder.embed_paths(images), repeat)
        pre = Preprocessor(backend.config, size=backend.input_size, refuse_non_faces=True)
        crops = [pre.load(p).image for p in images]  # warm-up
        prep = median_s(lambda: [pre.load(p) for p in images], repeat)
        pre.close()
        tile = np.stack([crops[k % len(crops)] for k in range(batch)])
        backend.embed(tile)
        back = median_s(lambda: backend.embed(tile), max(repeat, 5))
    n = len(images)
    return {"runner": "python", "backend": backend.name, "precision": backend.precision, "device": backend.device,
            "images": n, "batch": batch, "repeat": repeat, "open_s": round(open_s, 4),
            "end_to_end_img_s": round(n / e2e, 2), "prepare_img_s": round(n / prep, 2),
            "backend_img_s": round(batch / back, 2)}


def run_cpp(exe: Path, images, precision, repeat, batch) -> dict:
    done = subprocess.run([str(exe), "--precision", precision, "--repeat", str(repeat), "--batch", str(batch),
                           *map(str, images)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def run_python(images, precision, repeat, batch) -> dict:
    done = subprocess.run([sys.executable, "-m", "bench.cpp_bench", "--python-worker", "--precisions", precision,
                           "--repeat", str(repeat), "--batch", str(batch), "--image-list", "-"],
                          input="\n".join(map(str, images)), capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(done.stdout.strip().splitlines()[-1])


def report_markdown(doc: dict) -> str:
    lines = [f"# C++ runner vs Python runtime: {doc['machine']}", "",
             f"Command: `{doc['command']}`", "",
             f"CPU: {doc['cpu_model']} ({doc['cores']} cores usable; {', '.join(doc['cpu_isa'])}); "
             f"load average before/after: "
             f"{doc['load_before']} / {doc['load_after']}. OpenVINO {doc['versions']['openvino']}, "
             f"Python OpenCV {doc['versions']['cv2']}. {doc['images']} LFW photos "
             f"(first photo of the first {doc['images']} people), backend batch {doc['batch']}, "
             f"median of {doc['rounds']} alternated rounds x {doc['repeat']} repeats.", "",
             "| precision | stage | C++ img/s | Python img/s | C++ / Python |", "|---|---|---|---|---|"]
    for precision, row in doc["results"].items():
        for stage in STAGES:
            c, p = row["cpp"][stage], row["python"][stage]
            lines.append(f"| {precision} | {stage.removesuffix('_img_s')} | {c:.1f} | {p:.1f} | {c / p:.2f} |")
    lines += ["", "Open (model + detector, compiled-model cache warm): " + ", ".join(
        f"{p}: C++ {r['cpp']['open_s']:.2f} s, Python {r['python']['open_s']:.2f} s" for p, r in doc["results"].items()),
        "", "Stages: end_to_end = files to embeddings, each runtime's normal path (the Python Embedder decodes in "
        "threads running ahead of the backend; the C++ library prepares a batch's files on up to 4 threads, then "
        "embeds them, without overlap); prepare = read + decode + detect + align, one thread; backend = the model "
        "alone on one batch (the same OpenVINO kernels on both sides).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cpp_bench", description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("FACE_DATA", str(REPO.parent / "shared" / "data")),
                   help="folder holding lfw-deepfunneled/ (default: $FACE_DATA or ../shared/data)")
    p.add_argument("--images", type=int, default=64, help="how many photos (default 64)")
    p.add_argument("--precisions", default="int8,fp16", help="comma-separated (default int8,fp16)")
    p.add_argument("--repeat", type=int, default=3, help="timed repeats per stage and round (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="alternated C++/Python rounds (default 3)")
    p.add_argument("--batch", type=int, default=32, help="backend batch (default 32)")
    p.add_argument("--build", default=str(REPO / "build"), help="CMake build folder (default build/)")
    p.add_argument("--out", default=str(REPO / "bench" / "results"), help="where cpp-<machine>.json/.md go")
    p.add_argument("--python-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--image-list", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    precisions = [x for x in args.precisions.split(",") if x]
    if args.python_worker:
        images = [line for line in sys.stdin.read().splitlines() if line]
        print(json.dumps(python_worker(images, precisions[0], args.repeat, args.batch)))
        return 0

    from bench.machine import describe_machine, load_average, machine_name

    images = pick_images(Path(args.data) / "lfw-deepfunneled", args.images)
    exe = ensure_built(Path(args.build))
    load_before = load_average()
    runs: dict[str, dict[str, list[dict]]] = {pr: {"cpp": [], "python": []} for pr in precisions}
    for r in range(args.rounds):
        for precision in precisions:
            order = ("cpp", "python") if r % 2 == 0 else ("python", "cpp")
            for who in order:
                res = (run_cpp(exe, images, precision, args.repeat, args.batch) if who == "cpp"
                       else run_python(images, precision, args.repeat, args.batch))
                runs[precision][who].append(res)
                print(f"round {r + 1} {precision} {who}: " + ", ".join(f"{s} {res[s]}" for s in STAGES), flush=True)
    results = {pr: {who: {k: statistics.median(x[k] for x in rs) for k in (*STAGES, "open_s")}
                    for who, rs in per.items()} for pr, per in runs.items()}

    import cv2
    from engine.backends.openvino_backend import import_openvino

    openvino = import_openvino()

    desc = describe_machine(with_gpu=False)
    name = machine_name(desc)
    doc = {"machine": name, "cpu_model": desc["cpu_model"], "cpu_isa": sorted(k for k, v in desc["isa"].items() if v),
           "cores": desc.get("cores"), "command": "python -m bench.cpp_bench " + " ".join(argv or sys.argv[1:]),
           "load_before": load_before, "load_after": load_average(), "images": len(images),
           "batch": args.batch, "repeat": args.repeat, "rounds": args.rounds,
           "versions": {"openvino": openvino.__version__, "cv2": cv2.__version__},
           "results": results, "runs": runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"cpp-{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / f"cpp-{name}.md").write_text(report_markdown(doc))
    print(report_markdown(doc))
    print(f"written: {out / f'cpp-{name}.json'}, {out / f'cpp-{name}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
