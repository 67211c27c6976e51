"""``python -m bench.startup``: wall time of a two-image ``engine.verify`` call, cold and warm.

Cold: an empty cache folder (OpenVINO compiles the model, ONNX files are
read with the ``onnx`` package). Warm: the same folder a previous call
filled (compiled blob imported, ONNX checks remembered). The runs
alternate so a noisy machine affects both alike; medians are reported::

    python -m bench.startup A.jpg B.jpg --runs 5
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


def one_call(a: str, b: str, cache: str, extra: list[str]) -> float:
    env = {**os.environ, "FAKEAWARE_CACHE_DIR": cache}
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "engine.verify", a, b, "--json", *extra], env=env,
                          capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t
    if done.returncode not in (0, 1):
        raise RuntimeError(f"engine.verify failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n\n")[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--runs", type=int, default=5, help="cold and warm calls each (default 5)")
    p.add_argument("extra", nargs="*", help="more engine.verify arguments (after --)")
    args = p.parse_args(argv)
    cold, warm = [], []
    with tempfile.TemporaryDirectory() as root:
        warm_cache = os.path.join(root, "warm")
        one_call(args.a, args.b, warm_cache, args.extra)  # fill it
        for i in range(args.runs):
            cold.append(one_call(args.a, args.b, os.path.join(root, f"cold{i}"), args.extra))
            warm.append(one_call(args.a, args.b, warm_cache, args.extra))
    out = {"cold_s": round(statistics.median(cold), 3), "warm_s": round(statistics.median(warm), 3),
           "cold_runs": [round(x, 3) for x in cold], "warm_runs": [round(x, 3) for x in warm],
           "load_avg": os.getloadavg()}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
