"""Embed many image files through one backend: batched, decoded ahead in threads, order kept.

Decoding and resizing (OpenCV, which releases the GIL) run in a thread pool
up to ``prefetch`` batches ahead of the backend, writing straight into a
small ring of reused batch buffers, so the backend rarely waits for the CPU
side. Images that cannot be used are reported (path + reason) and skipped;
``strict=True`` stops at the first one instead. An optional cache
(``embeddings.npy`` + ``index.json`` per model, keyed by each file's content
hash) lets a re-run skip images it has already embedded: the decode threads
read and hash each file and take a hit from the cache instead of decoding it.

The embedder owns its backend (closing the embedder closes it) and calls it
from the thread that calls :meth:`Embedder.embed_paths`: a backend is used by
one thread at a time.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.backends.base import Backend
from engine.files import write_atomic
from engine.preprocess import PREPROCESS_VERSION, ImageError, Preprocessor, read_file

log = logging.getLogger(__name__)


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
    """Embeddings of image files for one model, keyed by the SHA-256 of each file's bytes.

    Keyed on content, not on path, size and mtime: a file replaced by another
    of the same size and mtime (a copy with ``cp -p``, a re-extracted archive)
    must not get the old file's embedding. Lives in ``<cache_dir>/<fingerprint>/``
    (one folder per backend, precision and model file), as ``embeddings.npy`` +
    ``index.json``, both replaced atomically, array first, so an interrupted
    save leaves a usable cache. A damaged cache is ignored with a warning and
    rebuilt; it never yields a wrong row. ``get`` is called from the decode
    threads, ``put`` from the embedding thread: both hold a lock.
    """

    FORMAT = 2  # index.json layout: {"format", "key", "entries": {sha256 hex: row}}

    def __init__(self, cache_dir: str | os.PathLike, key: dict, dim: int):
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = Path(cache_dir) / digest
        self.key, self.dim = key, dim
        self._rows: dict[str, int] = {}
        self._blocks: list[np.ndarray] = []
        self._n = 0
        self._dirty = False
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        index, array = self.folder / "index.json", self.folder / "embeddings.npy"
        if not (index.exists() or array.exists()):
            return
        try:
            data = json.loads(index.read_text())
            emb = np.load(array, allow_pickle=False)
            why = self._damage(data, emb)
        except Exception as exc:  # an unreadable cache is only a cache (np.load alone raises 5 types)
            why = f"{type(exc).__name__}: {exc}"
        if why is not None:
            log.warning("%s: damaged embedding cache ignored and rebuilt (%s)", self.folder, why.splitlines()[0])
            return
        self._rows, self._blocks, self._n = data["entries"], [emb], len(emb)

    def _damage(self, data, emb: np.ndarray) -> str | None:
        """Why ``index.json`` + ``embeddings.npy`` cannot be trusted, or None."""
        if not isinstance(data, dict) or data.get("format") != self.FORMAT:
            return "index.json is not in this version's format"
        if data.get("key") != self.key:
            return "index.json belongs to another model"
        if emb.dtype != np.float32 or emb.ndim != 2 or emb.shape[1] != self.dim:
            return f"embeddings.npy is {emb.dtype} {emb.shape}, expected float32 (N, {self.dim})"
        if not np.isfinite(emb).all():
            return "embeddings.npy holds non-finite values"
        rows = data.get("entries")
        if not isinstance(rows, dict):
            return "index.json has no entries object"
        for digest, row in rows.items():
            if not (isinstance(row, int) and not isinstance(row, bool) and 0 <= row < len(emb)
                    and len(digest) == 64):
                return f"entry {digest[:16]!r} -> {str(row)[:20]!r} is not a row of embeddings.npy ({len(emb)} rows)"
        return None

    @staticmethod
    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def get(self, digest: str) -> np.ndarray | None:
        with self._lock:
            row = self._rows.get(digest)
            if row is None:
                return None
            if len(self._blocks) > 1:
                self._blocks = [np.concatenate(self._blocks)]
            return self._blocks[0][row].copy()

    def put(self, digests: Sequence[str], embeddings: np.ndarray) -> None:
        with self._lock:
            for k, digest in enumerate(digests):
                self._rows[digest] = self._n + k
            if len(digests):
                self._blocks.append(np.asarray(embeddings, dtype=np.float32))
                self._n += len(digests)
                self._dirty = True

    def save(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            emb = np.concatenate(self._blocks) if self._blocks else np.zeros((0, self.dim), np.float32)
            self._blocks = [emb]
            buf = io.BytesIO()
            np.save(buf, emb)
            try:  # a cache that cannot be written costs speed, never the result
                self.folder.mkdir(parents=True, exist_ok=True)
                write_atomic(self.folder / "embeddings.npy", buf.getvalue())
                write_atomic(self.folder / "index.json",
                             json.dumps({"format": self.FORMAT, "key": self.key, "entries": self._rows}).encode())
            except OSError as exc:
                log.warning("%s: embedding cache not saved (%s)", self.folder, exc.strerror or exc)
                return
            self._dirty = False


def model_fingerprint(backend: Backend) -> dict:
    """What makes embeddings reusable: backend, precision, contract, the preprocessing's version and the
    model file's identity."""
    cfg = backend.config
    key = {"backend": backend.name, "precision": backend.precision, "input_size": backend.input_size,
           "crop_fraction": backend.crop_fraction, "embedding_dim": backend.embedding_dim,
           "preprocess": PREPROCESS_VERSION, "model": None}
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


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, show: bool):
    """A tqdm bar, or a silent stand-in: work that is one backend call has nothing to show, and importing tqdm
    (0.04 s, it reads package metadata) is 5% of a two-image verify call."""
    if not show:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True)


class Embedder:
    """Batched, prefetching image-file embedder over one backend."""

    def __init__(self, backend: Backend, workers: int | None = None, strict: bool = False,
                 cache_dir: str | os.PathLike | None = None, batch_size: int | None = None,
                 progress: bool = True, prefetch: int = 2, preprocessor: Preprocessor | None = None):
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
        if preprocessor is not None and preprocessor.size != backend.input_size:
            raise ValueError(f"preprocessor makes {preprocessor.size} px inputs, the backend takes {backend.input_size}")
        # Blank (one-colour) inputs are refused: they would score as the same "person" as each other.
        self.preprocessor = preprocessor or Preprocessor(backend.config, size=backend.input_size, refuse_non_faces=True)
        self._info: dict[Path, tuple[dict, list[str]]] = {}
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="decode")
        size = backend.input_size
        self._buffers = [np.empty((self.batch_size, size, size, 3), np.uint8) for _ in range(self.prefetch + 1)]

    def _load_into(self, buf: np.ndarray, row: int, path: Path) -> tuple[str | None, np.ndarray | None, str | None]:
        """Read one file; take its embedding from the cache, or decode + detect + align it into ``buf[row]``.

        Returns (content digest or None without a cache, cached embedding or None, failure reason or None).
        """
        digest = None
        try:
            data = read_file(path)
            if self.cache is not None:
                digest = self.cache.digest(data)
                hit = self.cache.get(digest)
                if hit is not None:
                    return digest, hit, None
            prepared = self.preprocessor.load(path, data)
            buf[row] = prepared.image
            if prepared.face is not None:
                self._info[path] = (prepared.info(), prepared.warnings)
            return digest, None, None
        except ImageError as exc:
            text = str(exc)
            prefix = f"{path}: "
            return digest, None, text[len(prefix):] if text.startswith(prefix) else text
        except Exception as exc:  # anything else about one file must not kill a long run
            return digest, None, f"{type(exc).__name__}: {exc}"

    def _load_rows(self, buf: np.ndarray, start: int, paths: list[Path]) -> list[tuple]:
        return [self._load_into(buf, start + i, path) for i, path in enumerate(paths)]

    def _submit(self, k: int, chunk: list[Path]) -> list[Future]:
        """Decode batch ``k`` as one contiguous slice per worker: a future per image cost more
        in thread hand-offs (~70 us each on a 2-core VM) than decoding a 112 px crop."""
        buf = self._buffers[k % len(self._buffers)]
        step = -(-len(chunk) // self.workers)
        return [self._pool.submit(self._load_rows, buf, i, chunk[i:i + step]) for i in range(0, len(chunk), step)]

    def embed_paths(self, paths: Sequence[str | os.PathLike], desc: str = "embedding") -> EmbedResult:
        """Embed image files; the result's rows follow ``paths`` (repeated paths are embedded once)."""
        start = time.perf_counter()
        paths = [Path(p) for p in paths]
        unique = list(dict.fromkeys(paths))
        self._info = {}  # this call's detections only
        dim = self.backend.embedding_dim
        found: dict[Path, np.ndarray] = {}
        chunks = [unique[i:i + self.batch_size] for i in range(0, len(unique), self.batch_size)]
        failures: list[Failure] = []
        n_cached = n_embedded = 0
        bar = _progress(len(unique), desc, self.progress and len(chunks) > 1)
        pending: dict[int, list[Future]] = {}
        try:
            for k in range(min(len(chunks), self.prefetch + 1)):
                pending[k] = self._submit(k, chunks[k])
            for k, chunk in enumerate(chunks):
                outcomes = [o for f in pending.pop(k) for o in f.result()]
                buf = self._buffers[k % len(self._buffers)]
                bad = [Failure(p, why) for p, (_, _, why) in zip(chunk, outcomes) if why is not None]
                if bad and self.strict:
                    raise ImageError(str(bad[0]))
                failures += bad
                for p, (_, hit, _) in zip(chunk, outcomes):
                    if hit is not None:
                        found[p] = hit
                        n_cached += 1
                todo = [r for r, (_, hit, why) in enumerate(outcomes) if hit is None and why is None]
                if todo:
                    batch = buf[:len(chunk)] if len(todo) == len(chunk) else buf[np.array(todo)]
                    emb = self.backend.embed(batch)
                    found.update(zip((chunk[r] for r in todo), emb))
                    n_embedded += len(todo)
                    if self.cache is not None:
                        self.cache.put([outcomes[r][0] for r in todo], emb)
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
        return EmbedResult(out, ok, failures, time.perf_counter() - start, n_embedded, n_cached, faces, warnings)

    def close(self) -> None:
        """Stop the decode threads and close the backend."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.preprocessor.close()
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
