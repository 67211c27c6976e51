"""The C++ runner (CMakeLists.txt, cpp/) against the Python runtime: same files, same contract, same answers.

Builds the project once per session into ``build/pytest-cpp`` (gitignored;
incremental after the first time) when cmake, the OpenVINO wheel, and the
OpenCV and nlohmann-json dev headers are present, and skips with the reason
otherwise. Then, on a handful of LFW photos, compares the C++ CLI's model
inputs, embeddings, similarities and decisions with the Python runtime's
(``Embedder`` over ``open_backend(backend="openvino")``, same precision), and
checks that errors exit 2 with one line naming the input.

Tolerances, measured (2-core AMD EPYC, OpenVINO 2026.4, pip OpenCV 5.1 with
IPP beside Debian's OpenCV 4.6): the C++ runner warps as the Python side's
cv2.warpAffine does (cpp/src/face.cpp), so on these photos 17 of 376,320 crop
values differ, by one level (ties, and ONNX Runtime vs OpenVINO running the
detector); the same crops through both backends give identical embeddings.
End to end, FP16: cosine 1.000000 per image, similarities within 1e-5 (2e-5
at the 95th percentile over 60 photos). The INT8 Q/DQ model is far more
sensitive to its input: one pixel value one level off moves its embedding to
cosine ~0.9998, and the Python runtime itself moves similarities by up to
4.3e-3 (60 photos) when only its detector backend changes (ONNX Runtime ->
OpenVINO). So INT8 keeps the 0.999 per-image cosine bound, and its
similarities are held to INT8_SIM_TOLERANCE (C++ vs Python measured 2.5e-3
here, 4.1e-3 worst over 60 photos) instead of 1e-3.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import _STORED_AS, REPO, face_data_dir, synthetic_face, write_exif_jpeg, write_jpeg

from bench.hostile import TAMPERS, tampered_model

BUILD = REPO / "build" / "pytest-cpp"
CLI = BUILD / "faceverify"
SIM_TOLERANCE = 1e-3  # FP16: measured 1e-5
INT8_SIM_TOLERANCE = 5e-3  # INT8: see the module docstring (the Python runtime's own spread is 4.3e-3)
MIN_COSINE = 0.999
HEADERS = {"OpenCV": "opencv4/opencv2/imgcodecs.hpp", "nlohmann-json": "nlohmann/json.hpp", "OpenSSL": "openssl/evp.h"}
APT = "apt-get install -y --no-install-recommends libopencv-imgproc-dev libopencv-imgcodecs-dev " \
      "libopencv-core-dev nlohmann-json3-dev libssl-dev"


def _missing_prerequisite() -> str | None:
    if shutil.which("cmake") is None:
        return "cmake not found"
    if shutil.which("c++") is None and shutil.which("g++") is None:
        return "no C++ compiler"
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "the openvino wheel is not installed (pip install openvino)"
    for name, header in HEADERS.items():
        if not any((Path(root) / header).is_file() for root in ("/usr/include", "/usr/local/include")):
            return f"{name} dev headers not found ({APT})"
    return None


@pytest.fixture(scope="session")
def cli() -> Path:
    """The faceverify CLI, (re)built incrementally into build/pytest-cpp."""
    why = _missing_prerequisite()
    if why:
        pytest.skip(f"C++ runner not built: {why}")
    configure = ["cmake", "-S", str(REPO), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DFV_PYTHON={sys.executable}", "-DFV_BUILD_TESTS=ON"]
    for cmd in (configure, ["cmake", "--build", str(BUILD), "-j2"]):
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert CLI.is_file()
    return CLI


def test_ctest_unit_tests_pass(cli):
    """The C++ unit tests (transform, template, NMS, JSON, sidecar, error paths) through ctest."""
    done = subprocess.run(["ctest", "--test-dir", str(BUILD), "--output-on-failure"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "100% tests passed" in done.stdout


def run_cli(cli: Path, *args, check_rc: int | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([str(cli), *map(str, args)], capture_output=True, text=True, timeout=120)
    if check_rc is not None:
        assert done.returncode == check_rc, f"exit {done.returncode}, stderr:\n{done.stderr}"
    return done


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


# ------------------------------------------------------------------ parity on real photos

@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Two photos each of six LFW people, spread over the alphabet (fixed, no randomness); the sixth
    person's cut inside the detected face box (a face filling the frame: found only on the zoomed-out retry),
    the second person's second stored sideways under an EXIF orientation, the third's second small in a
    4000x3000 frame."""
    from engine.detect import open_detector

    root = face_data_dir() / "lfw-deepfunneled"
    if not root.is_dir():
        pytest.skip(f"shared face data not found at {root} (set FACE_DATA)")
    people = [d for d in sorted(root.iterdir()) if d.is_dir() and len(list(d.glob("*.jpg"))) >= 2]
    picked = people[:: max(1, len(people) // 6)][:6]
    out = [sorted(p.glob("*.jpg"))[k] for p in picked for k in (0, 1)]
    folder = tmp_path_factory.mktemp("tight")
    detector = open_detector(backend="onnxruntime")
    try:
        for i in (10, 11):
            bgr = cv2.imread(str(out[i]))
            face = detector.detect(np.ascontiguousarray(bgr[:, :, ::-1]))[0]
            inset = 0.1 * (face.box[2] - face.box[0])
            x0, y0, x1, y1 = (int(round(v)) for v in np.array(face.box) + (inset, inset, -inset, -inset))
            out[i] = folder / f"tight-{out[i].name}"
            cv2.imwrite(str(out[i]), bgr[y0:y1, x0:x1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            tight = cv2.imread(str(out[i]))[:, :, ::-1]
            assert detector._pass([np.ascontiguousarray(tight)], 1) == [[]], "not a case for the retry"
    finally:
        detector.close()
    # The second person's second photo as a phone saves it: stored turned, EXIF orientation 6.
    upright = np.ascontiguousarray(cv2.imread(str(out[3]))[:, :, ::-1])
    out[3] = write_exif_jpeg(folder / f"exif6-{out[3].name}", upright, 6)
    # The third person's second photo small in a 12 MP frame: found in tiles, then refined.
    canvas = np.full((3000, 4000, 3), 128, np.uint8)
    canvas[1800:2050, 2900:3150] = cv2.imread(str(out[5]))
    out[5] = folder / f"large-{out[5].name}"
    cv2.imwrite(str(out[5]), canvas, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return out


def pairs(n: int) -> list[tuple[int, int]]:
    """Genuine pairs (the two photos of a person) and impostor pairs (first photos of neighbours)."""
    return [(i, i + 1) for i in range(0, n, 2)] + [(i, (i + 2) % n) for i in range(0, n, 2)]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b, dtype=np.float64) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module", params=["fp16", "int8"])
def compared(request, cli, photos, tmp_path_factory):
    """(precision, C++ embeddings, Python embeddings, C++ crops, Python crops, threshold) for the photos."""
    from engine.backends import open_backend
    from engine.embedder import Embedder

    precision = request.param
    if not (REPO / "engine" / "models" / f"model.{precision}.onnx").is_file():
        pytest.skip(f"the bundled model ships no {precision} file (the conversion gate refused it)")
    out = tmp_path_factory.mktemp(f"cpp-{precision}")
    (out / "crops").mkdir()
    run_cli(cli, "--embed", *photos, "--precision", precision, "--dump-embeddings", out / "emb.json",
            "--dump-crops", out / "crops", check_rc=0)
    doc = json.loads((out / "emb.json").read_text())
    assert (doc["backend"], doc["precision"]) == ("openvino", precision)
    assert [Path(r["path"]) for r in doc["images"]] == photos
    cpp = np.array([r["embedding"] for r in doc["images"]], np.float32)
    cpp_crops = np.stack([cv2.cvtColor(cv2.imread(str(out / "crops" / f"{i}.ppm")), cv2.COLOR_BGR2RGB)
                          for i in range(len(photos))])
    with Embedder(open_backend(None, backend="openvino", precision=precision), progress=False) as embedder:
        res = embedder.embed_paths(photos)
        assert not res.failures
        py_crops = np.stack([embedder.preprocessor.load(p).image for p in photos])
        threshold = embedder.backend.config.threshold
    return precision, cpp, res.embeddings, cpp_crops, py_crops, threshold


@pytest.mark.data
@pytest.mark.slow
def test_crops_match_python(compared):
    """The model inputs: decode, detect, main face, similarity warp as engine.preprocess makes them."""
    _, _, _, cpp_crops, py_crops, _ = compared
    diff = np.abs(cpp_crops.astype(np.int16) - py_crops)
    assert cpp_crops.shape == py_crops.shape
    # OpenCV 4.6's own warpAffine here would leave only ~94% identical.
    assert (diff == 0).mean() >= 0.999, f"only {(diff == 0).mean():.3%} of crop values identical"
    assert diff.max() <= 2, f"crop values up to {diff.max()} apart"


@pytest.mark.data
@pytest.mark.slow
def test_backend_matches_python_on_same_crops(cli, compared, tmp_path):
    """Python's own crops through the C++ runner (a copy of the model folder with align: none) embed identically."""
    from engine.backends import open_backend

    precision, _, _, _, py_crops, _ = compared
    model = tmp_path / "model"
    model.mkdir()
    config = json.loads((REPO / "engine" / "models" / "model.json").read_text())
    config.update(align="none", crop_fraction=1.0)  # a 112 px crop is then fed as it is
    (model / "model.json").write_text(json.dumps(config))
    (model / f"model.{precision}.onnx").symlink_to(REPO / "engine" / "models" / f"model.{precision}.onnx")
    files = []
    for i, crop in enumerate(py_crops):
        files.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(files[-1]), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    run_cli(cli, "--embed", *files, "--model", model, "--precision", precision, "--dump-embeddings",
            tmp_path / "emb.json", check_rc=0)
    cpp = np.array([r["embedding"] for r in json.loads((tmp_path / "emb.json").read_text())["images"]], np.float32)
    with open_backend(None, backend="openvino", precision=precision) as backend:
        py = backend.embed(py_crops)
    # The same OpenVINO build and compile options on both sides: measured bit-identical.
    assert cosine(cpp, py).min() >= 0.99999
    assert np.abs(cpp - py).max() <= 1e-6


@pytest.mark.data
@pytest.mark.slow
def test_embeddings_and_decisions_match_python(compared):
    precision, cpp, py, _, _, threshold = compared
    assert np.isfinite(cpp).all()
    per_image = cosine(cpp, py)
    assert per_image.min() >= MIN_COSINE, f"{precision}: per-image cosine {np.round(per_image, 5)}"
    tol = SIM_TOLERANCE if precision == "fp16" else INT8_SIM_TOLERANCE
    idx = np.array(pairs(len(cpp)))
    sim_cpp, sim_py = cosine(cpp[idx[:, 0]], cpp[idx[:, 1]]), cosine(py[idx[:, 0]], py[idx[:, 1]])
    gap = np.abs(sim_cpp - sim_py)
    assert gap.max() <= tol, f"{precision}: similarity differences {np.round(gap, 5)}"
    # Same decisions, except where Python's similarity is within the tolerance of the threshold.
    clear = np.abs(sim_py - threshold) > tol
    assert clear.sum() >= len(idx) - 2, "too many pairs at the threshold to compare decisions"
    assert ((sim_cpp >= threshold) == (sim_py >= threshold))[clear].all()


@pytest.mark.data
@pytest.mark.slow
def test_two_image_cli_matches_python(cli, photos, compared):
    """`faceverify A B --json`: the similarity, decision, exit code and fields of `python -m engine.verify`."""
    precision, _, py, _, _, threshold = compared
    for a, b in ((0, 1), (0, 2)):
        done = run_cli(cli, photos[a], photos[b], "--json", "--precision", precision)
        info = json.loads(done.stdout)
        sim_py = float(cosine(py[a:a + 1], py[b:b + 1])[0])
        tol = SIM_TOLERANCE if precision == "fp16" else INT8_SIM_TOLERANCE
        assert abs(info["similarity"] - sim_py) <= tol
        assert info["threshold"] == pytest.approx(threshold, abs=0)
        assert done.returncode == (0 if info["match"] else 1)
        if abs(sim_py - threshold) > tol:
            assert info["match"] == (sim_py >= threshold)
        assert {"similarity", "match", "threshold", "backend", "precision", "device", "model", "image_a",
                "image_b", "detection", "realness", "looks_fake"} <= set(info)
        assert info["detection"]["image_a"]["faces"] >= 1 and set(info["detection"]["image_a"]["face"]) == \
            {"box", "score", "size", "keypoints"}
    text = run_cli(cli, photos[0], photos[1], "--precision", precision)
    lines = text.stdout.splitlines()
    assert lines[0].startswith("similarity: ") and lines[1].startswith("decision:   ")
    assert f"(threshold {threshold:.4f})" in lines[1]


# ------------------------------------------------------------------ decoding: Python's outcome for the same file

def embed_both(cli: Path, paths: list[Path], out: Path) -> tuple[list, np.ndarray]:
    """FP16 embeddings of ``paths`` from the C++ CLI (None where it refused the file) and from Python (NaN rows)."""
    from engine.backends import open_backend
    from engine.embedder import Embedder

    run_cli(cli, "--embed", *paths, "--precision", "fp16", "--dump-embeddings", out)
    cpp = [r["embedding"] for r in json.loads(out.read_text())["images"]]
    with Embedder(open_backend(None, backend="openvino", precision="fp16"), progress=False) as embedder:
        py = embedder.embed_paths(paths).embeddings
    return cpp, py


def check_same_outcomes(names: list[str], cpp: list, py: np.ndarray) -> None:
    for name, c, p in zip(names, cpp, py):
        assert (c is None) == bool(np.isnan(p).any()), f"{name}: C++ {'refused' if c is None else 'embedded'} it"
        if c is not None:
            assert cosine(np.array([c], np.float32), p[None])[0] >= MIN_COSINE, name


def webp_with_exif(rgb: np.ndarray, exif: bytes) -> bytes:
    """A lossless WebP whose EXIF chunk holds exactly ``exif`` (Pillow strips an "Exif\0\0" prefix itself)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "WEBP", lossless=True)
    h, w = rgb.shape[:2]
    size = (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x08\0\0\0" + size  # flags: EXIF present
    chunk = b"EXIF" + struct.pack("<I", len(exif)) + exif + b"\0" * (len(exif) % 2)
    body = b"WEBP" + vp8x + buf.getvalue()[12:] + chunk
    return b"RIFF" + struct.pack("<I", len(body)) + body


def exif_ifd(order: bytes, entries: list[tuple[int, int, int, bytes]], ifd: int = 8, count: int | None = None) -> bytes:
    o = "<" if order == b"II" else ">"
    out = order + struct.pack(o + "HIH", 42, ifd, len(entries) if count is None else count)
    return out + b"".join(struct.pack(o + "HHI", *e[:3]) + e[3] for e in entries) + b"\0\0\0\0"


@pytest.mark.data
@pytest.mark.slow
def test_webp_exif_orientation_matches_python(cli, face_data, tmp_path):
    """A WebP stored turned under each EXIF orientation decodes upright in both (OpenCV 4.6 ignores a WebP's
    orientation, the runner applies it), and hostile EXIF chunks are read as the Python side's OpenCV reads them."""
    from PIL import Image

    upright = np.asarray(Image.open(face_data / "lfw-deepfunneled/Aaron_Peirsol/Aaron_Peirsol_0001.jpg").convert("RGB"))
    upright = np.pad(upright, ((40, 40), (0, 0), (0, 0)), constant_values=120)  # not square: a wrong turn shows

    def stored(k: int) -> np.ndarray:
        image = Image.fromarray(upright)
        return np.asarray(image if k == 1 else image.transpose(getattr(Image.Transpose, _STORED_AS[k])))

    def short(order: bytes, value: int) -> bytes:  # an entry's value field holding a SHORT
        return struct.pack("<HH" if order == b"II" else ">HH", value, 0)

    # Both byte orders; the orientation is the second entry, so the reader walks the IFD.
    files = {f"orientation-{k}": webp_with_exif(stored(k), exif_ifd(order, [(0x0100, 3, 1, short(order, 1)),
                                                                           (0x0112, 3, 1, short(order, k))]))
             for k in range(1, 9) for order in [b"II" if k % 2 else b"MM"]}
    files.update({  # stored turned as orientation 6 says; whether it ends upright depends on how the tag is read
        "exif-prefix": webp_with_exif(stored(6), b"Exif\0\0" + exif_ifd(b"II", [(0x0112, 3, 1, short(b"II", 6))])),
        "long-value": webp_with_exif(stored(6), exif_ifd(b"II", [(0x0112, 4, 1, struct.pack("<I", 6))])),
        "count-past-end": webp_with_exif(stored(6), exif_ifd(b"II", [(0x0112, 3, 1, short(b"II", 6))], count=0xFFFF)),
        "ifd-out-of-range": webp_with_exif(stored(6), exif_ifd(b"II", [(0x0112, 3, 1, short(b"II", 6))],
                                                               ifd=0xFFFFFFF0)),
        "bad-magic": webp_with_exif(stored(6), b"II\x2b\0" + exif_ifd(b"II", [(0x0112, 3, 1, short(b"II", 6))])[4:]),
        "truncated-ifd": webp_with_exif(stored(6), exif_ifd(b"II", [(0x0112, 3, 1, short(b"II", 6))])[:14]),
    })
    paths = []
    for name, data in files.items():
        paths.append(tmp_path / f"{name}.webp")
        paths[-1].write_bytes(data)
    cpp, py = embed_both(cli, paths, tmp_path / "emb.json")
    check_same_outcomes(list(files), cpp, py)
    # Lossless and turned back exactly: the upright photo's pixels, so its embedding, under every orientation.
    assert all(c is not None for c in cpp[:8])
    turned = np.array(cpp[:8], np.float32)
    assert cosine(turned, np.repeat(turned[:1], 8, 0)).min() >= 0.99999


@pytest.mark.data
@pytest.mark.slow
def test_pam_decodes_as_png(cli, face_data, tmp_path):
    """PAM files (RGB, RGB_ALPHA, GRAYSCALE_ALPHA) give the embedding of a PNG of the same pixels, in C++ and Python:
    OpenCV returns a 3-channel PAM in RGB order (red and blue swapped: 0.51 against the same photo's JPEG), and
    OpenCV 4.6 garbles 2- and 4-channel ones when it converts them itself."""
    rgb = cv2.imread(str(face_data / "lfw-deepfunneled/Aaron_Peirsol/Aaron_Peirsol_0001.jpg"))[:, :, ::-1]
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    alpha = np.full((h, w, 1), 255, np.uint8)

    def pam(pixels: np.ndarray, tuple_type: str) -> bytes:
        depth = pixels.shape[2]
        return (f"P7\nWIDTH {w}\nHEIGHT {h}\nDEPTH {depth}\nMAXVAL 255\nTUPLTYPE {tuple_type}\nENDHDR\n".encode()
                + np.ascontiguousarray(pixels).tobytes())

    files = {"rgb.png": cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes(), "rgb.pam": pam(rgb, "RGB"),
             "rgba.pam": pam(np.dstack([rgb, alpha]), "RGB_ALPHA"), "grey.png": cv2.imencode(".png", grey)[1].tobytes(),
             "grey-alpha.pam": pam(np.dstack([grey, alpha]), "GRAYSCALE_ALPHA")}
    paths = []
    for name, data in files.items():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
    cpp, py = embed_both(cli, paths, tmp_path / "emb.json")
    check_same_outcomes(list(files), cpp, py)
    cpp = np.array(cpp, np.float32)
    # The same pixels: the same model input, so the same embedding to float rounding.
    assert cosine(cpp[[1, 2]], cpp[[0, 0]]).min() >= 0.99999 and cosine(cpp[[4]], cpp[[3]])[0] >= 0.99999


@pytest.mark.data
@pytest.mark.slow
def test_short_jpeg_app_segment_decodes_as_python(cli, face_data, tmp_path):
    """An APP1 segment of length 1 (malformed): Pillow and libjpeg skip only its length bytes and decode the
    image, so the runner does too, instead of calling the header damaged."""
    photo = face_data / "lfw-deepfunneled/Aaron_Peirsol/Aaron_Peirsol_0001.jpg"
    jpg = photo.read_bytes()
    odd = tmp_path / "app1-length-1.jpg"
    odd.write_bytes(jpg[:2] + b"\xff\xe1\x00\x01" + jpg[2:])
    cpp, py = embed_both(cli, [photo, odd], tmp_path / "emb.json")
    check_same_outcomes(["photo", odd.name], cpp, py)
    assert cosine(np.array(cpp[1:], np.float32), np.array(cpp[:1], np.float32))[0] >= 0.99999


@pytest.mark.data
@pytest.mark.slow
def test_json_output_with_a_non_utf8_file_name(cli, face_data, tmp_path):
    """A file name is bytes: --json prints valid JSON (invalid bytes as U+FFFD) and decides, never exit 2."""
    photo = face_data / "lfw-deepfunneled/Aaron_Peirsol/Aaron_Peirsol_0001.jpg"
    odd = tmp_path / os.fsdecode(b"\xff\xfe\xc3(face.jpg")
    shutil.copy(photo, odd)
    for args, codes in (([photo, odd], (0, 1)), ([odd, tmp_path / os.fsdecode(b"\xffmissing.jpg")], (2,))):
        done = subprocess.run([str(cli), "--json", *map(str, args)], capture_output=True, timeout=120)
        assert done.returncode in codes, done.stderr.decode(errors="replace")
        info = json.loads(done.stdout.decode("utf-8"))  # strict: valid UTF-8
        if codes == (0, 1):
            assert info["image_b"] == f"{tmp_path}/\ufffd\ufffd\ufffd(face.jpg"
            assert info["match"] == (done.returncode == 0)
        else:
            assert "\ufffdmissing.jpg: no such file" in info["error"]


# ------------------------------------------------------------------ errors: exit 2, one line naming the input

def check_error(done: subprocess.CompletedProcess, *parts: str) -> None:
    assert done.returncode == 2, f"exit {done.returncode}, stdout {done.stdout!r}, stderr {done.stderr!r}"
    lines = error_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    for part in parts:
        assert part in lines[0], lines[0]


@pytest.mark.slow
def test_error_paths(cli, tmp_path):
    noise = tmp_path / "noise.png"
    cv2.imwrite(str(noise), np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8))
    text = tmp_path / "notes.jpg"
    text.write_text("not an image\n")
    missing = tmp_path / "missing.jpg"
    empty_model = tmp_path / "model"
    empty_model.mkdir()

    check_error(run_cli(cli, missing, noise), f"{missing}: no such file")
    check_error(run_cli(cli, text, text), f"{text}: not a decodable image")
    heic = tmp_path / "IMG_0001.HEIC"
    heic.write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64)
    check_error(run_cli(cli, heic, noise), f"{heic}: HEIC/HEIF image, which this runtime cannot decode")
    # OpenCV 4.6 (Debian 12's) reads no GIF and no animated WebP; the Python runtime's OpenCV 5 reads both.
    from PIL import Image

    picture = Image.open(noise)
    gif, animated = tmp_path / "picture.gif", tmp_path / "animated.webp"
    picture.save(gif)
    picture.save(animated, save_all=True, append_images=[picture.rotate(90)], lossless=True)
    check_error(run_cli(cli, gif, noise), f"{gif}: GIF images are not supported by the C++ runner", "convert to JPEG")
    check_error(run_cli(cli, animated, noise), f"{animated}: animated WebP images are not supported by the C++ runner")
    check_error(run_cli(cli, noise, noise), f"{noise}: no face found")
    check_error(run_cli(cli, noise, noise, "--model", empty_model), f"{empty_model}: not a model folder")
    check_error(run_cli(cli, noise, noise, "--model", tmp_path / "nowhere"), "no such file or folder")
    check_error(run_cli(cli, noise, noise, "--precision", "int4"), "invalid choice: 'int4'")
    # model.json is input: a detector given as a path would load and run any .onnx on the disk.
    traversal = tmp_path / "traversal"
    traversal.mkdir()
    (traversal / "model.fp16.onnx").symlink_to(REPO / "engine" / "models" / "model.fp16.onnx")
    config = json.loads((REPO / "engine" / "models" / "model.json").read_text())
    for name in ("../../../../tmp/elsewhere/det", "/tmp/elsewhere/det", "sub/det"):
        (traversal / "model.json").write_text(json.dumps({**config, "detector": name}))
        check_error(run_cli(cli, noise, noise, "--model", traversal),
                    "detector must be the name of a shipped detector")
    # A model file that is a FIFO is refused by what it is (a reader would block on it), as in Python.
    fifo_model = tmp_path / "fifo_model"
    fifo_model.mkdir()
    os.mkfifo(fifo_model / "model.json")
    check_error(run_cli(cli, noise, noise, "--model", fifo_model), "model.json: is a FIFO (named pipe), not a model.json")
    (fifo_model / "model.json").unlink()
    shutil.copy(REPO / "engine" / "models" / "model.json", fifo_model / "model.json")
    os.mkfifo(fifo_model / "model.int8.onnx")
    check_error(run_cli(cli, noise, noise, "--model", fifo_model), "model.int8.onnx: is a FIFO (named pipe), not an ONNX model")
    # --json: the same line as {"error": ...} on stdout, and never exit 1.
    done = run_cli(cli, missing, noise, "--json")
    check_error(done, str(missing))
    assert json.loads(done.stdout)["error"].startswith(f"{missing}: no such file")


@pytest.mark.slow
def test_mismatched_plan_sidecar(cli, tmp_path):
    """A plan whose sidecar names another TensorRT/GPU is refused by name (only with the TensorRT backend)."""
    info = run_cli(cli, "--version", check_rc=0).stdout
    if "tensorrt" not in info:
        pytest.skip(f"the C++ runner was built without TensorRT ({info.strip()})")
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(REPO / "engine" / "models" / "model.json", model / "model.json")
    (model / "model.int8.plan").write_bytes(b"not a plan")
    (model / "model.int8.plan.json").write_text(json.dumps(
        {"tensorrt_version": "0.0.1", "gpu_name": "No Such GPU", "compute_capability": "1.0", "precision": "int8"}))
    done = run_cli(cli, REPO / "README.md", REPO / "README.md", "--model", model, "--backend", "tensorrt")
    if "no usable CUDA GPU" in done.stderr:
        pytest.skip("TensorRT is built but no GPU answers here")
    check_error(done, "model.int8.plan.json: refusing this TensorRT plan", "built with TensorRT 0.0.1")


@pytest.mark.parametrize("stdout", ["full", "closed"])
def test_a_result_that_cannot_be_written_is_exit_2(cli, photos, stdout):
    """As in Python: a decision written to /dev/full or a closed stdout is exit 2 with one line, never 0/1."""
    if stdout == "full" and not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    cmd = [str(cli), str(photos[0]), str(photos[1]), "--json"]
    if stdout == "full":
        with open("/dev/full", "w") as full:
            done = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    else:
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120,
                              preexec_fn=lambda: os.close(1))
    assert done.returncode == 2, done.stderr
    errors = error_lines(done.stderr)
    assert len(errors) == 1 and ("cannot write the result" in errors[0] or "stdout is closed" in errors[0])


@pytest.mark.parametrize("name", ["\x1b[2J\x1b[31m OK same person \x1b[0m.jpg", "a\u202egpj.exe", "x\x85y.jpg"])
def test_file_names_cannot_repaint_the_error_line(cli, photos, tmp_path, name):
    """As in Python (engine.files.printable): escapes, bidi overrides and C1 controls are shown escaped."""
    from engine.files import printable

    missing = tmp_path / name
    done = run_cli(cli, missing, photos[0], check_rc=2)
    assert not any(ch in done.stderr for ch in "\x1b\u202e\x85")
    assert printable(str(missing)) in done.stderr


def test_dump_outputs_never_overwrite_an_input_or_write_through_a_link(cli, photos, tmp_path):
    """--dump-embeddings naming an input image overwrote the photo; a planted symlink was written through;
    an unwritable target was found after the work. Now: refused before the work, atomic, never via a link."""
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(Path(photos[0]).read_bytes())
    before = photo.read_bytes()
    done = run_cli(cli, "--embed", photo, "--dump-embeddings", photo, check_rc=2)
    assert "is an input image" in done.stderr and photo.read_bytes() == before
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    link = tmp_path / "emb.json"
    link.symlink_to(victim)
    done = run_cli(cli, "--embed", photo, "--dump-embeddings", link, check_rc=2)
    assert "symbolic link" in done.stderr and victim.read_text() == "keep"
    crops = tmp_path / "crops"
    crops.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    done = run_cli(cli, "--embed", photo, "--dump-crops", crops, check_rc=2)
    assert "symbolic link" in done.stderr and not (tmp_path / "elsewhere").exists()
    done = run_cli(cli, "--embed", photo, "--dump-embeddings", tmp_path / "no" / "such" / "e.json", check_rc=2)
    assert "does not exist" in done.stderr and "backend" not in done.stderr  # refused before the model opened
    out = tmp_path / "ok.json"
    run_cli(cli, "--embed", photo, "--dump-embeddings", out, "--dump-crops", tmp_path / "c", check_rc=0)
    assert json.loads(out.read_text())["images"][0]["embedding"] and (tmp_path / "c" / "0.ppm").is_file()
    assert not list(tmp_path.glob(".faceverify-*"))  # no temporary left


@pytest.mark.slow
@pytest.mark.parametrize("kind", TAMPERS)
def test_tampered_folders_are_refused_with_pythons_line(cli, tmp_path, kind):
    """Issue 27, class 1: a changed model file, a file convert did not write, a network changed behind an
    updated digest, or damaged canaries: refused by both runtimes, exit 2, with the same reason."""
    folder = tampered_model(tmp_path / kind, kind)
    a, b = (write_jpeg(tmp_path / f"{n}.jpg", synthetic_face(n, 160)) for n in (1, 2))
    env = {**os.environ, "FAKEAWARE_CACHE_DIR": str(tmp_path / "cache")}
    py = subprocess.run([sys.executable, "-m", "engine.verify", "--model", str(folder), "--backend", "openvino",
                         str(a), str(b)], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    cpp = subprocess.run([str(cli), "--model", str(folder), str(a), str(b)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert py.returncode == 2 and cpp.returncode == 2, (py.stderr, cpp.stderr)
    (py_line,), (cpp_line,) = error_lines(py.stderr), error_lines(cpp.stderr)
    assert py_line.split("error: ", 1)[1] == cpp_line.split("error: ", 1)[1]


def test_canaries_agree_with_python_on_the_bundled_model(cli, tmp_path):
    """The C++ drawing of the canaries is Python's (engine/canary.py): the same worst cosine to 6 decimals."""
    from engine.backends import open_backend

    a, b = (write_jpeg(tmp_path / f"{n}.jpg", synthetic_face(n, 160)) for n in (1, 2))
    done = run_cli(cli, "--json", "--precision", "fp16", a, b)
    cpp = json.loads(done.stdout)["canary_cosine"] if done.stdout.strip() else None
    with open_backend(None, backend="openvino", precision="fp16") as be:
        py = be.canary_cosine
    assert cpp is not None and abs(cpp - py) < 2e-6, (cpp, py, done.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("kind,seed", [("gaussian noise", 778040), ("smooth noise", 779024), ("shapes", 783032)])
def test_a_noise_image_the_detector_fires_on_is_refused_alike(cli, tmp_path, kind, seed):
    """Issue 27, class 3: BlazeFace finds a 'face' in these generated images (seeds found by
    bench.face_gate's sweep); both runtimes refuse them on the second look, with the same line."""
    from bench.face_gate import non_face
    from engine.detect import open_detector

    rgb = non_face(kind, seed)
    detector = open_detector(backend="onnxruntime")
    try:
        assert detector.detect(rgb), "the detector no longer fires on this image: pick another seed"
    finally:
        detector.close()
    noise = tmp_path / "noise.png"
    cv2.imwrite(str(noise), rgb[:, :, ::-1])
    face = write_jpeg(tmp_path / "face.jpg", synthetic_face(1, 160))
    env = {**os.environ, "FAKEAWARE_CACHE_DIR": str(tmp_path / "cache")}
    py = subprocess.run([sys.executable, "-m", "engine.verify", str(noise), str(face)], capture_output=True,
                        text=True, cwd=REPO, env=env, timeout=300)
    cpp = subprocess.run([str(cli), str(noise), str(face)], capture_output=True, text=True, env=env, timeout=120)
    assert py.returncode == 2 and cpp.returncode == 2, (py.stderr, cpp.stderr)
    py_line = [line for line in error_lines(py.stderr) if "noise.png" in line][0]
    cpp_line = [line for line in error_lines(cpp.stderr) if "noise.png" in line][0]
    assert "noise.png: no face found on a second look" in py_line
    assert "noise.png: no face found on a second look" in cpp_line


@pytest.mark.parametrize("name,data", [
    ("float64.tif", "tiff"),
    ("wide.pam", b"P7\nWIDTH 7000\nHEIGHT 7000\nDEPTH 4\nMAXVAL 65535\nTUPLTYPE RGB_ALPHA\nENDHDR\n" + bytes(64)),
])
def test_decoded_bytes_are_bounded_from_the_header_alike(cli, tmp_path, name, data):
    """Issue 27, class 6 in C++: a 1.2 GB float64 TIFF or a 392 MB 16-bit PAM is refused from its header, before
    OpenCV allocates anything, with Python's line."""
    from bench.hostile import tiff_float64

    path = tmp_path / name
    path.write_bytes(tiff_float64(7000, 7000) if data == "tiff" else data)
    face = write_jpeg(tmp_path / "face.jpg", synthetic_face(1, 160))
    env = {**os.environ, "FAKEAWARE_CACHE_DIR": str(tmp_path / "cache")}
    py = subprocess.run([sys.executable, "-m", "engine.verify", str(path), str(face)], capture_output=True,
                        text=True, cwd=REPO, env=env, timeout=300)
    cpp = subprocess.run([str(cli), str(path), str(face)], capture_output=True, text=True, env=env, timeout=120)
    assert py.returncode == 2 and cpp.returncode == 2
    py_line = [line for line in error_lines(py.stderr) if name in line][0].split("error: ", 1)[1]
    cpp_line = [line for line in error_lines(cpp.stderr) if name in line][0].split("error: ", 1)[1]
    assert "MB decoded, over the 200 MB limit" in cpp_line and py_line.split(";")[0] == cpp_line.split(";")[0]


@pytest.mark.data
@pytest.mark.slow
def test_realness_and_looks_fake_match_python_on_real_deepfakes(cli, face_data):
    """DFDC fakes beside the faces they were made from: each runtime's realness per image and looks_fake agree."""
    import csv

    root = face_data / "dfdc-faces"
    if not (root / "faces.csv").is_file():
        pytest.skip(f"DFDC faces not found at {root}")
    with open(root / "faces.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["label"] == "fake"][:6]
    seen_fake = 0
    for row in rows:
        a, b = root / row["made_from"], root / row["file"]
        cpp = run_cli(cli, "--json", a, b)
        py = subprocess.run([sys.executable, "-m", "engine.verify", "--json", str(a), str(b)], capture_output=True,
                            text=True, cwd=REPO, timeout=300)
        if cpp.returncode == 2 or py.returncode == 2:  # no face in a frame: both must say so
            assert cpp.returncode == py.returncode == 2
            continue
        c, p = json.loads(cpp.stdout), json.loads(py.stdout)
        assert c["looks_fake"] == p["looks_fake"] and c["match"] == p["match"]
        assert c["realness"]["image_b"] == pytest.approx(p["realness"]["image_b"], abs=2e-3)
        seen_fake += p["looks_fake"]
    assert seen_fake >= 1, "no fake among six was flagged: the case tests nothing"
