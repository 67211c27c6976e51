"""``python -m bench.framing``: LFW pairs with one photo small inside a larger frame, as photos that are not LFW crops.

Each pair of an LFW fold (fold 1 by default: identities the shipped model
never saw) is scored as it is and with its second photo pasted, at a seeded
random place, into a frame of each ``--frames`` size (a blurred noise
background, JPEG quality 95): the face then fills a few per cent of the
photo, as in a group or CCTV shot. Reported per frame: faces found in the
framed photos, and the same-person and different-person decisions right at
the model's shipped threshold, through the same Embedder as
``engine.verify``::

    python -m bench.framing --lfw ../shared/data/lfw-deepfunneled --lfw-pairs ../shared/data/lfw-pairs.txt
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np


def frame_photo(bgr: np.ndarray, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """``bgr`` pasted at a random place into a ``width`` x ``height`` blurred-noise frame."""
    noise = rng.integers(40, 216, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    frame = cv2.resize(cv2.GaussianBlur(noise, (0, 0), 2), (width, height), interpolation=cv2.INTER_LINEAR)
    h, w = bgr.shape[:2]
    y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    frame[y:y + h, x:x + w] = bgr
    return frame


def score(embedder, pairs: list, threshold: float, folder: Path, size: tuple[int, int] | None, seed: int) -> dict:
    """Decisions on ``pairs`` ``(a, b, same)`` with each ``b`` framed at ``size`` (None: as it is)."""
    seconds = [b for _, b, _ in pairs]
    if size is not None:
        rng = np.random.default_rng(seed)
        for i, path in enumerate(seconds):
            seconds[i] = folder / f"{i:05d}.jpg"
            cv2.imwrite(str(seconds[i]), frame_photo(cv2.imread(str(path)), *size, rng), [cv2.IMWRITE_JPEG_QUALITY, 95])
    n = len(pairs)
    res = embedder.embed_paths([a for a, _, _ in pairs] + seconds)
    found = int(res.ok[n:].sum())
    right = {True: 0, False: 0}
    for i, (_, _, same) in enumerate(pairs):
        if res.ok[i] and res.ok[n + i]:  # a failure is never a right answer
            right[same] += (float(res.embeddings[i] @ res.embeddings[n + i]) >= threshold) == same
    total = {k: sum(1 for *_, same in pairs if same == k) for k in (True, False)}
    return {"frame": "as it is" if size is None else f"{size[0]}x{size[1]}", "framed_found": found, "framed": n,
            "same_right": right[True], "same": total[True], "different_right": right[False],
            "different": total[False]}


def main(argv=None) -> int:
    from engine.backends import open_backend
    from engine.datasets import read_lfw_pairs
    from engine.embedder import Embedder

    ap = argparse.ArgumentParser(prog="python -m bench.framing", description=__doc__.split("\n\n")[0])
    ap.add_argument("--lfw", required=True, help="LFW image folder (lfw-deepfunneled)")
    ap.add_argument("--lfw-pairs", required=True, help="LFW View 2 pairs.txt")
    ap.add_argument("--fold", type=int, default=1, help="1-based fold whose pairs are used (default 1)")
    ap.add_argument("--limit", type=int, default=200, help="pairs used, half same-person (default 200)")
    ap.add_argument("--frames", default="1600x1200,4000x3000", help="frame sizes WxH, comma-separated")
    ap.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--precision", default=None, help="precision (default: the runtime's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    try:
        sizes = [tuple(int(v) for v in f.lower().split("x")) for f in args.frames.split(",") if f]
        if any(len(s) != 2 or min(s) < 250 for s in sizes):
            raise ValueError
    except ValueError:
        ap.error(f"--frames: expected sizes like 1600x1200, each side at least 250 px, got {args.frames!r}")
    fold = [p for p in read_lfw_pairs(Path(args.lfw), Path(args.lfw_pairs)) if p.fold == args.fold - 1]
    same = [(p.path_a, p.path_b, True) for p in fold if p.label == 1][: args.limit // 2]
    different = [(p.path_a, p.path_b, False) for p in fold if p.label == 0][: args.limit - len(same)]
    backend = open_backend(args.model, precision=args.precision)
    threshold = backend.config.threshold
    rows = []
    with Embedder(backend, progress=False) as embedder, tempfile.TemporaryDirectory() as tmp:
        for size in [None, *sizes]:
            row = score(embedder, same + different, threshold, Path(tmp), size, args.seed)
            rows.append(row)
            print(f"{row['frame']:>10}: second photo's face found {row['framed_found']}/{row['framed']}, "
                  f"same-person {row['same_right']}/{row['same']} right, "
                  f"different-person {row['different_right']}/{row['different']} right "
                  f"(threshold {threshold:.4f}, {backend.name} {backend.precision})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
