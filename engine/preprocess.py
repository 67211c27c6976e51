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
import threading
from dataclasses import dataclass, field
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


def _check_rgb(rgb: np.ndarray, source: str) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageError(f"{source}: expected uint8 HxWx3 RGB, got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SOURCE_SIDE:
        raise ImageError(f"{source}: image is {w}x{h}, smaller than {MIN_SOURCE_SIDE}px on a side")


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
    _check_rgb(rgb, source)
    h, w = rgb.shape[:2]
    side = max(1, round(min(h, w) * crop_fraction))
    top, left = (h - side) // 2, (w - side) // 2
    crop = rgb[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(crop)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def read_file(path: str | os.PathLike) -> bytes:
    """A file's bytes; a missing file or a folder is an :class:`ImageError` naming it."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror})") from None


def load_image(path: str | os.PathLike, size: int = DEFAULT_SIZE, crop_fraction: float = 1.0) -> np.ndarray:
    """Read, decode and centre-crop one file: uint8 RGB (size, size, 3) (the ``align: none`` contract)."""
    return preprocess(decode(read_file(path), str(path)), size, str(path), crop_fraction)


class NoFaceError(ImageError):
    """The detector found no face in an image."""


@dataclass
class Prepared:
    """A model input and what the detector saw (``face`` None when alignment is off)."""

    image: np.ndarray
    face: object = None  # engine.detect.Face
    faces: int = 0
    warnings: list[str] = field(default_factory=list)

    def info(self) -> dict:
        return {"faces": self.faces, **({"face": self.face.to_dict()} if self.face is not None else {})}


def main_face(faces: list, shape: tuple) -> object:
    """The face a photo is about: among faces at least half the largest's size, the most central.

    Plain "largest" picks a bystander's face in news photos (LFW) as often as
    the subject's; a tiny central face in a crowd still loses to a big one.
    """
    big = max(f.size for f in faces)
    centre = np.array([shape[1] / 2, shape[0] / 2])
    near = [f for f in faces if f.size >= 0.5 * big]
    return min(near, key=lambda f: float(np.linalg.norm(
        np.array([(f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2]) - centre)))


class Preprocessor:
    """The one way a photo becomes a model input, as the model's ``model.json`` says.

    ``align: face``: detect, keep the main face (:func:`main_face`; a
    warning names the count when there are several), warp it onto the
    template; no face is a :class:`NoFaceError`, a face smaller than
    ``min_face`` a warning. ``align: none``: centre crop. Safe to share
    between decode threads: each thread opens its own single-threaded
    detector on first use (a backend serves one thread at a time), so the
    decode threads detect in parallel.
    """

    def __init__(self, config=None, size: int | None = None, detector=None):
        from engine.contract import ModelConfig

        self.config = config if config is not None else ModelConfig(input_size=size or DEFAULT_SIZE)
        self.size = int(size or self.config.input_size)
        self._given = detector
        self._local = threading.local()
        self._opened: list = []
        self._lock = threading.Lock()

    @property
    def detector(self):
        if self._given is not None:
            return self._given
        det = getattr(self._local, "detector", None)
        if det is None:
            from engine.detect import open_detector

            det = self._local.detector = open_detector(self.config.detector, threads=1)
            with self._lock:
                self._opened.append(det)
        return det

    def prepare(self, rgb: np.ndarray, source: str = "<array>") -> Prepared:
        cfg = self.config
        if cfg.align == "none":
            return Prepared(preprocess(rgb, self.size, source, cfg.crop_fraction))
        from engine.align import align_face

        _check_rgb(rgb, source)
        faces = self.detector.detect(rgb)
        if not faces:
            raise NoFaceError(f"{source}: no face found")
        face = main_face(faces, rgb.shape)
        if not face.upright:
            raise NoFaceError(f"{source}: no upright face found (the detected face's eyes and mouth do not line "
                              f"up: rotated by more than ~45 degrees, or not a face)")
        warnings = []
        if len(faces) > 1:
            warnings.append(f"{source}: {len(faces)} faces found, using the most central large one")
        if face.size < cfg.min_face:
            warnings.append(f"{source}: face is small ({face.size:.0f} px eye-to-mouth, under {cfg.min_face:g}): "
                            f"the decision is unreliable")
        crop = align_face(rgb, face.keypoints, self.size, cfg.template, cfg.margin)
        return Prepared(crop, face, len(faces), warnings)

    def load(self, path: str | os.PathLike) -> Prepared:
        """Read, decode and prepare one file."""
        return self.prepare(decode(read_file(path), str(path)), str(path))

    def close(self) -> None:
        """Close the detectors this preprocessor opened (a given one belongs to the caller)."""
        with self._lock:
            for det in self._opened:
                det.close()
            self._opened.clear()
        self._local = threading.local()
