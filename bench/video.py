"""``python -m bench.video``: how fast a clip is verified on this machine, split into decoding and the rest.

Writes a 720p clip (``--seconds`` at 30 fps, mp4v) of ``--photo`` placed in
a larger frame and drifting, then times: sampling (grab every frame, decode
the ``--fps`` kept ones), the whole ``FaceVerifier.verify_video`` call
(sampling, detection, second look, alignment, embedding, decision), and the
same sampled frames through the image path (``FaceVerifier.embed``)::

    python -m bench.video --photo ../shared/data/lfw-deepfunneled/George_W_Bush/George_W_Bush_0002.jpg \\
        --reference ../shared/data/lfw-deepfunneled/George_W_Bush/George_W_Bush_0001.jpg
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_720p(photo: Path, out: Path, seconds: float) -> Path:
    import cv2

    img = cv2.imread(str(photo))
    if img is None:
        raise SystemExit(f"python -m bench.video: error: {photo}: not a readable image")
    frame = np.zeros((720, 1280, 3), np.uint8)
    frame[110:610, 390:890] = cv2.resize(img, (500, 500))
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 30, (1280, 720))
    for k in range(int(seconds * 30)):
        writer.write(np.roll(frame, k // 10, 1))
    writer.release()
    return out


def main(argv=None) -> int:
    from engine import FaceVerifier
    from engine.video import sample_frames

    p = argparse.ArgumentParser(prog="python -m bench.video", description=__doc__.split("\n\n")[0])
    p.add_argument("--photo", type=Path, required=True, help="the face the clip shows")
    p.add_argument("--reference", type=Path, required=True, help="the reference photo to verify the clip against")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--fps", type=float, default=5.0)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_720p(args.photo, Path(tmp) / "clip.mp4", args.seconds)
        start = time.perf_counter()
        _, frames = sample_frames(clip, args.fps, 1000)
        sampling = time.perf_counter() - start
        with FaceVerifier() as fv:
            fv.verify(args.reference, args.reference)  # warm: the backend and detectors are open and compiled
            start = time.perf_counter()
            result = fv.verify_video(args.reference, clip, args.fps, 1000)
            whole = time.perf_counter() - start
            start = time.perf_counter()
            fv.embed([f for _, f in frames])
            images = time.perf_counter() - start
            backend = fv.backend
    row = {"clip": f"1280x720, {args.seconds:g} s at 30 fps, mp4v", "sampled_frames": len(frames),
           "backend": backend, "sampling_s": round(sampling, 3), "verify_video_s": round(whole, 3),
           "sampled_frames_per_s": round(len(frames) / whole, 1), "image_path_frames_per_s": round(len(frames) / images, 1),
           "match": result.match, "faced": result.faced}
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
