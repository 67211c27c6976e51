"""``python -m bench.face_gate``: what the face-quality gate refuses, on real faces and on things that are not faces.

A biometric decision needs a face. BlazeFace fires on some noise and
textures, and its keypoints on a non-face are arbitrary; with ``--align
none`` nothing was looked at at all. The gate (``engine.detect.Face.quality``)
combines the detector's score with the keypoints' geometry. This counts,
for seeded samples of real faces (LFW photos, UTKFace crops, DFDC faces real
and fake: a deepfake is still a face and must reach the model) and for images
generated here that are not faces (uniform and Gaussian noise, smooth noise,
gratings, checkerboards, gradients, random shapes, each at several sizes),
how many are refused with detection (``--align face``, the photo) and with
the crop check of ``--align none`` (the detector run on the centre crop)::

    python -m bench.face_gate --lfw ../shared/data/lfw-deepfunneled --utk ../shared/data/utkface-crops \\
        --dfdc ../shared/data/dfdc-faces --json bench/results/face-gate.json
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import cv2
import numpy as np

KINDS = ("uniform noise", "gaussian noise", "smooth noise", "grating", "checkerboard", "gradient", "shapes")


def non_face(kind: str, seed: int) -> np.ndarray:
    """One generated RGB image of ``kind`` (no face by construction), 64-640 px a side."""
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(64, 641, 2))
    if kind == "uniform noise":
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if kind == "gaussian noise":
        return np.clip(rng.normal(128, rng.uniform(10, 80), (h, w, 3)), 0, 255).astype(np.uint8)
    if kind == "smooth noise":
        small = rng.integers(0, 256, (int(rng.integers(3, 24)),) * 2 + (3,), dtype=np.uint8)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    if kind == "grating":
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 80)
        wave = np.sin((xs * np.cos(angle) + ys * np.sin(angle)) * 2 * np.pi / period)
        colour = rng.uniform(0, 255, 3)
        return np.clip(128 + wave[..., None] * (colour - 128), 0, 255).astype(np.uint8)
    if kind == "checkerboard":
        cell = int(rng.integers(4, 80))
        board = ((xs // cell + ys // cell) % 2)[..., None]
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        return (board * a + (1 - board) * b).astype(np.uint8)
    if kind == "gradient":
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (xs / w * rng.uniform(-1, 1) + ys / h * rng.uniform(-1, 1))[..., None]
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-9)
        return (a + t * (b - a)).astype(np.uint8)
    img = np.full((h, w, 3), rng.integers(0, 256, 3), np.uint8)
    for _ in range(int(rng.integers(3, 15))):  # shapes: ellipses, rectangles, lines
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        shape = rng.integers(0, 3)
        if shape == 0:
            axes = (int(rng.integers(3, w // 2 + 4)), int(rng.integers(3, h // 2 + 4)))
            cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
        elif shape == 1:
            cv2.rectangle(img, centre, (int(rng.integers(0, w)), int(rng.integers(0, h))), colour, -1)
        else:
            cv2.line(img, centre, (int(rng.integers(0, w)), int(rng.integers(0, h))), colour, int(rng.integers(1, 8)))
    return img


def judge(pre_face, pre_none, rgb: np.ndarray, source: str) -> tuple[str | None, str | None]:
    """(why --align face refuses it or None, why --align none refuses it or None)."""
    from engine.preprocess import ImageError

    out = []
    for pre in (pre_face, pre_none):
        try:
            pre.prepare(rgb, source)
            out.append(None)
        except ImageError as exc:
            reason = str(exc).split(": ", 1)[1]
            out.append(reason.split(" (")[0])
    return out[0], out[1]


def tally(rows: list[tuple[str | None, str | None]]) -> dict:
    n = len(rows)
    face = [r[0] for r in rows if r[0]]
    none = [r[1] for r in rows if r[1]]
    reasons = {}
    for r in face:
        reasons[r] = reasons.get(r, 0) + 1
    return {"images": n, "refused_align_face": len(face), "refused_align_none": len(none),
            "rate_align_face": round(len(face) / max(n, 1), 4), "rate_align_none": round(len(none) / max(n, 1), 4),
            "reasons_align_face": reasons}


def main(argv=None) -> int:
    from engine.contract import ModelConfig
    from engine.preprocess import Preprocessor, decode, read_file

    p = argparse.ArgumentParser(prog="python -m bench.face_gate", description=__doc__.split("\n\n")[0])
    p.add_argument("--lfw", type=Path, help="LFW folder (one sub-folder of photos per person)")
    p.add_argument("--utk", type=Path, help="a folder of face crops (UTKFace)")
    p.add_argument("--dfdc", type=Path, help="the DFDC faces folder (faces.csv: real and fake crops)")
    p.add_argument("--count", type=int, default=600, help="photos per real set (default 600)")
    p.add_argument("--non-faces", type=int, default=200, help="generated images per kind (default 200)")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    config = ModelConfig.load(Path(__file__).resolve().parents[1] / "engine" / "models" / "model.json")
    pre_face = Preprocessor(config, refuse_non_faces=True)
    pre_none = Preprocessor(ModelConfig(**{**config.to_dict(), "align": "none"}), refuse_non_faces=True)
    rng = random.Random(args.seed)
    sets: dict[str, list[Path]] = {}
    if args.lfw:
        files = sorted(args.lfw.glob("*/*.jpg"))
        sets["LFW"] = rng.sample(files, min(args.count, len(files)))
    if args.utk:
        files = sorted(f for f in args.utk.rglob("*") if f.suffix.lower() in (".jpg", ".png"))
        sets["UTKFace"] = rng.sample(files, min(args.count, len(files)))
    if args.dfdc:
        import csv

        with open(args.dfdc / "faces.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        for label in ("real", "fake"):
            chosen = [r for r in rows if r.get("label") == label]
            picked = rng.sample(chosen, min(args.count, len(chosen)))
            sets[f"DFDC {label}"] = [args.dfdc / r["file"] for r in picked]
    results = []
    for name, files in sets.items():
        rows = [judge(pre_face, pre_none, decode(read_file(f), str(f)), str(f)) for f in files]
        results.append({"set": name, "faces": True, **tally(rows)})
        print(json.dumps(results[-1]), file=sys.stderr)
    for k, kind in enumerate(KINDS):
        rows = [judge(pre_face, pre_none, non_face(kind, args.seed * 100000 + k * 1000 + i), kind)
                for i in range(args.non_faces)]
        results.append({"set": kind, "faces": False, **tally(rows)})
        print(json.dumps(results[-1]), file=sys.stderr)
    pre_face.close()
    pre_none.close()
    real = [r for r in results if r["faces"]]
    fake = [r for r in results if not r["faces"]]
    for what, group in (("real faces refused", real), ("non-faces accepted", fake)):
        n = sum(r["images"] for r in group)
        for mode in ("face", "none"):
            refused = sum(r[f"refused_align_{mode}"] for r in group)
            count = refused if what.startswith("real") else n - refused
            print(f"{what}, --align {mode}: {count}/{n}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
