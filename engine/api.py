"""The Python API: open a model once, then verify, embed and compare faces.

::

    from engine import FaceVerifier

    with FaceVerifier() as fv:                    # the bundled model, the fastest backend installed
        result = fv.verify("alice_1.jpg", "alice_2.jpg")
        print(result.similarity, result.match, result.looks_fake)

Images may be file paths, encoded bytes (JPEG, PNG, WebP, ...) or NumPy
``uint8`` RGB arrays of shape (H, W, 3). Each goes through the same checks,
detection, second look, alignment and model as ``python -m engine.verify``.

Errors are exceptions, never results: :class:`ImageError` (not a usable
image), :class:`NoFaceError` (a subclass of it: no face, or not one that
holds up), :class:`ModelError` (a model folder that cannot be used: bad
``model.json``, a file whose digest or canaries do not match, a backend that
cannot run it). A :class:`Verification` is always a decision.

Thread safety: one call at a time per :class:`FaceVerifier` (calls from
several threads are serialised by a lock); open one per thread to run
in parallel. Not picklable; open it in each process.
"""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field

import numpy as np

from engine.backends import BackendError
from engine.contract import ContractError, ModelError
from engine.preprocess import ImageError, NoFaceError

__all__ = ["FaceVerifier", "Verification", "ImageError", "NoFaceError", "ModelError", "decide", "realness", "to_rgb"]


def realness(embeddings: np.ndarray, weight: float) -> np.ndarray:
    """The realness coordinate ``t`` in [-1, 1] (+1 real, -1 fake) of each embedding, or NaN without one.

    The model's last output is ``a t / sqrt(1 + a^2 t^2)`` (a unit identity
    vector and ``a t`` L2-normalised together, see ``nets.model.FaceEmbedder``),
    so ``t = e / (a sqrt(1 - e^2))``.
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    if weight <= 0 or emb.ndim != 2 or emb.shape[1] < 2:
        return np.full(len(emb), np.nan)
    e = emb[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(e / (weight * np.sqrt(np.maximum(1.0 - e * e, 1e-12))), -1.0, 1.0)


def to_rgb(item, source: str, max_bytes: int | None = None, limit_name: str = "the limit") -> np.ndarray:
    """A path, encoded bytes or a ``uint8`` (H, W, 3) RGB array -> a checked RGB array (ImageError otherwise).

    Paths go through the project's safe reader (regular files within a size
    limit); bytes and paths are checked from the header before decoding
    (pixel and byte limits); arrays by shape, type and size.
    """
    from engine.preprocess import MAX_PIXELS, MIN_SOURCE_SIDE, decode, read_file

    if isinstance(item, (str, os.PathLike)):
        return decode(read_file(item), str(item))
    if isinstance(item, (bytes, bytearray, memoryview)):
        if max_bytes is not None and len(item) > max_bytes:
            raise ImageError(f"{source}: {len(item):,} bytes, over {limit_name} of {max_bytes:,} bytes per image")
        return decode(bytes(item), source)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise ImageError(f"{source}: expected a uint8 (H, W, 3) RGB array, got {item.dtype} {item.shape}")
        h, w = item.shape[:2]
        if h * w > MAX_PIXELS or min(h, w) < MIN_SOURCE_SIDE:
            raise ImageError(f"{source}: pixels are {w}x{h}; expected {MIN_SOURCE_SIDE} px to {MAX_PIXELS:,} pixels")
        return np.ascontiguousarray(item)
    raise ImageError(f"{source}: expected a path, encoded bytes or a uint8 RGB array, got {type(item).__name__}")


@dataclass(frozen=True)
class Verification:
    """One decision: ``match`` is ``similarity >= threshold``; ``looks_fake`` says a refusal is the realness
    coordinate's (an image looks synthetic); ``faces`` are the faces used (None without alignment)."""

    similarity: float
    match: bool
    threshold: float
    looks_fake: bool
    realness: tuple[float, float]  # per image, +1 real ... -1 fake (NaN for a model without the coordinate)
    faces: tuple = (None, None)    # engine.detect.Face per image: box, score, keypoints
    warnings: tuple[str, ...] = field(default=())


def decide(embeddings: np.ndarray, threshold: float, weight: float) -> Verification:
    """The decision for a pair of embeddings (rows 0 and 1): the one rule the API, the CLI and the server share.

    ``match`` is ``similarity >= threshold``; ``looks_fake`` marks a refusal
    that the realness coordinate explains (one image looks synthetic, for a
    model with the coordinate, ``weight > 0``). Raises ValueError when the
    similarity is not finite (a zero or non-finite embedding): never a decision.
    """
    sim = FaceVerifier.compare(embeddings[0], embeddings[1])
    real = realness(np.asarray(embeddings)[:2], weight)
    match = sim >= threshold
    return Verification(similarity=sim, match=bool(match), threshold=float(threshold),
                        looks_fake=bool(not match and weight > 0 and np.nanmin(real) < 0),
                        realness=(float(real[0]), float(real[1])))


class FaceVerifier:
    """A model opened once (see the module docstring); a context manager that closes it."""

    def __init__(self, model: str | os.PathLike | None = None, *, backend: str = "auto", precision: str | None = None,
                 device: str | None = None, threads: int | None = None, threshold: float | None = None):
        """``model``: a folder from ``python -m convert``, an ``.onnx`` or a ``.plan`` (default: the bundled one);
        ``backend``/``precision``/``device``/``threads`` as the CLI's flags; ``threshold`` overrides the model's."""
        from engine.backends import open_backend
        from engine.preprocess import Preprocessor

        if threshold is not None and not (isinstance(threshold, (int, float)) and math.isfinite(threshold)
                                          and -1.0 <= threshold <= 1.0):
            raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold!r}")
        self._backend = open_backend(model, backend=backend, precision=precision, device=device, threads=threads)
        config = self._backend.config
        self.threshold = float(threshold) if threshold is not None else config.threshold
        if self.threshold is None:
            self._backend.close()
            raise ContractError(f"{self._backend.source.path}: model.json has no decision threshold; pass threshold=")
        self._preprocessor = Preprocessor(config, size=self._backend.input_size, refuse_non_faces=True)
        self._weight = config.realness_weight
        self._lock = threading.Lock()

    @property
    def backend(self) -> str:
        """Which backend and precision runs, e.g. ``openvino fp16`` (the automatic choice, or the one asked for)."""
        return f"{self._backend.name} {self._backend.precision}"

    def _prepared(self, images) -> list:
        if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)) or \
                (isinstance(images, np.ndarray) and images.ndim == 3):
            images = [images]  # one image, not a batch of its rows
        out = []
        for k, item in enumerate(images):
            source = str(item) if isinstance(item, (str, os.PathLike)) else f"image {k}"
            out.append(self._preprocessor.prepare(to_rgb(item, source), source))
        return out

    def _embed(self, prepared: list) -> np.ndarray:
        emb = self._backend.embed(np.stack([p.image for p in prepared]))
        bad = ~np.isfinite(emb).all(axis=1) | ~(np.linalg.norm(emb, axis=1) > 0)
        if bad.any():
            raise BackendError(f"{self._backend.source.path}: the model returned a zero or non-finite embedding")
        return emb

    def embed(self, images) -> np.ndarray:
        """L2-normalised embeddings, one row per image (a path, bytes or an RGB array, or a list of them).

        Raises for the first image that cannot be embedded, naming it.
        """
        with self._lock:
            return self._embed_images(images)

    def _embed_images(self, images) -> np.ndarray:  # the caller holds the lock
        prepared = self._prepared(images)
        if not prepared:
            return np.zeros((0, self._backend.embedding_dim), np.float32)
        return self._embed(prepared)

    def verify(self, image_a, image_b) -> Verification:
        """Same person or not, as ``python -m engine.verify A B`` decides it."""
        import dataclasses

        with self._lock:
            prepared = self._prepared([image_a, image_b])
            emb = self._embed(prepared)
        return dataclasses.replace(decide(emb, self.threshold, self._weight), faces=tuple(p.face for p in prepared),
                                   warnings=tuple(w for p in prepared for w in p.warnings))

    def verify_video(self, reference, clip, fps: float = 5.0, frames: int = 60):
        """``reference`` (an image) against the person in the video file ``clip``: frames sampled at ``fps``
        (at most ``frames``), each decided as a photo, aggregated so one frame cannot flip it
        (:class:`engine.video.ClipVerification`, with the per-frame timeline)."""
        from engine.video import Frame, aggregate, sample_frames

        with self._lock:
            ref = self._embed_images(reference)[0]
            _, sampled = sample_frames(clip, fps, frames)
            timeline, crops = [], []
            for seconds, prepared in self._prepare_frames(sampled, clip):  # in time order
                if isinstance(prepared, NoFaceError):  # a frame without a face is listed, never guessed
                    timeline.append(Frame(round(seconds, 3), False, error=str(prepared).split(": ", 1)[-1]))
                    continue
                box = [round(float(v), 1) for v in prepared.face.box] if prepared.face is not None else None
                timeline.append(Frame(round(seconds, 3), True, box=box))
                crops.append(prepared)
            embeddings = self._embed(crops) if crops else np.zeros((0, len(ref)), np.float32)
        for frame, emb in zip((f for f in timeline if f.face), embeddings):
            verdict = decide(np.stack([ref, emb]), self.threshold, self._weight)
            frame.similarity, frame.match = round(verdict.similarity, 6), verdict.match
            frame.realness = None if math.isnan(verdict.realness[1]) else round(verdict.realness[1], 4)
            frame.looks_fake = bool(self._weight > 0 and verdict.realness[1] < 0)
        try:
            return aggregate(timeline, embeddings, self.threshold)
        except NoFaceError as exc:
            raise NoFaceError(f"{clip}: {exc}") from None

    def _prepare_frames(self, sampled, clip):
        """(seconds, Prepared or the NoFaceError) per frame, prepared in threads as the Embedder prepares photos
        (each thread its own detector, engine.preprocess.Preprocessor)."""
        from concurrent.futures import ThreadPoolExecutor

        from engine.embedder import default_workers

        def one(item):
            seconds, rgb = item
            try:
                return seconds, self._preprocessor.prepare(rgb, f"{clip} at {seconds:.2f} s")
            except NoFaceError as exc:
                return seconds, exc

        with ThreadPoolExecutor(max(1, min(default_workers(), len(sampled))), thread_name_prefix="frames") as pool:
            return list(pool.map(one, sampled))

    @staticmethod
    def compare(embedding_a, embedding_b) -> float:
        """Cosine similarity of two embeddings (what a decision thresholds)."""
        a, b = np.asarray(embedding_a, np.float64).ravel(), np.asarray(embedding_b, np.float64).ravel()
        if a.shape != b.shape or a.size == 0:
            raise ValueError(f"embeddings must have the same length, got {a.size} and {b.size}")
        den = float(np.linalg.norm(a) * np.linalg.norm(b))
        sim = float(a @ b) / den if den > 0 else float("nan")
        if not math.isfinite(sim):
            raise ValueError("similarity of a zero or non-finite embedding")
        return max(-1.0, min(1.0, sim))

    def close(self) -> None:
        """Free the backend and the detectors (also done by ``with``)."""
        self._preprocessor.close()
        self._backend.close()

    def __enter__(self) -> "FaceVerifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FaceVerifier({str(self._backend.source.path)!r}, {self.backend}, threshold={self.threshold:.4f})"
