"""``python -m bench.detectors``: detector speed and recall, one-by-one and batched.

Compares detector ONNX files (the shipped full-range BlazeFace by default,
plus any given with ``--onnx``, e.g. the short-range one from
``python -m convert.detector --variant short_range``) on the same photos:
ms per image on one ONNX Runtime thread, batch 1 and batch ``--batch``,
faces found, and faces found after padding each photo with 300 px of grey
(a small face in a large frame)::

    python -m bench.detectors --images ../shared/data/lfw-deepfunneled --count 300 --onnx /tmp/blazeface_short_range.onnx
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2

from engine.files import printable


def measure(path: Path, images: list, padded: list, batch: int) -> dict:
    from engine.backends.onnxruntime_backend import OnnxRuntimeBackend
    from engine.detect import FaceDetector, _io_shape

    size, dim = _io_shape(path)
    det = FaceDetector(OnnxRuntimeBackend(path, input_size=size, embedding_dim=dim, threads=1, max_batch=batch,
                                          input_name="images", output_name="detections"))
    det.detect(images[0])  # warm-up
    t = time.perf_counter()
    found = sum(bool(det.detect(img)) for img in images)
    single = (time.perf_counter() - t) / len(images)
    t = time.perf_counter()
    for i in range(0, len(images), batch):
        det.detect_batch(images[i:i + batch])
    batched = (time.perf_counter() - t) / len(images)
    found_padded = sum(bool(det.detect(img)) for img in padded)
    det.close()
    return {"detector": path.stem, "input": size, "ms_per_img": round(single * 1e3, 2),
            f"ms_per_img_batch{batch}": round(batched * 1e3, 2), "found": f"{found}/{len(images)}",
            "found_padded": f"{found_padded}/{len(padded)}"}


def main(argv=None) -> int:
    from engine.detect import detector_path
    from engine.preprocess import ImageError, decode

    p = argparse.ArgumentParser(prog="python -m bench.detectors", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, help="folder of photos (searched recursively)")
    p.add_argument("--count", type=int, default=300, help="photos to sample (seed 1; default 300)")
    p.add_argument("--padded", type=int, default=100, help="of those, how many to test padded (default 100)")
    p.add_argument("--batch", type=int, default=32, help="batch size of the batched pass (default 32)")
    p.add_argument("--onnx", action="append", default=[], help="another detector ONNX to compare (repeatable)")
    args = p.parse_args(argv)
    from training.template import sample_photos

    files = sample_photos(args.images, args.count, seed=1)
    if not files:
        print(f"error: {printable(args.images)}: no images", file=sys.stderr)
        return 2
    try:
        images = [decode(f.read_bytes(), str(f)) for f in files]
    except (ImageError, OSError) as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
    padded = [cv2.copyMakeBorder(im, 300, 300, 300, 300, cv2.BORDER_CONSTANT, value=(128, 128, 128))
              for im in images[:args.padded]]
    for path in [detector_path()] + [Path(x) for x in args.onnx]:
        print(measure(path, images, padded, args.batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
