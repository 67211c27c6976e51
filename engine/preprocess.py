"""Image preprocessing, defined once.

Every consumer (training loader, calibration, every inference backend) calls
:func:`load_image` or :func:`preprocess`, so the pixels a model was trained on
are exactly the pixels it sees in deployment. The result is always uint8 RGB
HWC of the model's square input size; normalisation lives inside the model
(and inside the exported ONNX graph), never here.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

DEFAULT_SIZE = 112
MIN_SOURCE_SIDE = 8  # smaller than this carries no face: refuse rather than upsample noise
MAX_PIXELS = 50_000_000  # checked from the header, before any pixel is decoded


class ImageError(ValueError):
    """An input that is not a usable image; the message names the source."""


def _header_size(data: bytes, source: str) -> tuple[int, int]:
    """Width and height from the file header only (Pillow opens lazily)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{source}: image too large ({exc})") from None
    except Exception:
        # Formats Pillow does not know may still be decodable by OpenCV.
        return (0, 0)


def decode(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes into 8-bit RGB HWC.

    Grayscale, RGBA/BGRA and 16-bit inputs are converted; anything OpenCV
    cannot decode (text, zero bytes, truncated files) raises :class:`ImageError`.
    """
    if len(data) == 0:
        raise ImageError(f"{source}: empty file (0 bytes)")
    w, h = _header_size(data, source)
    if w * h > MAX_PIXELS:
        raise ImageError(f"{source}: image header says {w}x{h}, over the {MAX_PIXELS:,} pixel limit")
    if _truncated_jpeg(data):
        raise ImageError(f"{source}: truncated JPEG (no end-of-image marker)")
    buf = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageError(f"{source}: not a decodable image")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    channels = img.shape[2]
    if channels == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    raise ImageError(f"{source}: unsupported channel count {channels}")


def _truncated_jpeg(data: bytes) -> bool:
    # libjpeg fills a truncated scan with grey and only warns; a missing EOI
    # marker (FFD9) is the cheap, reliable tell. Usually it ends the file; some
    # cameras append trailers, so otherwise look for it after the last scan
    # header (FFDA): entropy-coded data never contains FFD9 (0xFF is stuffed).
    if data[:2] != b"\xff\xd8":
        return False
    if b"\xff\xd9" in data[-64:]:
        return False
    sos = data.rfind(b"\xff\xda")
    return sos < 0 or data.find(b"\xff\xd9", sos) < 0


def preprocess(rgb: np.ndarray, size: int = DEFAULT_SIZE, source: str = "<array>",
               crop_fraction: float = 1.0) -> np.ndarray:
    """Centre-crop a square and resize it to ``size``; uint8 RGB HWC in, out.

    ``crop_fraction`` is the share of the short side the square keeps: 1.0
    for tight face crops, about 0.5 for loosely framed, roughly aligned
    photos such as LFW deep-funneled 250x250, where the face fills the
    central half. It is part of the model's contract (``model.json``).
    """
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageError(f"{source}: expected uint8 HxWx3 RGB, got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SOURCE_SIDE:
        raise ImageError(f"{source}: image is {w}x{h}, smaller than {MIN_SOURCE_SIDE}px on a side")
    side = max(1, round(min(h, w) * crop_fraction))
    top, left = (h - side) // 2, (w - side) // 2
    crop = rgb[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(crop)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def load_image(path: str | os.PathLike, size: int = DEFAULT_SIZE, crop_fraction: float = 1.0) -> np.ndarray:
    """Read, decode and preprocess one file: uint8 RGB (size, size, 3)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror})") from None
    return preprocess(decode(data, str(path)), size, str(path), crop_fraction)
