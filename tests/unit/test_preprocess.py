"""engine.preprocess: every kind of input becomes uint8 RGB (size, size, 3), or a clear ImageError."""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from engine.preprocess import ImageError, decode, load_image, preprocess
from conftest import synthetic_face, write_jpeg


def _png_bytes(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR claiming width x height, with a token IDAT: no pixels allocated."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _jpeg_header_only(width: int, height: int) -> bytes:
    """SOI + a baseline SOF0 frame header claiming width x height + EOI."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    return b"\xff\xd8" + sof + b"\xff\xd9"


@pytest.mark.parametrize("size", [112, 224])
def test_grayscale_png_becomes_rgb(tmp_path, size):
    gray = np.tile(np.arange(150, dtype=np.uint8)[None, :], (150, 1))
    path = tmp_path / "gray.png"
    path.write_bytes(_png_bytes(gray))
    out = load_image(path, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


@pytest.mark.parametrize("size", [112, 224])
def test_rgba_png_drops_alpha_and_keeps_rgb_order(tmp_path, size):
    bgra = np.zeros((120, 120, 4), np.uint8)
    bgra[..., 2] = 200  # red in OpenCV's BGRA order
    bgra[..., 3] = 17   # alpha must not leak into any colour channel
    path = tmp_path / "rgba.png"
    path.write_bytes(_png_bytes(bgra))
    out = load_image(path, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    assert (out[..., 0] == 200).all() and (out[..., 1] == 0).all() and (out[..., 2] == 0).all()


@pytest.mark.parametrize("size", [112, 224])
def test_16bit_png_scaled_to_8bit(tmp_path, size):
    img16 = np.full((130, 130, 3), 0xAB00 + 0xCD, np.uint16)
    img16[..., 0] = 0x1234  # blue in BGR -> channel 2 in RGB
    path = tmp_path / "deep.png"
    path.write_bytes(_png_bytes(img16))
    out = load_image(path, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    assert (out[..., 0] == 0xAB).all() and (out[..., 1] == 0xAB).all() and (out[..., 2] == 0x12).all()


@pytest.mark.parametrize("size", [112, 224])
def test_non_square_is_centre_cropped(size):
    # 300 wide x 200 high: 50-px bands left and right must be cut away.
    rgb = np.zeros((200, 300, 3), np.uint8)
    rgb[:, :50] = (255, 0, 0)
    rgb[:, 250:] = (0, 0, 255)
    rgb[:, 50:250] = (0, 255, 0)
    out = preprocess(rgb, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    assert (out[..., 1] == 255).all() and (out[..., 0] == 0).all() and (out[..., 2] == 0).all()
    tall = np.ascontiguousarray(rgb.transpose(1, 0, 2))  # 200 wide x 300 high
    assert preprocess(tall, size).shape == (size, size, 3)


def test_jpeg_colour_order_is_rgb(tmp_path):
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = 220  # red
    out = load_image(write_jpeg(tmp_path / "red.jpg", rgb), 112)
    assert out[..., 0].mean() > 200 and out[..., 2].mean() < 30


def test_exact_size_is_unchanged():
    rgb = synthetic_face(3, 112)
    out = preprocess(rgb, 112)
    assert np.array_equal(out, rgb) and out.flags.c_contiguous


def test_one_pixel_image_refused(tmp_path):
    path = tmp_path / "dot.png"
    path.write_bytes(_png_bytes(np.zeros((1, 1, 3), np.uint8)))
    with pytest.raises(ImageError, match=r"dot\.png.*1x1"):
        load_image(path, 112)


@pytest.mark.parametrize("name,data,message", [
    ("empty.jpg", b"", "empty file"),
    ("text.jpg", b"this is not an image, just text\n" * 20, "not a decodable image"),
])
def test_not_an_image(tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ImageError, match=message) as err:
        load_image(path)
    assert name in str(err.value)


def test_truncated_jpeg_refused(tmp_path):
    good = write_jpeg(tmp_path / "good.jpg", synthetic_face(1, 96)).read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ImageError, match=r"cut\.jpg.*truncated"):
        load_image(path)


def test_jpeg_with_trailer_after_end_marker_accepted(tmp_path):
    good = write_jpeg(tmp_path / "good.jpg", synthetic_face(1, 96)).read_bytes()
    path = tmp_path / "trailer.jpg"
    path.write_bytes(good + b"CAMERA-TRAILER" * 40)  # > 64 bytes after EOI, as some cameras write
    assert np.array_equal(load_image(path, 96), load_image(tmp_path / "good.jpg", 96))
    cut = tmp_path / "cut_before_trailer.jpg"
    cut.write_bytes(good[:-300] + b"CAMERA-TRAILER" * 40)
    with pytest.raises(ImageError, match="truncated"):
        load_image(cut)


@pytest.mark.parametrize("header", [_png_header_only, _jpeg_header_only], ids=["png", "jpeg"])
def test_huge_header_refused_before_decoding(tmp_path, header):
    path = tmp_path / "huge.img"
    path.write_bytes(header(20000, 20000))
    assert path.stat().st_size < 200  # the pixels are never materialised in the test either
    with pytest.raises(ImageError, match=r"huge\.img.*(too large|pixel limit)"):
        load_image(path)


def test_moderately_large_header_refused_by_own_limit():
    # 8000x8000 = 64 Mpx: below Pillow's bomb threshold, above MAX_PIXELS.
    with pytest.raises(ImageError, match="8000x8000"):
        decode(_png_header_only(8000, 8000), "big.png")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)


def test_preprocess_rejects_wrong_array():
    with pytest.raises(ImageError, match="expected uint8 HxWx3"):
        preprocess(np.zeros((64, 64), np.uint8))
    with pytest.raises(ImageError, match="expected uint8 HxWx3"):
        preprocess(np.zeros((64, 64, 3), np.float32))


def test_crop_fraction_keeps_the_central_share():
    from engine.preprocess import preprocess

    rgb = np.zeros((200, 200, 3), np.uint8)
    rgb[50:150, 50:150] = 255  # white central half, black border
    full = preprocess(rgb, 64)
    half = preprocess(rgb, 64, crop_fraction=0.5)
    assert full[0, 0].tolist() == [0, 0, 0] and full[32, 32].tolist() == [255, 255, 255]
    assert half.min() == 255  # only the white centre survives the 0.5 crop
    with pytest.raises(ValueError, match="crop_fraction"):
        preprocess(rgb, 64, crop_fraction=0.0)
