"""``python -m bench.identity_cost``: what the realness coordinate costs identity, on the same pairs.

Every image is embedded once through the runtime (the same Embedder as
``engine.verify``); each pair is then scored twice: with the shipped
embedding (identity and realness coordinate together) and with the
identity part alone (the first D - 1 values, renormalised). The impostor
EER (genuine vs different-person pairs) of the two scores shows whether
realness moved real-vs-real decisions; the overall and fake EERs show what
it buys. Pairs with an image where no face is found are left out of both::

    python -m bench.identity_cost --pairs DATA/test --labels DATA/test/pairs.csv [--json OUT]
    python -m bench.identity_cost --lfw ../shared/data/lfw-deepfunneled --lfw-pairs ../shared/data/lfw-pairs.txt \\
        --lfw-folds 1
"""
from __future__ import annotations

import argparse
import sys

from engine.files import printable


def identity_only(embeddings):
    """The identity part of shipped embeddings: all but the realness coordinate, renormalised."""
    import numpy as np

    part = np.asarray(embeddings, np.float64)[:, :-1]
    return part / np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12)


def main(argv=None) -> int:
    import numpy as np

    from engine.backends import open_backend
    from engine.datasets import DataError, read_lfw_pairs, read_pair_folder
    from engine.embedder import Embedder
    from engine.metrics import evaluate

    ap = argparse.ArgumentParser(prog="python -m bench.identity_cost", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", help="pair folder (pairs.csv or test_public layout)")
    ap.add_argument("--labels", help="with --pairs: labels CSV (pair_id,label[,type,attack])")
    ap.add_argument("--lfw", help="LFW image folder")
    ap.add_argument("--lfw-pairs", help="with --lfw: pairs.txt")
    ap.add_argument("--lfw-folds", default="", help="with --lfw: 1-based folds to score (default all)")
    ap.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--precision", default=None, help="precision (default: the runtime's choice)")
    ap.add_argument("--json", default="", help="write the numbers here")
    args = ap.parse_args(argv)
    if bool(args.pairs) == bool(args.lfw):
        ap.error("give --pairs or --lfw (with --lfw-pairs)")
    try:
        if args.pairs:
            pairs = read_pair_folder(args.pairs, args.labels)
        else:
            if not args.lfw_pairs:
                ap.error("--lfw needs --lfw-pairs")
            folds = {int(k) - 1 for k in args.lfw_folds.split(",") if k.strip()}
            pairs = [p for p in read_lfw_pairs(args.lfw, args.lfw_pairs) if not folds or p.fold in folds]
    except (DataError, ValueError) as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
    backend = open_backend(args.model, precision=args.precision)
    if backend.config.realness_weight <= 0:
        print("error: the model has no realness coordinate: nothing to compare", file=sys.stderr)
        return 2
    paths = sorted({str(p) for pair in pairs for p in (pair.path_a, pair.path_b)})
    with Embedder(backend, progress=True) as emb:
        res = emb.embed_paths(paths)
    index = {p: i for i, p in enumerate(paths)}
    a = np.array([index[str(p.path_a)] for p in pairs])
    b = np.array([index[str(p.path_b)] for p in pairs])
    ok = np.asarray(res.ok, bool)
    keep = ok[a] & ok[b]
    a, b = a[keep], b[keep]
    kept = [p for p, k in zip(pairs, keep) if k]
    labels = [p.label for p in kept]
    types = [p.type for p in kept] if any(p.type for p in kept) else None
    attacks = [p.attack for p in kept]
    shipped = np.asarray(res.embeddings, np.float64)
    ident = identity_only(shipped)
    out = {"model": str(args.model or "bundled"), "backend": backend.name, "precision": backend.precision,
           "pairs": len(pairs), "scored": len(kept)}
    for name, e in (("shipped", shipped), ("identity_only", ident)):
        r = evaluate(labels, (e[a] * e[b]).sum(1), types, attacks, bootstrap=0)
        out[name] = {k: r.get(k) for k in ("eer", "eer_real", "eer_fake", "roc_auc")}
    delta = (out["shipped"]["eer_real"] or 0.0) - (out["identity_only"]["eer_real"] or 0.0)
    out["impostor_eer_delta"] = delta
    print(f"{len(kept)}/{len(pairs)} pairs scored ({backend.name} {backend.precision}); impostor EER: shipped "
          f"{out['shipped']['eer_real']:.4f}, identity only {out['identity_only']['eer_real']:.4f} "
          f"(delta {delta:+.4f}); overall EER: shipped {out['shipped']['eer']:.4f}, identity only "
          f"{out['identity_only']['eer']:.4f}")
    if args.json:
        from bench.report import write_result

        write_result(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
