"""Shared fixtures: synthetic face-like images, the shared-data location."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """Compiled-model caches go to a temporary folder, not the user's ~/.cache."""
    old = os.environ.get("FAKEAWARE_CACHE_DIR")
    os.environ["FAKEAWARE_CACHE_DIR"] = str(tmp_path_factory.mktemp("fakeaware-cache"))
    yield
    if old is None:
        os.environ.pop("FAKEAWARE_CACHE_DIR", None)
    else:
        os.environ["FAKEAWARE_CACHE_DIR"] = old


def face_data_dir() -> Path:
    """$FACE_DATA, defaulting to ../shared/data beside the project."""
    return Path(os.environ.get("FACE_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def face_data() -> Path:
    root = face_data_dir()
    if not (root / "lfw-deepfunneled").is_dir():
        pytest.skip(f"shared face data not found at {root} (set FACE_DATA)")
    return root


def synthetic_face(seed: int, size: int = 96) -> np.ndarray:
    """A deterministic RGB drawing of a face (skin, hair, eyes, brows, nose, mouth on a darker ground) with mild noise.

    Each seed gives a different 'identity' (colours, proportions), so tests of
    readers, attacks and training have structure to work with. Drawn with
    engine.canary's soft ellipses in a palette with contrast, so the runtime's
    face detector finds it, twice (the second look on its aligned crop), at
    40 px and above: it passes where the runtime refuses non-faces.
    """
    from engine.canary import draw_face

    rng = np.random.default_rng(seed)
    s = size / 112.0
    img = np.empty((size, size, 3), np.float64)
    img[:] = rng.uniform(10, 70, 3)
    skin, hair = rng.uniform([150, 110, 90], [235, 190, 170]), rng.uniform(0, 60, 3)
    cx, cy = size / 2 + rng.uniform(-4, 4) * s, size / 2 + rng.uniform(2, 8) * s
    draw_face(img, skin, hair, (cx, cy), (rng.uniform(30, 38) * s, rng.uniform(40, 48) * s),
              cy - rng.uniform(8, 14) * s, rng.uniform(15, 20) * s, cy + rng.uniform(20, 26) * s,
              rng.uniform(9, 13) * s)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def write_jpeg(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    path.write_bytes(buf.tobytes())
    return path


# How a camera stores an upright picture under each EXIF orientation (1-8): the
# inverse of the turn a viewer applies. PIL's names: ROTATE_90 is counter-clockwise.
_STORED_AS = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
              6: "ROTATE_90", 7: "TRANSVERSE", 8: "ROTATE_270"}


def write_exif_jpeg(path: Path, rgb: np.ndarray, orientation: int) -> Path:
    """Write ``rgb`` as a phone would: pixels stored turned, EXIF orientation saying how to show them upright."""
    from PIL import Image

    image = Image.fromarray(rgb)
    if orientation != 1:
        image = image.transpose(getattr(Image.Transpose, _STORED_AS[orientation]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, quality=100, subsampling=0, exif=exif.tobytes())
    return path


@pytest.fixture
def identity_folders(tmp_path) -> Path:
    """6 identities x 4 real images each, as generic identity folders."""
    root = tmp_path / "faces"
    for ident in range(6):
        for k in range(4):
            img = synthetic_face(ident * 1000 + k * 0)  # same identity = same base face
            rng = np.random.default_rng(ident * 100 + k)
            shift = rng.integers(-3, 4, 2)
            img = np.roll(img, tuple(int(s) for s in shift), axis=(0, 1))
            write_jpeg(root / f"person_{ident:02d}" / f"person_{ident:02d}_{k + 1:04d}.jpg", img)
    return root


def make_identity_folders(root: Path, identities: int, images: int, size: int = 64) -> Path:
    """``identities`` x ``images`` synthetic faces as ``<root>/person_XX/person_XX_000k.jpg`` (LFW naming)."""
    for ident in range(identities):
        base = synthetic_face(ident * 1000, size)
        for k in range(images):
            rng = np.random.default_rng(ident * 100 + k)
            img = np.roll(base, tuple(int(s) for s in rng.integers(-3, 4, 2)), axis=(0, 1))
            img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)  # no two photos alike
            write_jpeg(root / f"person_{ident:02d}" / f"person_{ident:02d}_{k + 1:04d}.jpg", img)
    return root


@pytest.fixture
def small_faces(tmp_path) -> Path:
    """12 identities x 3 images at 64x64: enough for identity-disjoint train/val/test splits."""
    return make_identity_folders(tmp_path / "faces", 12, 3)

