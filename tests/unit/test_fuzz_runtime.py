"""Property tests over the runtime's untrusted inputs: image bytes and model.json.

Whatever the bytes or values, the result is a usable image / config or the
project's own error (ImageError, ContractError) with a one-line message naming
the source: never another exception, never a huge allocation.
"""
from __future__ import annotations

import json
import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.contract import ContractError, ModelConfig
from engine.preprocess import MAX_PIXELS, ImageError, decode

# No example database: a run leaves no files behind and does not depend on earlier runs.
SETTINGS = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _encode(ext: str) -> bytes:
    rng = np.random.default_rng(0)
    ok, buf = cv2.imencode(ext, rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()


REAL = {ext: _encode(ext) for ext in (".jpg", ".png", ".bmp", ".tif", ".webp", ".gif", ".ppm")}


def _check_decode(data: bytes) -> None:
    try:
        out = decode(data, "fuzz.img")
    except ImageError as exc:
        message = str(exc)
        assert message.startswith("fuzz.img: ") and "\n" not in message, message
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.shape[0] * out.shape[1] <= MAX_PIXELS


@SETTINGS
@given(st.binary(max_size=512))
def test_random_bytes(data):
    _check_decode(data)


MAGICS = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\0", b"MM\0*", b"II+\0", b"RIFF\0\0\0\0WEBP",
          b"\0\0\0\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51", b"GIF89a", b"\x59\xa6\x6a\x95",
          b"\0\0\0\x18ftypavif", b"#?RADIANCE\n", b"P6\n", b"P7\n", b"PF\n", b"Pf\n"]


@SETTINGS
@given(st.sampled_from(MAGICS), st.binary(max_size=256))
def test_known_signatures_followed_by_random_bytes(magic, rest):
    _check_decode(magic + rest)


@SETTINGS
@given(st.sampled_from(sorted(REAL)), st.data())
def test_truncated_and_corrupted_real_files(ext, data):
    real = REAL[ext]
    cut = data.draw(st.integers(0, len(real)), label="cut")
    damaged = bytearray(real[:cut])
    for _ in range(data.draw(st.integers(0, 4), label="flips")):
        if damaged:
            damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    _check_decode(bytes(damaged))


def _png(w, h):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def _tiff(w, h):
    tags = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (262, 3, 1, 1), (273, 4, 1, 8), (277, 3, 1, 1)]
    return b"II*\0" + struct.pack("<IH", 8, len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags) + b"\0" * 8


def _jpeg(w, h):
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, h, w, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    return b"\xff\xd8" + sof + b"\xff\xd9"


def _bmp(w, h):
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 0, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", 0, 0, 0, 54) + info


def _gif(w, h):
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + struct.pack("<HHBBB", w, h, 0, 0, 0) + frame + b"\x3b"


HEADERS = {
    "png": _png, "jpeg": _jpeg, "bmp": _bmp, "gif": _gif, "tiff": _tiff,
    "hdr": lambda w, h: b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y %d +X %d\n" % (h, w) + b"\x02\x02\x00\x10" * 8,
    "pfm": lambda w, h: b"PF\n%d %d\n-1\n" % (w, h) + b"\0" * 48,
    "pam": lambda w, h: b"P7\nWIDTH %d\nHEIGHT %d\nDEPTH 3\nMAXVAL 255\nENDHDR\n" % (w, h) + b"\0" * 48,
    "ppm": lambda w, h: b"P6\n%d %d\n255\n" % (w, h) + b"\0" * 48,
}
LIMITS = {"png": 2 ** 31 - 1, "tiff": 2 ** 32 - 1, "hdr": 10 ** 9, "pfm": 10 ** 9, "pam": 10 ** 9, "ppm": 10 ** 9,
          "jpeg": 65535, "gif": 65535, "bmp": 2 ** 31 - 1}


@SETTINGS
@given(st.sampled_from(sorted(HEADERS)), st.data())
def test_huge_declared_sizes_are_refused_from_the_header(kind, data):
    top = LIMITS[kind]
    w = data.draw(st.integers(MAX_PIXELS // top + 1, top), label="width")
    h = data.draw(st.integers(MAX_PIXELS // w + 1, top), label="height")
    assert w * h > MAX_PIXELS
    with pytest.raises(ImageError, match=r"^fuzz\.img: (image header says \d+x\d+, over the|image too large)"):
        decode(HEADERS[kind](w, h), "fuzz.img")


# ----------------------------------------------------------------------------- model.json

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10 ** 400, 10 ** 400) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
KEYS = [name for name in ModelConfig.__dataclass_fields__]


@SETTINGS
@given(st.dictionaries(st.sampled_from(KEYS), JSON_VALUES, max_size=4))
def test_random_values_per_key_load_or_name_the_problem(tmp_path, values):
    path = tmp_path / "model.json"
    path.write_text(json.dumps(values))  # NaN/Infinity written as Python's json does, and read back the same
    try:
        config = ModelConfig.load(path)
    except ContractError as exc:
        message = str(exc)
        assert message.startswith(f"{path}: ") and "\n" not in message, message
        assert any(key in message for key in values), message  # the key at fault is named
        return
    # Loaded: what the runtime reads is sane and the config round-trips as strict JSON.
    assert config.threshold is None or -1.0 <= config.threshold <= 1.0
    assert 32 <= config.input_size <= 1024 and 0 < config.crop_fraction <= 1
    assert all(np.isfinite(config.pixel_mean)) and min(config.pixel_std) > 0
    json.dumps(config.to_dict(), allow_nan=False)
