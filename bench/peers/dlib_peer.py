"""Peer comparison: dlib's face recognizer (not deepfake-aware) on our pairs.

Same pairs, same metrics code as ``python -m engine.verify``, so the numbers
sit side by side. Score = -euclidean distance of dlib descriptors (dlib's own
decision rule is distance < 0.6).

    python -m bench.peers.dlib_peer --pairs DATA/test --report reports/dlib-test
    python -m bench.peers.dlib_peer --lfw LFW_DIR --lfw-pairs lfw-pairs.txt --report reports/dlib-lfw

Needs ``pip install dlib-bin face_recognition_models`` (optional, not a
runtime dependency).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from engine.datasets import read_lfw_pairs, read_pair_folder
from engine.metrics import evaluate, kfold_accuracy
from engine.preprocess import load_image
from engine.report import write_report
from engine.verify import parse_folds
from training.teacher import DlibFaceEncoder


def score_pairs(pairs, image_size: int = 250, batch_size: int = 64) -> tuple[np.ndarray, float]:
    """-L2 distance per pair; each distinct image is embedded once. Returns (scores, images/s)."""
    encoder = DlibFaceEncoder()
    paths = sorted({p for pair in pairs for p in (pair.path_a, pair.path_b)})
    index, chunks = {p: i for i, p in enumerate(paths)}, []
    start = time.perf_counter()
    for i in tqdm(range(0, len(paths), batch_size), desc="dlib", unit="batch"):
        chunks.append(encoder.encode([load_image(p, image_size) for p in paths[i : i + batch_size]]))
    rate = len(paths) / (time.perf_counter() - start)
    emb = np.concatenate(chunks)
    a = emb[[index[p.path_a] for p in pairs]]
    b = emb[[index[p.path_b] for p in pairs]]
    return -np.linalg.norm(a - b, axis=1), rate


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers.dlib_peer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", help="pair folder in the test_public layout with pairs.csv (labels, types)")
    p.add_argument("--lfw", help="LFW image root (identity folders)")
    p.add_argument("--lfw-pairs", help="LFW pairs.txt (10 folds)")
    p.add_argument("--lfw-folds", metavar="K[,K]", help="with --lfw: score only these folds (1-10)")
    p.add_argument("--report", required=True, help="output folder for metrics.json/.md and plots")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the EER CI (default 1000)")
    args = p.parse_args(argv)
    if bool(args.pairs) == bool(args.lfw):
        p.error("give exactly one of --pairs or --lfw/--lfw-pairs")
    pairs = read_pair_folder(args.pairs) if args.pairs else read_lfw_pairs(args.lfw, args.lfw_pairs)
    if args.lfw_folds:
        keep = parse_folds(args.lfw_folds)
        pairs = [pr for pr in pairs if pr.fold in keep]
    scores, rate = score_pairs(pairs)
    labels = np.array([pr.label for pr in pairs])
    types = [pr.type for pr in pairs]
    attacks = [pr.attack for pr in pairs]
    result = evaluate(labels, scores, types, attacks, threshold=-0.6, bootstrap=args.bootstrap)
    result["model"] = "dlib_face_recognition_resnet_model_v1 (score = -L2 distance)"
    result["images_per_s"] = rate
    if args.lfw and len({pr.fold for pr in pairs}) >= 2:
        result["lfw_10fold"] = kfold_accuracy(labels, scores, np.array([pr.fold for pr in pairs]))
    write_report(result, args.report, labels, scores, types)
    print(json.dumps({k: result[k] for k in ("eer", "eer_real", "eer_fake") if k in result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
