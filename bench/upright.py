"""``python -m bench.upright``: how often the upright check refuses faces that are upright, and turned ones.

BlazeFace fires on faces turned 90 degrees (and upside down) with keypoints
on the wrong features; the alignment then warps the wrong points and the
same person scores as a stranger. ``Face.upright`` (``engine/detect.py``)
refuses such detections. This counts, for seeded random photos of each
folder as they are and turned 90 degrees either way (and 180), how many of
the detections (most confident face per photo) each rule refuses: the
eye-line rule alone, the tilt rule alone, and the two together (the
runtime's check)::

    python -m bench.upright --lfw ../shared/data/lfw-deepfunneled --utk ../shared/data/utkface-crops
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import cv2
import numpy as np

TURNS = {"upright": None, "90 clockwise": cv2.ROTATE_90_CLOCKWISE,
         "90 anticlockwise": cv2.ROTATE_90_COUNTERCLOCKWISE, "180": cv2.ROTATE_180}


def count(detector, files: list[Path], turn) -> dict:
    from engine.detect import MAX_TILT
    from engine.preprocess import decode, read_file

    rows = {"photos": len(files), "detections": 0, "refused": 0, "refused_eye_line": 0, "refused_tilt": 0,
            "largest_tilt": 0.0}
    for path in files:
        rgb = decode(read_file(path), str(path))
        if turn is not None:
            rgb = np.ascontiguousarray(cv2.rotate(rgb, turn))
        faces = detector.detect(rgb)
        if not faces:
            continue
        face = max(faces, key=lambda f: f.score)
        rows["detections"] += 1
        rows["refused"] += not face.upright
        rows["refused_eye_line"] += not face.eye_line_ok
        rows["refused_tilt"] += face.tilt > MAX_TILT
        rows["largest_tilt"] = round(max(rows["largest_tilt"], face.tilt), 1)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.upright", description=__doc__.split("\n\n")[0])
    p.add_argument("--lfw", type=Path, required=True, help="LFW folder (one sub-folder of photos per person)")
    p.add_argument("--utk", type=Path, help="a folder of face crops (UTKFace), counted upright only")
    p.add_argument("--count", type=int, default=1000, help="upright LFW photos (default 1000)")
    p.add_argument("--turned", type=int, default=300, help="LFW photos per turn (default 300)")
    p.add_argument("--utk-count", type=int, default=600)
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if not args.lfw.is_dir():
        p.error(f"--lfw {args.lfw}: not a folder")
    from engine.detect import open_detector

    lfw = sorted(args.lfw.glob("*/*.jpg"))
    random.Random(args.seed).shuffle(lfw)
    detector = open_detector()
    rows = []
    for name, turn in TURNS.items():
        files = lfw[:args.count if turn is None else args.turned]
        rows.append({"set": "lfw", "turn": name, **count(detector, files, turn)})
    if args.utk is not None:
        utk = sorted(args.utk.glob("*.jpg"))
        random.Random(args.seed).shuffle(utk)
        rows.append({"set": "utk", "turn": "upright", **count(detector, utk[:args.utk_count], None)})
    for r in rows:
        print(f"{r['set']:>4} {r['turn']:>16}: {r['detections']}/{r['photos']} detected; refused {r['refused']} "
              f"(eye line alone {r['refused_eye_line']}, tilt alone {r['refused_tilt']}); "
              f"largest tilt {r['largest_tilt']} deg")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
