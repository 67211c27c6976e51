"""Canaries: a few fixed inputs whose FP32 embeddings ship in ``model.json``.

A precision that is accurate on one CPU can be wrong on another (INT8 Q/DQ
on an AVX2-only CPU without VNNI drifted by up to 0.66 in similarity on
LFW pairs). Opening a backend embeds these images once (milliseconds) and
compares them with the FP32 reference that ``convert`` stored; the runtime
then refuses, or for an automatic choice falls back from, a precision that
disagrees. The images are drawn, not photographs (nothing from a data set
is committed): face-like layouts (skin ellipse, eyes, brows, nose, mouth,
hair, background) in varied colours and geometry, so the network's face
features respond to them.
"""
from __future__ import annotations

import cv2
import numpy as np

from engine.cpu import machine_identity

CANARY_COUNT = 8
CANARY_SEED = 0
MIN_COSINE = 0.98  # worst-image cosine to FP32; also the conversion gate's default bound


def canary_images(size: int, count: int = CANARY_COUNT, seed: int = CANARY_SEED) -> np.ndarray:
    """``count`` uint8 RGB ``size`` x ``size`` face-like images, the same for a seed on every machine."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size, 3), np.uint8)
    s = size / 112.0
    for i in range(count):
        bg = rng.integers(30, 220, 3)
        img = np.empty((size, size, 3), np.uint8)
        img[:] = bg
        # low-frequency background texture
        tex = cv2.resize(rng.integers(0, 60, (6, 6, 3)).astype(np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
        img = cv2.add(img, tex)
        skin = tuple(int(v) for v in rng.integers([120, 80, 60], [235, 190, 170]))
        cx, cy = size / 2 + rng.uniform(-4, 4) * s, size / 2 + rng.uniform(2, 8) * s
        ax, ay = rng.uniform(30, 38) * s, rng.uniform(40, 48) * s
        hair = tuple(int(v) for v in rng.integers(0, 120, 3))
        cv2.ellipse(img, (round(cx), round(cy - 8 * s)), (round(ax + 4 * s), round(ay)), 0, 180, 360, hair, -1,
                    cv2.LINE_AA)
        cv2.ellipse(img, (round(cx), round(cy)), (round(ax), round(ay)), 0, 0, 360, skin, -1, cv2.LINE_AA)
        eye_y, eye_dx = cy - rng.uniform(8, 14) * s, rng.uniform(15, 20) * s
        for side in (-1, 1):
            ex = cx + side * eye_dx
            cv2.ellipse(img, (round(ex), round(eye_y)), (round(7 * s), round(4 * s)), 0, 0, 360, (240, 240, 240), -1,
                        cv2.LINE_AA)
            cv2.circle(img, (round(ex), round(eye_y)), max(1, round(3 * s)), (40, 30, 20), -1, cv2.LINE_AA)
            cv2.line(img, (round(ex - 8 * s), round(eye_y - 8 * s)), (round(ex + 8 * s), round(eye_y - 9 * s)),
                     hair, max(1, round(2 * s)), cv2.LINE_AA)
        shade = tuple(int(v * 0.8) for v in skin)
        cv2.line(img, (round(cx), round(eye_y + 4 * s)), (round(cx - 3 * s), round(cy + 10 * s)), shade,
                 max(1, round(3 * s)), cv2.LINE_AA)
        mouth_y = cy + rng.uniform(20, 26) * s
        cv2.ellipse(img, (round(cx), round(mouth_y)), (round(rng.uniform(9, 13) * s), round(4 * s)), 0, 0, 180,
                    (150, 60, 60), max(1, round(3 * s)), cv2.LINE_AA)
        out[i] = cv2.GaussianBlur(img, (0, 0), 0.6 * s)
    return out


def canary_record(embeddings: np.ndarray, count: int = CANARY_COUNT, seed: int = CANARY_SEED) -> dict:
    """The ``model.json`` entry: how to redraw the images, and their FP32 embeddings (6 decimals)."""
    emb = np.asarray(embeddings, np.float64)
    return {"seed": seed, "count": count, "fp32": np.round(emb, 6).tolist()}


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

    The answer is fixed for a given model file, canary record, backend,
    precision (asked and executed), runtime version, device and CPU (model
    and ISA flags): embedding the 8 canaries was ~0.1 s of a 0.55 s warm
    two-image call. Any change in those runs them again.
    """
    import hashlib
    import json
    import sys

    path = backend.model_path
    if path is None or not path.is_file():
        return canary_cosine(backend, record, size)
    # The runtime the backend imported (whichever wheel provides it: onnxruntime-gpu, tensorrt-cu12, ...).
    runtime = str(getattr(sys.modules.get(backend.name), "__version__", "?"))
    extra = [backend.name, backend.precision, backend.executed_precision, str(backend.device), runtime,
             machine_identity(), size, hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()]
    from engine.cachedir import remembered

    value = remembered("canaries", path, extra, lambda: {"cosine": canary_cosine(backend, record, size)}, ("cosine",))
    cos = value["cosine"]
    return float(cos) if isinstance(cos, (int, float)) and not isinstance(cos, bool) else float("nan")
