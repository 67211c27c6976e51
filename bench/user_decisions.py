"""``python -m bench.user_decisions``: 20 same-person and 20 different-person decisions, as a new user tries them.

The people are the 20 most photographed identities of one LFW fold (fold 1
by default: the shipped model never saw them in training or validation);
same-person pairs are each person's first two photos, different-person
pairs each person's first photo against the next person's second. Every
decision is taken at the model's shipped threshold, through the same
Embedder as ``engine.verify``::

    python -m bench.user_decisions --lfw ../shared/data/lfw-deepfunneled --lfw-pairs ../shared/data/lfw-pairs.txt
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path


def pick_pairs(lfw: Path, pairs_txt: Path, fold: int, n: int = 20) -> tuple[list, list]:
    from engine.datasets import read_lfw_pairs

    names = {p.parent.name for pr in read_lfw_pairs(lfw, pairs_txt) if pr.fold == fold - 1
             for p in (pr.path_a, pr.path_b)}
    counts = Counter({name: len(list((lfw / name).glob("*.jpg"))) for name in names})
    people = [name for name, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= 2][:n]
    photos = {name: sorted((lfw / name).glob("*.jpg")) for name in people}
    same = [(photos[p][0], photos[p][1]) for p in people]
    different = [(photos[p][0], photos[people[(i + 1) % len(people)]][1]) for i, p in enumerate(people)]
    return same, different


def main(argv=None) -> int:
    from engine.backends import open_backend
    from engine.embedder import Embedder

    ap = argparse.ArgumentParser(prog="python -m bench.user_decisions", description=__doc__.split("\n\n")[0])
    ap.add_argument("--lfw", required=True, help="LFW image folder (lfw-deepfunneled)")
    ap.add_argument("--lfw-pairs", required=True, help="LFW pairs.txt (picks the fold's identities)")
    ap.add_argument("--fold", type=int, default=1, help="1-based fold whose people are used (default 1)")
    ap.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--precision", default=None, help="precision (default: the runtime's choice)")
    ap.add_argument("--json", action="store_true", help="print every pair as JSON")
    args = ap.parse_args(argv)
    same, different = pick_pairs(Path(args.lfw), Path(args.lfw_pairs), args.fold)
    backend = open_backend(args.model, precision=args.precision)
    threshold = backend.config.threshold
    with Embedder(backend, progress=False) as emb:
        paths = sorted({p for pair in same + different for p in pair})
        res = emb.embed_paths(paths)
    index = {p: i for i, p in enumerate(paths)}
    rows, right = [], {"same": 0, "different": 0}
    for kind, pairs in (("same", same), ("different", different)):
        for a, b in pairs:
            ia, ib = index[a], index[b]
            ok = bool(res.ok[ia] and res.ok[ib])
            sim = float(res.embeddings[ia] @ res.embeddings[ib]) if ok else None
            decided_same = ok and sim >= threshold
            correct = ok and decided_same == (kind == "same")  # a failure is never a right answer
            right[kind] += correct
            rows.append({"kind": kind, "a": a.name, "b": b.name, "similarity": sim, "correct": correct})
    if args.json:
        print(json.dumps(rows, indent=1))
    print(f"threshold {threshold:.4f} ({backend.name} {backend.precision}): same-person {right['same']}/"
          f"{len(same)} right, different-person {right['different']}/{len(different)} right")
    return 0


if __name__ == "__main__":
    sys.exit(main())
