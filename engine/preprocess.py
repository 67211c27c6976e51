"""Image preprocessing, defined once.

Every consumer (training loader, calibration, every inference backend) calls
:func:`load_image` or :func:`preprocess`, so the pixels a model was trained on
are exactly the pixels it sees in deployment. The result is always uint8 RGB
HWC of the model's square input size; normalisation lives inside the model
(and inside the exported ONNX graph), never here.
"""
from __future__ import annotations

import functools
import io
import os
import re
import struct
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from engine.files import FileRefused, check_regular, read_regular

DEFAULT_SIZE = 112
MIN_SOURCE_SIDE = 8  # smaller than this carries no face: refuse rather than upsample noise
MAX_PIXELS = 50_000_000  # checked from the header, before any pixel is decoded
# ... and what the decoder will allocate for them: a 7000x7000 float64 TIFF is 49 Mpx but 1.2 GB (and
# 2.6 GB with the conversions), from a 1.3 MB file. 200 MB = 50 Mpx of 8-bit RGBA.
MAX_DECODED_BYTES = 200_000_000
# The second look at a detected face (Preprocessor._second_look) is taken in an aligned crop of at least this
# many pixels: in a 32 px model input the detector sees too little to find even a real face again.
SECOND_LOOK_SIZE = 112
# Larger than any photo a verifier needs (a 50 Mpx JPEG is ~25 MB); checked before reading,
# so a huge file is refused instead of filling memory (and OpenCV asserts past 2 GiB).
MAX_FILE_BYTES = 256 * 1024 * 1024
# The text headers of HDR and PAM files: no real one is longer.
MAX_TEXT_HEADER = 64 * 1024
# A model input whose every channel spans at most this many levels is one colour
# (JPEG rounding included): there is nothing to verify in it.
BLANK_LEVELS = 2
# Part of the embedding cache's key: raise it whenever the crop a file gives can change,
# so no cached embedding of an older crop is reused. 2: EXIF orientation applied,
# small faces found in tiles and detected again at a better scale.
PREPROCESS_VERSION = 2


class ImageError(ValueError):
    """An input that is not a usable image; the message names the source."""


def image_format(data: bytes) -> str | None:
    """The format OpenCV would pick for ``data`` (by the same signatures it checks), or None.

    OpenCV decodes only what one of its decoders recognises; knowing which one
    lets :func:`_header_size` read that format's size before any pixel exists.
    """
    head = data[:16]
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if head[:2] == b"BM":
        return "BMP"
    if head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:12] == b"\0\0\0\x0cjP  \r\n\x87\n" or head[:4] == b"\xff\x4f\xff\x51":
        return "JPEG2000"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"\x59\xa6\x6a\x95":
        return "SUN"
    if head[4:8] == b"ftyp" and _avif_brand(data):
        return "AVIF"
    if head.startswith((b"#?RGBE", b"#?RADIANCE")):
        return "HDR"
    if len(head) >= 3 and head[:1] == b"P" and head[2:3].isspace():
        kind = head[1:2]
        if kind in (b"1", b"2", b"3", b"4", b"5", b"6"):
            return "PPM"
        if kind == b"7":
            return "PAM"
        if kind in (b"F", b"f"):
            return "PFM"
    return None


def _avif_brand(data: bytes, names: tuple[bytes, ...] = (b"avif", b"avis")) -> bool:
    """An ISO-BMFF ``ftyp`` box naming one of ``names`` as its major or a compatible brand
    (by default avif/avis: what libavif accepts)."""
    size = int.from_bytes(data[:4], "big")
    brands = data[8:min(max(size, 16), 4096)]
    return any(brands[i:i + 4] in names for i in range(0, len(brands) - 3, 4))


# HEIC/HEIF brands (an iPhone's default photo format), which OpenCV does not decode.
HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")


# Pillow only reads header sizes here. Its bomb warning is moot (MAX_PIXELS decides) and its EXIF
# parser's warnings ("Corrupt EXIF data", "Tag data larger than file") stray stderr lines; filtered
# once, narrowly, for the process: warnings.catch_warnings() is not thread-safe, and decode threads
# read headers at once.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")
# Formats whose header Pillow reads (lazily: no pixel is decoded), by Pillow's name.
_PILLOW_FORMATS = {"JPEG", "PNG", "BMP", "WEBP", "JPEG2000", "GIF", "SUN", "AVIF", "PPM"}


def _header_size(data: bytes, fmt: str, source: str) -> tuple[int, int]:
    """Width and height as the header of ``data`` (format ``fmt``) states them.

    Raises :class:`ImageError` when the header cannot be read: a decoder given
    such bytes might allocate anything, so they are refused before decoding.
    """
    if fmt in _PILLOW_FORMATS:
        try:
            with Image.open(io.BytesIO(data), formats=[fmt]) as im:
                return im.size
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{source}: image too large ({exc})") from None
        except Exception:  # Pillow raises many types for a damaged header
            size = None
    else:
        size = {"TIFF": _tiff_size, "HDR": _hdr_size, "PFM": _pfm_size, "PAM": _pam_size}[fmt](data, source)
    if size is None:
        raise ImageError(f"{source}: damaged {fmt} header (cannot read the image size)")
    return size


def _tiff_entries(data: bytes):
    """``(order, big, inline, entries)`` of the first IFD (the page OpenCV decodes): each entry
    ``(tag, type, count, raw value field)``; ``inline`` is the value field's size. Raises
    ``struct.error`` where an offset points past the data."""
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\0", b"\0+")
    if big:
        (ifd,) = struct.unpack_from(order + "Q", data, 8)
        (count,) = struct.unpack_from(order + "Q", data, ifd)
        first, step, entry, inline = ifd + 8, 20, order + "HHQ8s", 8
    else:
        (ifd,) = struct.unpack_from(order + "I", data, 4)
        (count,) = struct.unpack_from(order + "H", data, ifd)
        first, step, entry, inline = ifd + 2, 12, order + "HHI4s", 4
    if first + count * step > len(data):
        raise struct.error("IFD past the end of the data")
    return order, big, inline, [struct.unpack_from(entry, data, first + k * step) for k in range(count)]


def _tiff_size(data: bytes, source: str) -> tuple[int, int] | None:
    """Size from the first IFD; tiles are checked too.

    Duplicate tags count at their largest; a tile is allocated whole by
    OpenCV, so a small image with huge tiles is refused like a huge image.
    """
    try:
        order, _, _, entries = _tiff_entries(data)
        tags: dict[int, int] = {}
        for tag, kind, n, raw in entries:
            if tag in (256, 257, 322, 323):  # ImageWidth, ImageLength, TileWidth, TileLength
                fmt = {3: "H", 4: "I", 16: "Q"}.get(kind)
                if fmt is None or n != 1:
                    return None
                (value,) = struct.unpack_from(order + fmt, raw)
                tags[tag] = max(value, tags.get(tag, 0))
    except (struct.error, OverflowError):  # offsets past the end of the data
        return None
    if 256 not in tags or 257 not in tags:
        return None
    tile_w, tile_h = tags.get(322, 0), tags.get(323, 0)
    if tile_w * tile_h > MAX_PIXELS:
        raise ImageError(f"{source}: TIFF tiles of {tile_w}x{tile_h}, over the {MAX_PIXELS:,} pixel limit")
    return tags[256], tags[257]


def _tiff_bytes_per_pixel(data: bytes) -> int:
    """Bytes per decoded pixel from the first IFD: SamplesPerPixel x the widest BitsPerSample (rounded up to
    bytes); 8 (a wide guess) when the tags cannot be read, so a damaged header is not under-counted."""
    samples, bits = 1, 8
    try:
        order, big, inline, entries = _tiff_entries(data)
        for tag, kind, n, raw in entries:
            if tag == 277 and kind == 3 and n >= 1:  # SamplesPerPixel (SHORT)
                (samples,) = struct.unpack_from(order + "H", raw)
            elif tag == 258 and kind == 3 and 1 <= n <= 64:  # BitsPerSample (SHORT per sample)
                if 2 * n <= inline:
                    values = struct.unpack_from(order + "H" * n, raw)
                else:
                    (offset,) = struct.unpack_from(order + ("Q" if big else "I"), raw)
                    values = struct.unpack_from(order + "H" * n, data, offset)
                bits = max(values)
    except (struct.error, OverflowError):
        return 8
    return max(1, samples) * max(1, (bits + 7) // 8)


def _bytes_per_pixel(data: bytes, fmt: str) -> int:
    """What OpenCV allocates per pixel when it decodes ``data`` (before the conversion to 8-bit RGB)."""
    if fmt == "TIFF":
        return _tiff_bytes_per_pixel(data)
    if fmt in ("HDR", "PFM"):
        return 12  # float32 RGB
    if fmt == "PAM":
        fields = _pam_fields(data) or {}
        depth, maxval = fields.get(b"DEPTH", b"4"), fields.get(b"MAXVAL", b"65535")
        depth = int(depth) if depth.isdigit() and len(depth) <= 2 else 4
        return max(1, depth) * (2 if not maxval.isdigit() or int(maxval) > 255 else 1)
    if fmt == "PNG" and len(data) >= 26:
        channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(data[25], 4)
        return channels * (2 if data[24] == 16 else 1)
    if fmt in ("JPEG2000", "PPM"):
        return 8  # up to 16 bits per sample
    return 4  # 8-bit, up to 4 channels


def _lines(data: bytes, limit: int = 128):
    """Lines as C's ``fgets`` with a ``limit`` buffer returns them (what OpenCV's RGBE reader sees), up to NUL."""
    pos, end = 0, min(len(data), MAX_TEXT_HEADER)
    while pos < end:
        stop = data.find(b"\n", pos, min(pos + limit - 1, end))
        nxt = stop + 1 if stop >= 0 else min(pos + limit - 1, end)
        yield data[pos:nxt].split(b"\0", 1)[0]
        pos = nxt


def _hdr_size(data: bytes, source: str) -> tuple[int, int] | None:
    """Radiance HDR: header lines up to FORMAT=32-bit_rle_rgbe, a blank line, then "-Y <h> +X <w>".

    Read exactly as OpenCV's RGBE reader does (the only layout it accepts).
    """
    lines = _lines(data)
    next(lines, None)  # "#?RADIANCE" / "#?RGBE"
    for line in lines:
        if line in (b"", b"\n"):
            return None
        if line == b"FORMAT=32-bit_rle_rgbe\n":
            break
    else:
        return None
    if next(lines, None) != b"\n":
        return None
    match = re.match(rb"-Y\s*([-+]?\d+)\s*\+X\s*([-+]?\d+)", next(lines, b""))
    if match is None:
        return None
    return int(match.group(2)), int(match.group(1))


def _pfm_size(data: bytes, source: str) -> tuple[int, int] | None:
    """PFM: "PF"/"Pf", width, height, scale, each followed by one whitespace byte.

    Only that strict layout is read (OpenCV's reader writes and expects it), so
    no other tokenisation can see a different size.
    """
    match = re.match(rb"P[Ff]\s(\d{1,12})\s(\d{1,12})\s[-+]?[0-9.eE+-]{1,40}\s", data[:128])
    return (int(match.group(1)), int(match.group(2))) if match else None


def _pam_fields(data: bytes) -> dict[bytes, bytes] | None:
    """PAM (P7) header: "KEY value" lines up to ENDHDR; comments allowed; WIDTH and HEIGHT once each."""
    fields: dict[bytes, bytes] = {}
    for line in data[3:MAX_TEXT_HEADER].split(b"\n"):
        if line.startswith(b"#") or not line:
            continue
        if line == b"ENDHDR":
            return fields
        key, _, value = line.partition(b" ")
        if not key.isalpha() or (key in (b"WIDTH", b"HEIGHT") and key in fields):
            return None
        fields[key] = value.strip()
    return None


def _pam_size(data: bytes, source: str) -> tuple[int, int] | None:
    try:
        fields = _pam_fields(data)
        return (int(fields[b"WIDTH"]), int(fields[b"HEIGHT"])) if fields is not None else None
    except (KeyError, ValueError):
        return None


def decode(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes into 8-bit RGB HWC.

    The size is read from the header first, for every format OpenCV decodes,
    and anything over :data:`MAX_PIXELS` is refused before a pixel exists.
    The EXIF orientation is applied. Grayscale, RGBA/BGRA, 16-bit and float
    (HDR/PFM) inputs are converted;
    anything OpenCV cannot decode (text, zero bytes, truncated files) raises
    :class:`ImageError`.
    """
    if len(data) == 0:
        raise ImageError(f"{source}: empty file (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"{source}: {len(data):,} bytes, over the {MAX_FILE_BYTES:,} byte limit for an image")
    fmt = image_format(data)
    if fmt is None and data[4:8] == b"ftyp" and _avif_brand(data, HEIF_BRANDS):
        raise ImageError(f"{source}: HEIC/HEIF image, which this runtime cannot decode: convert it to JPEG "
                         f"or PNG (e.g. heif-convert; on an iPhone, Camera > Formats > Most Compatible)")
    if fmt is None:
        raise ImageError(f"{source}: not a decodable image")
    w, h = _header_size(data, fmt, source)
    if w * h > MAX_PIXELS:
        raise ImageError(f"{source}: image header says {w}x{h}, over the {MAX_PIXELS:,} pixel limit")
    if w <= 0 or h <= 0:
        raise ImageError(f"{source}: image header says {w}x{h}: no pixels")
    per_pixel = _bytes_per_pixel(data, fmt)
    if w * h * per_pixel > MAX_DECODED_BYTES:
        raise ImageError(f"{source}: image header says {w}x{h} at {per_pixel} bytes per pixel, "
                         f"{w * h * per_pixel / 1e6:,.0f} MB decoded, over the {MAX_DECODED_BYTES / 1e6:,.0f} MB limit")
    if _truncated_jpeg(data):
        raise ImageError(f"{source}: truncated JPEG (no end-of-image marker)")
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        # Not IMREAD_UNCHANGED: it ignores the EXIF orientation that phones
        # store instead of rotating pixels, and a sideways face is not found
        # or scores as a stranger. These flags keep the bit depth, apply the
        # orientation and drop alpha (never used).
        img = cv2.imdecode(buf, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except cv2.error as exc:  # OpenCV asserts on some malformed files instead of returning None
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "error"
        raise ImageError(f"{source}: not a decodable image (OpenCV: {first})") from None
    if img is None or img.size == 0:
        raise ImageError(f"{source}: not a decodable image")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        if not np.isfinite(img).all():  # HDR/PFM floats: NaN would become arbitrary bytes
            raise ImageError(f"{source}: pixels that are not finite numbers (NaN or infinity)")
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    channels = img.shape[2]
    if channels == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    rgb_order = fmt == "PAM" and channels in (3, 4) and _pam_returns_rgb(_pam_depth(data))
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_RGBA2RGB if rgb_order else cv2.COLOR_BGRA2RGB)
    if channels == 3:
        return np.ascontiguousarray(img) if rgb_order else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    raise ImageError(f"{source}: unsupported channel count {channels}")


def _pam_depth(data: bytes) -> int:
    depth = (_pam_fields(data) or {}).get(b"DEPTH", b"")
    return int(depth) if depth.isdigit() and len(depth) <= 2 else 0


@functools.lru_cache(maxsize=None)
def _pam_returns_rgb(depth: int) -> bool:
    """Whether OpenCV hands a ``depth``-channel PAM back in RGB order, unlike every other format (BGR).

    OpenCV 5.1 does for DEPTH 3 (not 4), which swapped red and blue: the
    same photo scored 0.51 against its JPEG. Asked of OpenCV itself with one
    red pixel, so the answer stays right when OpenCV is fixed.
    """
    if depth not in (3, 4):
        return False
    tuple_type = b"RGB" if depth == 3 else b"RGB_ALPHA"
    probe = (b"P7\nWIDTH 1\nHEIGHT 1\nDEPTH %d\nMAXVAL 255\nTUPLTYPE %s\nENDHDR\n" % (depth, tuple_type)
             + bytes([255, 0, 0, 255][:depth]))
    img = cv2.imdecode(np.frombuffer(probe, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    return img is not None and int(img.reshape(-1)[0]) == 255


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


def check_file(path: str | os.PathLike) -> os.stat_result:
    """Stat an image path; :class:`ImageError` says what it is when it is not a readable regular file.

    A directory, FIFO, device or symlink loop is named as such (not "no such
    file"), and a file over :data:`MAX_FILE_BYTES` is refused before it is read.
    """
    try:
        return check_regular(path, MAX_FILE_BYTES, "an image")
    except FileRefused as exc:
        raise ImageError(str(exc)) from None


def read_file(path: str | os.PathLike) -> bytes:
    """A file's bytes; anything but a regular file up to :data:`MAX_FILE_BYTES` is an :class:`ImageError` naming it
    (:func:`engine.files.read_regular`: a FIFO never blocks, at most the limit plus one byte is read)."""
    try:
        return read_regular(path, MAX_FILE_BYTES, "an image")
    except FileRefused as exc:
        raise ImageError(str(exc)) from None


def load_image(path: str | os.PathLike, size: int = DEFAULT_SIZE, crop_fraction: float = 1.0) -> np.ndarray:
    """Read, decode and centre-crop one file: uint8 RGB (size, size, 3) (the ``align: none`` contract)."""
    return preprocess(decode(read_file(path), str(path)), size, str(path), crop_fraction)


def is_blank(rgb: np.ndarray) -> bool:
    """Every channel within :data:`BLANK_LEVELS` of one value: an image of one colour.

    Per channel with OpenCV's min/max: NumPy's ``max(axis=0)`` over (H*W, 3)
    took 0.37 ms for a 112 px crop, more than decoding it.
    """
    channels = cv2.split(rgb) if rgb.ndim == 3 else [rgb]
    for channel in channels:
        lo, hi, _, _ = cv2.minMaxLoc(channel)
        if hi - lo > BLANK_LEVELS:
            return False
    return True


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
    ``min_face`` a warning. ``align: none``: centre crop.

    ``refuse_non_faces`` (the runtime's choice; training keeps its data as
    labelled) refuses what is not a face before it can get a decision: a
    crop of one colour (:class:`ImageError`, "blank image"), a detection
    that does not hold up on a second look (the detector run again on the
    aligned crop finds no face: BlazeFace fires on ~1% of noise and texture
    images, never again on their crops), and with ``align: none`` a crop in
    which the detector finds no face. Measured by ``python -m
    bench.face_gate`` (bench/results/face-gate.json). Safe to share
    between decode threads: each thread opens its own single-threaded
    detector on first use (a backend serves one thread at a time), so the
    decode threads detect in parallel.
    """

    def __init__(self, config=None, size: int | None = None, detector=None, refuse_non_faces: bool = False):
        from engine.contract import ModelConfig

        self.config = config if config is not None else ModelConfig(input_size=size or DEFAULT_SIZE)
        self.size = int(size or self.config.input_size)
        self.refuse_non_faces = refuse_non_faces
        self._given = detector
        self._local = threading.local()
        self._opened: list = []
        self._spare: list = []  # opened by warm(), not yet taken by a thread
        self._lock = threading.Lock()

    @property
    def detector(self):
        if self._given is not None:
            return self._given
        det = getattr(self._local, "detector", None)
        if det is None:
            with self._lock:
                det = self._spare.pop() if self._spare else None
            if det is None:
                from engine.detect import open_detector

                det = open_detector(self.config.detector, threads=1)
                with self._lock:
                    self._opened.append(det)
            self._local.detector = det
        return det

    def warm(self, threads: int) -> None:
        """Open the detectors that ``threads`` decode threads will take, ahead of their first image.

        Run beside a slow start (opening the embedding backend), it takes the
        detector's opening off the first images' path (0.03 s of a two-image
        call on a 2-core CPU). A detector that fails to open here is opened
        again, and its error raised, on first use.
        """
        if (self.config.align != "face" and not self.refuse_non_faces) or self._given is not None:
            return
        from engine.detect import open_detector

        for _ in range(threads):
            try:
                det = open_detector(self.config.detector, threads=1)
            except Exception:
                return
            with self._lock:
                self._opened.append(det)
                self._spare.append(det)

    def prepare(self, rgb: np.ndarray, source: str = "<array>") -> Prepared:
        from engine.align import align_face

        cfg = self.config
        if cfg.align == "none":
            crop = preprocess(rgb, self.size, source, cfg.crop_fraction)
            if self.refuse_non_faces:
                if is_blank(crop):
                    raise ImageError(f"{source}: blank image (one colour throughout): no face to verify")
                view = crop if self.size >= SECOND_LOOK_SIZE else preprocess(rgb, SECOND_LOOK_SIZE, source,
                                                                                     cfg.crop_fraction)
                faces = self.detector.detect(view)
                if not faces:
                    raise NoFaceError(f"{source}: no face found in the crop (--align none is for face crops)")
                self._second_look(view, main_face(faces, view.shape), source)
            return Prepared(crop)
        _check_rgb(rgb, source)
        faces = self.detector.detect(rgb)
        if not faces:
            raise NoFaceError(f"{source}: no face found")
        face = main_face(faces, rgb.shape)
        if not face.upright:
            raise NoFaceError(f"{source}: no upright face found (the detected face's eyes and mouth do not line "
                              f"up: rotated by more than ~45 degrees, or not a face)")
        crop = align_face(rgb, face.keypoints, self.size, cfg.template, cfg.margin)
        if self.refuse_non_faces:
            self._second_look(rgb, face, source, crop)
        warnings = []
        if len(faces) > 1:
            warnings.append(f"{source}: {len(faces)} faces found, using the most central large one")
        if face.size < cfg.min_face:
            warnings.append(f"{source}: face is small ({face.size:.0f} px eye-to-mouth, under {cfg.min_face:g}): "
                            f"the decision is unreliable")
        return Prepared(crop, face, len(faces), warnings)

    def _second_look(self, image: np.ndarray, face, source: str, crop: np.ndarray | None = None) -> None:
        """Refuse a detection that does not hold up: the detector must find a face again in the face's
        aligned crop, at least :data:`SECOND_LOOK_SIZE` px (``crop``, the model's own, is used when that big)."""
        from engine.align import align_face

        cfg = self.config
        size = max(self.size, SECOND_LOOK_SIZE)
        if crop is None or crop.shape[0] < size:
            crop = align_face(image, face.keypoints, size, cfg.template, cfg.margin)
        if not self.detector.detect(crop):
            raise NoFaceError(f"{source}: no face found on a second look (the detector finds none in the aligned "
                              f"crop: not a face, or too blurred or covered)")

    def load(self, path: str | os.PathLike, data: bytes | None = None) -> Prepared:
        """Read (unless its bytes are given as ``data``), decode and prepare one file."""
        if data is None:
            data = read_file(path)
        return self.prepare(decode(data, str(path)), str(path))

    def close(self) -> None:
        """Close the detectors this preprocessor opened (a given one belongs to the caller)."""
        with self._lock:
            for det in self._opened:
                det.close()
            self._opened.clear()
            self._spare.clear()
        self._local = threading.local()
