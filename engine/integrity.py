"""Model files are checked against the SHA-256 digests recorded when they were made.

``python -m convert`` writes ``extra.onnx_sha256`` (precision -> digest) and
``extra.files`` (precision -> file name) into ``model.json``; a TensorRT
plan's sidecar holds ``plan_sha256``; the shipped detectors' digests are
pinned in :data:`SHIPPED_DETECTORS`. The runtime hashes each file once per
process before using it, refuses a mismatch in one line, and keys every cache
(compiled OpenVINO blobs, ONNX Runtime's optimised graphs, contract checks,
canary results) on that digest, never on path, size or mtime: a file replaced
by another of the same size and mtime is looked at afresh.

Cost, measured on the 2-core AMD EPYC (Zen 4, SHA extensions): 17 ms for the
11.3 MB bundled model and 4 ms for the 2.2 MB detector on a first read; 24 ms
for both from the page cache while a training job held both cores, about 3%
of a warm two-image ``python -m engine.verify`` call (0.8 s).

What this is not: a signature. Whoever can rewrite ``model.json`` can record
new digests; the canaries (``engine/canary.py``) still compare the network's
answers with the FP32 ones stored beside them, and a file swapped between
the hash and the load needs write access to the model folder during the call.
The C++ runner (``cpp/src/config.cpp``) applies the same rules and words.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from engine.contract import ContractError, ModelConfig

# Digests of the detectors shipped in engine/models/detector (a detector is named, never a path).
SHIPPED_DETECTORS = {
    "blazeface_full_range": "5b8540bb1e7e6bd4737de89ff0e5ed34b63b2db524fe59c021f4a878bccc272a",
}

_memo: dict[tuple, str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """:func:`sha256_file`, once per process for an unchanged file (a server opens a model once,
    a CLI call once; the memo key includes inode, size and ctime, which a rewrite changes)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _memo:
        _memo[key] = sha256_file(path)
    return _memo[key]


def recorded_digests(config: ModelConfig | None) -> dict[str, str] | None:
    """File name -> digest from ``model.json`` (None when it records none: a hand-made folder)."""
    extra = (config.extra or {}) if config is not None else {}
    digests, files = extra.get("onnx_sha256"), extra.get("files")
    if not isinstance(digests, dict):
        return None
    files = files if isinstance(files, dict) else {}
    return {str(files.get(precision, f"model.{precision}.onnx")): str(value) for precision, value in digests.items()}


def mismatch(path: Path, got: str, want: str, recorder: str) -> ContractError:
    return ContractError(f"{path}: its SHA-256 {got[:12]}... is not the {want[:12]}... that {recorder} records: "
                         f"the file changed after it was made; restore it or make the folder again")


def verified_digest(path: str | os.PathLike, config: ModelConfig | None) -> str:
    """The digest of the model file ``path``, refused unless it is the one ``model.json`` records.

    With a digest table in ``model.json`` every ONNX file must be in it (a file
    dropped into a converted folder is refused); without one (a hand-made
    folder, a bare ``.onnx``) the digest is only returned, for the caches.
    """
    path = Path(path)
    got = file_digest(path)
    table = recorded_digests(config)
    if table is None:
        return got
    want = table.get(path.name)
    if want is None:
        raise ContractError(f"{path}: model.json records no SHA-256 for this file (convert did not write it); "
                            f"remove it or make the folder again")
    if got != want.lower():
        raise mismatch(path, got, want, "model.json")
    return got


def verified_detector(path: str | os.PathLike, name: str) -> str:
    """The digest of detector file ``path``, refused unless it is the shipped ``name``'s."""
    got = file_digest(path)
    want = SHIPPED_DETECTORS.get(name)
    if want is None:
        raise ContractError(f"{path}: detector {name!r} has no recorded SHA-256 (shipped: "
                            f"{', '.join(sorted(SHIPPED_DETECTORS))})")
    if got != want:
        raise mismatch(Path(path), got, want, "this release")
    return got
