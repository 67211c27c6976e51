"""``python -m bench.realness``: real deepfakes through the runtime, at the model's shipped threshold.

The held-out part of DFDC's face crops (source videos split exactly as
training split them: ``engine.datasets.split_by_identity``, share 0.2,
seed 0) goes through the same Embedder as ``engine.verify``; for each fake,
the pair (the real face it was made from, the fake) is decided at the
model's threshold. Reported: the share of those pairs refused (the fake
caught), the share of real faces whose realness coordinate is below 0
(looks fake: a real photo that would lose its genuine matches), and the
image-level AUC of the coordinate (real faces score 0, ties count half, so
this is a lower bound of the realness head's own AUC)::

    python -m bench.realness --dfdc ../shared/data/dfdc-faces [--model DIR] [--precision fp16] [--json OUT]
"""
from __future__ import annotations

import argparse
import sys

from engine.files import printable


def main(argv=None) -> int:
    import numpy as np

    from engine.backends import open_backend
    from engine.datasets import DataError, read_dfdc_faces, split_by_identity
    from engine.embedder import Embedder
    from engine.metrics import roc_auc
    from engine.api import realness

    ap = argparse.ArgumentParser(prog="python -m bench.realness", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dfdc", required=True, help="DFDC face-crop folder (faces.csv, real/, fake/)")
    ap.add_argument("--val-share", type=float, default=0.2, help="held-out share of source videos, as in "
                                                                  "training (default %(default)s)")
    ap.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--precision", default=None, help="precision (default: the runtime's choice)")
    ap.add_argument("--json", default="", help="write the numbers here")
    args = ap.parse_args(argv)
    try:
        _, val = split_by_identity(read_dfdc_faces(args.dfdc), args.val_share, seed=0)
    except DataError as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
    backend = open_backend(args.model, precision=args.precision)
    config = backend.config
    with Embedder(backend, progress=True) as emb:
        res = emb.embed_paths([s.path for s in val])
    ok = np.asarray(res.ok, bool)
    t = realness(res.embeddings, config.realness_weight)
    is_fake = np.array([s.is_fake for s in val], bool)
    row = {s.path: i for i, s in enumerate(val)}
    source = {s.identity: row[s.path] for s in val if not s.is_fake}
    refused = scored = failed = 0
    for i, s in enumerate(val):
        if not s.is_fake or s.identity not in source:
            continue
        j = source[s.identity]
        if not (ok[i] and ok[j]):
            failed += 1  # no face found: the runtime refuses the pair with exit 2, not a decision
            continue
        scored += 1
        refused += float(res.embeddings[i] @ res.embeddings[j]) < config.threshold
    found = ok & np.isfinite(t)
    out = {"model": str(args.model or "bundled"), "backend": backend.name, "precision": backend.precision,
           "threshold": config.threshold, "images": len(val), "faces_found": int(ok.sum()),
           "pairs_scored": scored, "pairs_without_face": failed,
           "fake_pairs_refused": refused / scored if scored else None,
           "real_faces_looking_fake": float((t[found & ~is_fake] < 0).mean()),
           "fake_faces_looking_fake": float((t[found & is_fake] < 0).mean()),
           "coordinate_auc": roc_auc((~is_fake[found]).astype(int), t[found])}
    print(f"DFDC held-out ({out['faces_found']}/{len(val)} faces found; {backend.name} {backend.precision}, "
          f"threshold {config.threshold:.4f}): fake-vs-source pairs refused {out['fake_pairs_refused']:.4f} "
          f"of {scored}; real faces looking fake {out['real_faces_looking_fake']:.4f}, fakes looking fake "
          f"{out['fake_faces_looking_fake']:.4f}; coordinate AUC {out['coordinate_auc']:.4f}")
    if args.json:
        from bench.report import write_result

        write_result(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
