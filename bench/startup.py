"""``python -m bench.startup``: wall time of a two-image ``engine.verify`` call, cold and warm.

Cold: an empty cache folder (OpenVINO compiles the model, ONNX files are
read with the ``onnx`` package). Warm: the same folder a previous call
filled (compiled blob imported, ONNX checks remembered). ``--baseline DIR``
also times the same call of another checkout of this code (for example the
commit the lean-runtime issue was filed against, from ``git worktree add``),
each call with its own empty cache, and reports how many times faster a warm
call is. The runs alternate so a noisy machine affects all alike; medians
are reported::

    python -m bench.startup A.jpg B.jpg --runs 5 [--baseline /tmp/filed]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_call(a: str, b: str, cache: str, extra: list[str], source: str | None = None) -> float:
    """Seconds of one ``engine.verify a b --json`` process; ``source``: run that checkout's code."""
    env = {**os.environ, "FAKEAWARE_CACHE_DIR": cache}
    if source:  # its folder first on sys.path, ahead of this installed checkout
        env["PYTHONPATH"] = os.pathsep.join([source, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "engine.verify", a, b, "--json", *extra], env=env,
                          cwd=source, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t
    if done.returncode not in (0, 1):
        raise RuntimeError(f"engine.verify{' of ' + source if source else ''} failed ({done.returncode}): "
                           f"{done.stderr.strip().splitlines()[-1:]}")
    return seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n\n")[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--runs", type=int, default=5, help="cold and warm calls each (default 5)")
    p.add_argument("--baseline", metavar="DIR",
                   help="another checkout of this repository to time the same call in (its own code and model)")
    p.add_argument("extra", nargs="*", help="more engine.verify arguments (after --)")
    args = p.parse_args(argv)
    if args.baseline and not (Path(args.baseline) / "engine" / "verify.py").is_file():
        p.error(f"--baseline {args.baseline}: not a checkout of this repository (no engine/verify.py)")
    a, b = (str(Path(x).resolve()) for x in (args.a, args.b))  # a baseline runs in its own folder
    cold, warm, base = [], [], []
    with tempfile.TemporaryDirectory() as root:
        warm_cache = os.path.join(root, "warm")
        one_call(a, b, warm_cache, args.extra)  # fill it
        for i in range(args.runs):
            cold.append(one_call(a, b, os.path.join(root, f"cold{i}"), args.extra))
            warm.append(one_call(a, b, warm_cache, args.extra))
            if args.baseline:
                base.append(one_call(a, b, os.path.join(root, f"base{i}"), args.extra, args.baseline))
    out = {"cold_s": round(statistics.median(cold), 3), "warm_s": round(statistics.median(warm), 3),
           "cold_runs": [round(x, 3) for x in cold], "warm_runs": [round(x, 3) for x in warm]}
    if base:
        out.update(baseline=str(args.baseline), baseline_s=round(statistics.median(base), 3),
                   baseline_runs=[round(x, 3) for x in base],
                   warm_speedup=round(statistics.median(base) / statistics.median(warm), 2))
    out["load_avg"] = os.getloadavg()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
