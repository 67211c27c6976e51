"""Canaries: a few fixed inputs whose FP32 embeddings ship in ``model.json``.

A precision that is accurate on one CPU can be wrong on another (INT8 Q/DQ
on an AVX2-only CPU without VNNI drifted by up to 0.66 in similarity on
LFW pairs), and a model file can be changed. Opening a backend embeds these
images once (milliseconds) and compares them with the FP32 reference that
``convert`` stored; the runtime then refuses, or for an automatic choice
falls back from, a precision that disagrees.

The images are drawn, not photographs (nothing from a data set is
committed): face-like layouts (skin ellipse, hair, eyes, brows, nose, mouth
on a shaded background) in varied colours and geometry, so the network's
face features respond to them. They are drawn with nothing but a SplitMix64
stream and float64 arithmetic on soft-edged ellipses (no OpenCV drawing,
whose anti-aliasing differs between versions), so the C++ runner
(``cpp/src/canary.cpp``) draws the same pixels and checks the same record.
"""
from __future__ import annotations

import numpy as np

from engine.cpu import machine_identity

CANARY_COUNT = 8
CANARY_SEED = 0
GENERATOR = 2  # the drawing below; a record from another generator cannot be checked
MIN_COSINE = 0.98  # worst-image cosine to FP32; also the conversion gate's default bound
_MASK64 = (1 << 64) - 1


class _SplitMix64:
    """The SplitMix64 generator (Steele, Lea, Flood 2014): tiny, and the same in C++."""

    def __init__(self, seed: int):
        self.state = seed & _MASK64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * ((self.next() >> 11) * 2.0 ** -53)


def _paint(img: np.ndarray, xs: np.ndarray, ys: np.ndarray, centre, radii, colour, upper_only: bool = False) -> None:
    """Blend ``colour`` into ``img`` (float64 H x W x 3) inside a soft-edged ellipse (a one-pixel ramp)."""
    (cx, cy), (rx, ry) = centre, radii
    d = np.sqrt(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2)
    m = np.clip((1.0 - d) * min(rx, ry) + 0.5, 0.0, 1.0)
    if upper_only:  # hair: the half above the centre line
        m = m * np.clip(cy - ys + 0.5, 0.0, 1.0)
    for c in range(3):
        img[:, :, c] = img[:, :, c] * (1.0 - m) + colour[c] * m


def draw_face(background: np.ndarray, skin, hair, centre, axes, eye_y: float, eye_dx: float, mouth_y: float,
              mouth_w: float) -> np.ndarray:
    """Paint a face-like layout (hair, skin, eyes, brows, nose, mouth) onto ``background`` (float64 H x W x 3,
    changed in place and returned; sizes in pixels, ``s`` = side / 112 scales the fixed parts)."""
    size = background.shape[0]
    s = size / 112.0
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    (cx, cy), (ax, ay) = centre, axes
    img = background
    _paint(img, xs, ys, (cx, cy - 8 * s), (ax + 4 * s, ay), hair, upper_only=True)
    _paint(img, xs, ys, (cx, cy), (ax, ay), skin)
    for side in (-1.0, 1.0):
        ex = cx + side * eye_dx
        _paint(img, xs, ys, (ex, eye_y), (7 * s, 4 * s), (240.0, 240.0, 240.0))
        _paint(img, xs, ys, (ex, eye_y), (3 * s, 3 * s), (40.0, 30.0, 20.0))
        _paint(img, xs, ys, (ex, eye_y - 8.5 * s), (8 * s, 1.2 * s), hair)
    nose_top, nose_end = eye_y + 4 * s, cy + 10 * s
    _paint(img, xs, ys, (cx - 1.5 * s, (nose_top + nose_end) / 2), (1.6 * s, (nose_end - nose_top) / 2),
           [0.8 * v for v in skin])
    _paint(img, xs, ys, (cx, mouth_y), (mouth_w, 2 * s), (150.0, 60.0, 60.0))
    return img


def canary_images(size: int, count: int = CANARY_COUNT, seed: int = CANARY_SEED) -> np.ndarray:
    """``count`` uint8 RGB ``size`` x ``size`` face-like images, the same for a seed on every machine."""
    rng = _SplitMix64(seed)
    out = np.empty((count, size, size, 3), np.uint8)
    s = size / 112.0
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    for i in range(count):  # the order of the draws is part of the format (generator 2)
        bg = [rng.uniform(30, 220) for _ in range(3)]
        gx, gy = rng.uniform(-40, 40), rng.uniform(-40, 40)
        img = np.empty((size, size, 3), np.float64)
        for c in range(3):
            img[:, :, c] = bg[c] + gx * (xs / size - 0.5) + gy * (ys / size - 0.5)
        skin = [rng.uniform(120, 235), rng.uniform(80, 190), rng.uniform(60, 170)]
        hair = [rng.uniform(0, 120) for _ in range(3)]
        cx, cy = size / 2 + rng.uniform(-4, 4) * s, size / 2 + rng.uniform(2, 8) * s
        ax, ay = rng.uniform(30, 38) * s, rng.uniform(40, 48) * s
        eye_y, eye_dx = cy - rng.uniform(8, 14) * s, rng.uniform(15, 20) * s
        mouth_y = cy + rng.uniform(20, 26) * s
        mouth_w = rng.uniform(9, 13) * s
        draw_face(img, skin, hair, (cx, cy), (ax, ay), eye_y, eye_dx, mouth_y, mouth_w)
        out[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


def canary_record(embeddings: np.ndarray, count: int = CANARY_COUNT, seed: int = CANARY_SEED) -> dict:
    """The ``model.json`` entry: how to redraw the images, and their FP32 embeddings (6 decimals)."""
    emb = np.asarray(embeddings, np.float64)
    return {"generator": GENERATOR, "seed": seed, "count": count, "fp32": np.round(emb, 6).tolist()}


def record_problem(record) -> str | None:
    """Why a ``model.json`` canary record cannot be checked (None when it can); the C++ runner's
    ``parse_extra`` says the same."""
    import json

    malformed = "its canary record is malformed (generator, seed, count and count x dim FP32 embeddings)"
    if not isinstance(record, dict):
        return malformed
    generator = record.get("generator", 1)
    if generator != GENERATOR or isinstance(generator, bool):
        return (f"its canary record was drawn by another generator ({json.dumps(generator)}, this runtime "
                f"draws {GENERATOR}); make the folder again with `python -m convert`")
    seed, count = record.get("seed"), record.get("count")
    try:
        ref = np.asarray(record["fp32"], np.float64)
        ok = (isinstance(seed, int) and isinstance(count, int) and not isinstance(seed, bool)
              and 0 <= seed < 2**63 and ref.ndim == 2 and ref.size > 0 and ref.shape[0] == count)
    except (KeyError, TypeError, ValueError, OverflowError):
        ok = False
    if not ok or not np.isfinite(ref).all():
        return malformed
    return None


def canary_cosine(backend, record: dict, size: int) -> float:
    """The worst cosine between ``backend``'s embeddings of the canaries and the stored FP32 ones."""
    ref = np.asarray(record["fp32"], np.float64)
    images = canary_images(size, int(record["count"]), int(record["seed"]))
    got = np.asarray(backend.embed(images), np.float64)
    if got.shape != ref.shape or not np.isfinite(got).all():
        return float("nan")
    cos = (got * ref).sum(1) / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1), 1e-12)
    return float(cos.min())


def checked_cosine(backend, record: dict, size: int) -> float:
    """:func:`canary_cosine`, remembered across processes for this model file on this machine.

    The answer is fixed for a given model file (its SHA-256), canary record, backend,
    precision (asked and executed), runtime version, device and CPU (model
    and ISA flags): embedding the 8 canaries was ~0.1 s of a 0.55 s warm
    two-image call. Any change in those runs them again.
    """
    import hashlib
    import json
    import sys

    if not backend.model_digest:
        return canary_cosine(backend, record, size)
    # The runtime the backend imported (whichever wheel provides it: onnxruntime-gpu, tensorrt-cu12, ...).
    runtime = str(getattr(sys.modules.get(backend.name), "__version__", "?"))
    extra = [backend.name, backend.precision, backend.executed_precision, str(backend.device), runtime,
             machine_identity(), size, hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()]
    from engine.cachedir import remembered

    value = remembered("canaries", backend.model_digest, extra,
                       lambda: {"cosine": canary_cosine(backend, record, size)}, ("cosine",))
    cos = value["cosine"]
    return float(cos) if isinstance(cos, (int, float)) and not isinstance(cos, bool) else float("nan")
