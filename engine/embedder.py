"""Embed many image files through one backend: batched, decoded ahead in threads, order kept.

Decoding and resizing (OpenCV, which releases the GIL) run in a thread pool
up to ``prefetch`` batches ahead of the backend, writing straight into a
small ring of reused batch buffers, so the backend rarely waits for the CPU
side. Images that cannot be used are reported (path + reason) and skipped;
``strict=True`` stops at the first one instead. An optional cache
(``embeddings.npy`` + ``index.json`` per model) lets a re-run skip images it
has already embedded.

The embedder owns its backend (closing the embedder closes it) and calls it
from the thread that calls :meth:`Embedder.embed_paths`: a backend is used by
one thread at a time.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.backends.base import Backend
from engine.preprocess import ImageError, Preprocessor


@dataclass(frozen=True)
class Failure:
    """An image that could not be embedded, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class EmbedResult:
    """Embeddings aligned with the requested paths; NaN rows (``ok`` False) for failed images."""

    embeddings: np.ndarray
    ok: np.ndarray
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the whole call
    n_embedded: int = 0  # distinct images run through the backend
    n_cached: int = 0  # distinct images taken from the cache
    faces: dict = field(default_factory=dict)  # path -> detection info (faces found, box, score), when aligning
    warnings: list[str] = field(default_factory=list)  # several faces, small faces


def default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


class EmbeddingCache:
    """Embeddings of image files for one model, keyed by absolute path, size and mtime.

    Lives in ``<cache_dir>/<fingerprint>/`` (one folder per backend, precision
    and model file), as ``embeddings.npy`` + ``index.json``. Both are replaced
    atomically, array first, so an interrupted save leaves a usable cache.
    """

    def __init__(self, cache_dir: str | os.PathLike, key: dict, dim: int):
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = Path(cache_dir) / digest
        self.key, self.dim = key, dim
        self._rows: dict[str, list] = {}
        self._blocks: list[np.ndarray] = []
        self._n = 0
        self._dirty = False
        self._load()

    def _load(self) -> None:
        index, array = self.folder / "index.json", self.folder / "embeddings.npy"
        if not (index.is_file() and array.is_file()):
            return
        try:
            data = json.loads(index.read_text())
            emb = np.load(array)
            rows = data["entries"]
            if data.get("key") != self.key or emb.ndim != 2 or emb.shape[1] != self.dim:
                return
            if rows and max(r[0] for r in rows.values()) >= len(emb):
                return
        except (OSError, ValueError, KeyError, TypeError):
            return  # an unreadable cache is only a cache: start afresh
        self._rows, self._blocks, self._n = rows, [emb.astype(np.float32, copy=False)], len(emb)

    @staticmethod
    def _stamp(path: Path) -> tuple[str, int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return str(path.resolve()), st.st_size, st.st_mtime_ns

    def get(self, path: Path) -> np.ndarray | None:
        stamp = self._stamp(path)
        entry = self._rows.get(stamp[0]) if stamp else None
        if entry is None or (entry[1], entry[2]) != stamp[1:]:
            return None
        if len(self._blocks) > 1:
            self._blocks = [np.concatenate(self._blocks)]
        return self._blocks[0][entry[0]]

    def put(self, paths: Sequence[Path], embeddings: np.ndarray) -> None:
        keep = []
        for path, emb in zip(paths, embeddings):
            stamp = self._stamp(path)
            if stamp:
                self._rows[stamp[0]] = [self._n + len(keep), stamp[1], stamp[2]]
                keep.append(emb)
        if keep:
            self._blocks.append(np.asarray(keep, dtype=np.float32))
            self._n += len(keep)
            self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        emb = np.concatenate(self._blocks) if self._blocks else np.zeros((0, self.dim), np.float32)
        self._blocks = [emb]
        tmp = self.folder / ".embeddings.npy.tmp"
        with open(tmp, "wb") as f:
            np.save(f, emb)
        os.replace(tmp, self.folder / "embeddings.npy")
        tmp = self.folder / ".index.json.tmp"
        tmp.write_text(json.dumps({"key": self.key, "entries": self._rows}))
        os.replace(tmp, self.folder / "index.json")
        self._dirty = False


def model_fingerprint(backend: Backend) -> dict:
    """What makes embeddings reusable: backend, precision, contract and the model file's identity."""
    cfg = backend.config
    key = {"backend": backend.name, "precision": backend.precision, "input_size": backend.input_size,
           "crop_fraction": backend.crop_fraction, "embedding_dim": backend.embedding_dim, "model": None}
    if cfg is not None and cfg.align != "none":
        key["align"] = [cfg.align, cfg.detector, cfg.template, cfg.margin]
    path = backend.model_path
    if path is not None:
        target = path / "model.safetensors" if path.is_dir() else path
        try:
            st = target.stat()
            key["model"] = [str(target.resolve()), st.st_size, st.st_mtime_ns]
        except OSError:
            key["model"] = str(path)
    return key


class Embedder:
    """Batched, prefetching image-file embedder over one backend."""

    def __init__(self, backend: Backend, workers: int | None = None, strict: bool = False,
                 cache_dir: str | os.PathLike | None = None, batch_size: int | None = None,
                 progress: bool = True, prefetch: int = 2):
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.backend = backend
        self.workers = workers or default_workers()
        self.strict = strict
        self.batch_size = batch_size or backend.max_batch
        self.progress = progress
        self.prefetch = max(0, prefetch)
        self.cache = EmbeddingCache(cache_dir, model_fingerprint(backend), backend.embedding_dim) if cache_dir else None
        self.preprocessor = Preprocessor(backend.config, size=backend.input_size)
        self._info: dict[Path, tuple[dict, list[str]]] = {}
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="decode")
        size = backend.input_size
        self._buffers = [np.empty((self.batch_size, size, size, 3), np.uint8) for _ in range(self.prefetch + 1)]

    def _load_into(self, buf: np.ndarray, row: int, path: Path) -> str | None:
        """Decode + detect + align one file into ``buf[row]``; the failure reason, or None."""
        try:
            prepared = self.preprocessor.load(path)
            buf[row] = prepared.image
            if prepared.face is not None:
                self._info[path] = (prepared.info(), prepared.warnings)
            return None
        except ImageError as exc:
            text = str(exc)
            prefix = f"{path}: "
            return text[len(prefix):] if text.startswith(prefix) else text
        except Exception as exc:  # anything else about one file must not kill a long run
            return f"{type(exc).__name__}: {exc}"

    def _submit(self, k: int, chunk: list[Path]) -> list[Future]:
        buf = self._buffers[k % len(self._buffers)]
        return [self._pool.submit(self._load_into, buf, row, path) for row, path in enumerate(chunk)]

    def embed_paths(self, paths: Sequence[str | os.PathLike], desc: str = "embedding") -> EmbedResult:
        """Embed image files; the result's rows follow ``paths`` (repeated paths are embedded once)."""
        from tqdm import tqdm

        start = time.perf_counter()
        paths = [Path(p) for p in paths]
        unique = list(dict.fromkeys(paths))
        self._info = {}  # this call's detections only
        dim = self.backend.embedding_dim
        found: dict[Path, np.ndarray] = {}
        if self.cache is not None:
            for p in unique:
                hit = self.cache.get(p)
                if hit is not None:
                    found[p] = hit
        n_cached = len(found)
        todo = [p for p in unique if p not in found]
        chunks = [todo[i:i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
        failures: list[Failure] = []
        bar = tqdm(total=len(unique), initial=n_cached, desc=desc, unit="img", disable=not self.progress,
                   leave=False, dynamic_ncols=True)
        pending: dict[int, list[Future]] = {}
        try:
            for k in range(min(len(chunks), self.prefetch + 1)):
                pending[k] = self._submit(k, chunks[k])
            for k, chunk in enumerate(chunks):
                reasons = [f.result() for f in pending.pop(k)]
                buf = self._buffers[k % len(self._buffers)]
                good = [r is None for r in reasons]
                bad = [Failure(p, r) for p, r in zip(chunk, reasons) if r is not None]
                if bad and self.strict:
                    raise ImageError(str(bad[0]))
                failures += bad
                kept = [p for p, g in zip(chunk, good) if g]
                if kept:
                    batch = buf[:len(chunk)] if all(good) else buf[:len(chunk)][np.array(good)]
                    emb = self.backend.embed(batch)
                    found.update(zip(kept, emb))
                    if self.cache is not None:
                        self.cache.put(kept, emb)
                # Batch k's buffer is free again: start decoding the batch that reuses it.
                nxt = k + self.prefetch + 1
                if nxt < len(chunks):
                    pending[nxt] = self._submit(nxt, chunks[nxt])
                bar.update(len(chunk))
        finally:
            for futures in pending.values():  # on error: do not leave decoders writing into buffers
                for f in futures:
                    f.cancel()
                for f in futures:
                    if not f.cancelled():
                        f.exception()
            bar.close()
            if self.cache is not None:
                self.cache.save()
        faces = {p: self._info[p][0] for p in unique if p in self._info}
        warnings = [w for p in unique if p in self._info for w in self._info[p][1]]
        out = np.full((len(paths), dim), np.nan, dtype=np.float32)
        ok = np.zeros(len(paths), dtype=bool)
        for i, p in enumerate(paths):
            emb = found.get(p)
            if emb is not None:
                out[i], ok[i] = emb, True
        return EmbedResult(out, ok, failures, time.perf_counter() - start, len(todo) - len(failures), n_cached,
                           faces, warnings)

    def close(self) -> None:
        """Stop the decode threads and close the backend."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.preprocessor.close()
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
