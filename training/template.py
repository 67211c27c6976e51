"""``python -m training.template``: the mean keypoints of a photo set in a centre-crop frame.

A model trained on centre crops of roughly aligned photos (LFW
deep-funneled, ``crop_fraction`` 0.5) saw faces at these positions; used
as its alignment template, detection + alignment reproduces that view on
any photo (padded, rotated, tightly framed), without retraining. This is
how ``engine.align.LFW_CENTRE`` was measured::

    python -m training.template --images ../shared/data/lfw-deepfunneled --count 1000 --crop-fraction 0.5
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

from engine.files import printable


def sample_photos(folder, count: int, seed: int) -> list[Path]:
    """``count`` images (recursive) of ``folder``, a seeded random draw in a fixed order."""
    from engine.datasets import list_images

    files = list_images(folder) if Path(folder).is_dir() else []
    random.Random(seed).shuffle(files)
    return files[:count]


def measure_template(images: list[Path], crop_fraction: float, size: int = 112) -> tuple[np.ndarray, int]:
    """Mean of the best face's 4 alignment keypoints, in a ``size`` crop's coordinates; (points, faces used)."""
    from engine.detect import open_detector
    from engine.preprocess import decode

    detector = open_detector()
    points = []
    for path in images:
        rgb = decode(path.read_bytes(), str(path))
        faces = detector.detect(rgb)
        if not faces:
            continue
        h, w = rgb.shape[:2]
        side = round(min(h, w) * crop_fraction)
        top, left = (h - side) // 2, (w - side) // 2
        points.append((faces[0].keypoints[:4] - (left, top)) * (size / side))
    detector.close()
    return np.mean(points, axis=0), len(points)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.template", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, help="folder of photos (searched recursively)")
    p.add_argument("--count", type=int, default=1000, help="photos to sample (seed 0; default 1000)")
    p.add_argument("--crop-fraction", type=float, default=0.5, help="centre-crop share of the short side (default 0.5)")
    args = p.parse_args(argv)
    files = sample_photos(args.images, args.count, seed=0)
    if not files:
        print(f"error: {printable(args.images)}: no images", file=sys.stderr)
        return 2
    pts, used = measure_template(files, args.crop_fraction)
    print(f"{used} faces: " + ", ".join(f"({x:.1f}, {y:.1f})" for x, y in pts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
