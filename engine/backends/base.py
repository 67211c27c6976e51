"""The interface every inference backend implements.

A backend turns a batch of preprocessed images, uint8 RGB NHWC (B, S, S, 3) as
:mod:`engine.preprocess` produces them, into L2-normalised float32
embeddings (B, D). Batches larger than ``max_batch`` are split here, so callers
never need to know a backend's limit.

Thread safety: a backend instance is used by one thread at a time (its
buffers, session or execution context are reused between calls). The
:class:`engine.embedder.Embedder` owns its backend and calls it from one thread.
"""
from __future__ import annotations

import abc
from pathlib import Path

import numpy as np

from engine.contract import ModelError


class BackendError(ModelError, RuntimeError):
    """A backend cannot be opened or run here; the message says why and what to do."""


class Backend(abc.ABC):
    """Base class: validation, batch splitting, context manager. Subclasses implement ``_infer``."""

    name: str = "backend"

    def __init__(self, *, precision: str, max_batch: int, input_size: int, embedding_dim: int,
                 model_path: str | Path | None = None, device: str = "cpu", digest: str | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.precision = precision
        self.max_batch = int(max_batch)
        self.input_size = int(input_size)
        self.embedding_dim = int(embedding_dim)
        self.model_path = Path(model_path) if model_path is not None else None
        self.model_digest = digest  # SHA-256 of the file that runs (engine.integrity); keys the caches
        self.device = device
        self.closed = False
        # The model's contract (threshold, crop); set by engine.backends.open_backend.
        self.config = None

    @property
    def crop_fraction(self) -> float:
        """Centre-crop share the host-side preprocessing must apply for this model."""
        return self.config.crop_fraction if self.config is not None else 1.0

    @abc.abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """Embed 1..max_batch images (C-contiguous uint8 NHWC); return float32 (B, D)."""

    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 (B, S, S, 3) -> float32 (B, D); any B >= 0, split into chunks of ``max_batch``."""
        if self.closed:
            raise BackendError(f"{self.name} backend is closed")
        images = np.asarray(images)
        s = self.input_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise ValueError(f"{self.name}: expected uint8 (B, {s}, {s}, 3), got {images.dtype} {images.shape}")
        n = len(images)
        out = np.empty((n, self.embedding_dim), dtype=np.float32)
        for start in range(0, n, self.max_batch):
            chunk = np.ascontiguousarray(images[start:start + self.max_batch])
            result = self._infer(chunk)
            if result.shape != (len(chunk), self.embedding_dim):
                raise BackendError(f"{self.name}: model returned shape {result.shape}, "
                                   f"expected {(len(chunk), self.embedding_dim)}")
            out[start:start + len(chunk)] = result
        return out

    @property
    def executed_precision(self) -> str:
        """The arithmetic the runtime actually runs (read back where the runtime can change it)."""
        return self.precision

    def describe(self) -> dict:
        """What runs: for logs, reports and the CLI's JSON."""
        return {"backend": self.name, "precision": self.precision, "device": self.device,
                "max_batch": self.max_batch, "input_size": self.input_size,
                "embedding_dim": self.embedding_dim, "model": str(self.model_path) if self.model_path else None}

    def close(self) -> None:
        """Release sessions and buffers; further ``embed`` calls raise. Idempotent."""
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(precision={self.precision!r}, device={self.device!r}, "
                f"max_batch={self.max_batch}, model={str(self.model_path)!r})")
