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
    """A deterministic RGB image with a face-like layout: skin ellipse, eyes, mouth.

    Each seed gives a different 'identity' (colours, proportions), so tests of
    readers, attacks and training have structure to work with.
    """
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), rng.integers(30, 220, 3), dtype=np.uint8)
    c = size // 2
    skin = tuple(int(v) for v in rng.integers(90, 255, 3))
    cv2.ellipse(img, (c, c), (int(size * rng.uniform(0.25, 0.35)), int(size * rng.uniform(0.35, 0.45))),
                0, 0, 360, skin, -1)
    eye = tuple(int(v) for v in rng.integers(0, 80, 3))
    dx, dy = int(size * rng.uniform(0.1, 0.16)), int(size * 0.1)
    for sx in (-1, 1):
        cv2.circle(img, (c + sx * dx, c - dy), max(2, size // 24), eye, -1)
    cv2.ellipse(img, (c, c + int(size * 0.2)), (int(size * rng.uniform(0.08, 0.15)), size // 30), 0, 0, 360,
                (int(rng.integers(100, 200)), 30, 40), -1)
    noise = rng.normal(0, 6, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


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


TAMPERS = ("byte-flipped", "unrecorded-file", "canaries-negated", "conv-zeroed-digest-updated",
           "canaries-of-another-generator", "canaries-malformed")


def tampered_model(dst: Path, kind: str) -> Path:
    """A copy of the bundled model folder changed as an attacker or an accident would (``TAMPERS``).

    Every kind must be refused before any decision, by the Python runtime and the C++ runner alike.
    """
    import json
    import os
    import shutil

    from engine.integrity import sha256_file

    shutil.copytree(REPO / "engine" / "models", dst, ignore=shutil.ignore_patterns("detector", "*.md", "*.csv"))
    onnx_file, config_file = dst / "model.fp16.onnx", dst / "model.json"
    config = json.loads(config_file.read_text())
    canary = config["extra"]["canary"]
    if kind == "byte-flipped":  # same size, mtime put back: only the content says it changed
        st = onnx_file.stat()
        data = bytearray(onnx_file.read_bytes())
        data[len(data) // 2] ^= 0x5A
        onnx_file.write_bytes(bytes(data))
        os.utime(onnx_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif kind == "unrecorded-file":  # a file convert did not write, chosen before the recorded one
        shutil.copy(onnx_file, dst / "model.fp32.onnx")
    elif kind == "canaries-negated":
        canary["fp32"] = [[-v for v in row] for row in canary["fp32"]]
    elif kind == "conv-zeroed-digest-updated":  # the digest cannot tell; the canaries must
        import onnx
        from onnx import numpy_helper

        model = onnx.load(onnx_file)
        weights = {i.name: i for i in model.graph.initializer}
        producer = {out: node for node in model.graph.node for out in node.output}
        conv = [n for n in model.graph.node if n.op_type == "Conv"][5]
        name = conv.input[1]
        while name not in weights and name in producer:  # through the FP16 -> FP32 Cast
            name = producer[name].input[0]
        array = numpy_helper.to_array(weights[name])
        weights[name].CopyFrom(numpy_helper.from_array(np.zeros_like(array), name))
        onnx.save(model, onnx_file)
        config["extra"]["onnx_sha256"]["fp16"] = sha256_file(onnx_file)
    elif kind == "canaries-of-another-generator":
        canary.pop("generator")
    elif kind == "canaries-malformed":
        canary["count"] = canary["count"] + 1
    else:
        raise ValueError(kind)
    config_file.write_text(json.dumps(config))
    return dst
