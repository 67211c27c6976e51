"""Where the runtime keeps what makes a second call fast (compiled OpenVINO models,
ONNX Runtime's optimised graphs, contract checks, canary results).

``$FAKEAWARE_CACHE_DIR`` (default ``$XDG_CACHE_HOME`` or ``~/.cache``, then
``fakeaware-faceverify``); ``FAKEAWARE_CACHE_DIR=off`` turns caching off. A
folder that cannot be made or written means no cache, never a failure.
"""
from __future__ import annotations

import os
from pathlib import Path

from engine.files import write_atomic


def cache_dir(name: str) -> Path | None:
    """The ``name`` sub-folder of the cache (created), or None when caching is off or impossible."""
    root = os.environ.get("FAKEAWARE_CACHE_DIR", "")
    if root.lower() in ("off", "0", "none"):
        return None
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fakeaware-faceverify"
    folder = base / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without the cache rather than fail
    return folder if os.access(folder, os.W_OK) else None


def remembered(name: str, digest: str, extra, compute, keys: tuple[str, ...] = ()) -> dict:
    """``compute()`` (a JSON-able dict about a file), remembered across processes.

    Keyed by the file's content digest (``engine.integrity.file_digest``)
    plus ``extra``, never by its path or mtime, so a changed file is looked
    at again however it was replaced; a damaged entry (or one without every
    key in ``keys``) is recomputed. For answers that take a look through the
    file (its graph, its canaries) but are fixed for its bytes.
    """
    import hashlib
    import json

    key = hashlib.sha256(json.dumps([digest, extra], default=str).encode()).hexdigest()
    folder = cache_dir(name)
    entry = folder / f"{key}.json" if folder else None
    if entry is not None and entry.is_file():
        try:
            value = json.loads(entry.read_text())
            if isinstance(value, dict) and all(k in value for k in keys):
                return value
        except (OSError, ValueError):
            pass
    value = compute()
    if entry is not None:
        try:
            write_atomic(entry, json.dumps(value).encode())
        except OSError:
            pass
    return value
