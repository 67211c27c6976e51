"""Detection + alignment: the transform exactly, the template, and the detector on real faces (LFW)."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.align import ARCFACE, REFERENCE_SIZE, align_face, similarity_transform, template_points
from engine.contract import ContractError, ModelConfig
from engine.detect import open_detector, tile_origins
from engine.preprocess import NoFaceError, Preprocessor, decode

from conftest import REPO, write_exif_jpeg

ALIGNED = ModelConfig(input_size=112, align="face", template="arcface")


def _lfw(face_data, name="George_W_Bush", k=1):
    return face_data / "lfw-deepfunneled" / name / f"{name}_{k:04d}.jpg"


def test_similarity_transform_recovers_a_known_similarity():
    src = np.array([[10.0, 20.0], [50.0, 22.0], [30.0, 45.0], [31.0, 70.0]])
    angle, scale, shift = np.deg2rad(25), 1.7, np.array([5.0, -3.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    m = similarity_transform(src, src @ rot.T + shift)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-12)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-10)


def test_similarity_transform_round_trip_and_no_reflection():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (4, 2))
    dst = src @ np.array([[0.8, -0.6], [0.6, 0.8]]).T * 0.5 + [7.0, 11.0]
    fwd, back = similarity_transform(src, dst), similarity_transform(dst, src)
    full = np.vstack([fwd, [0, 0, 1]]) @ np.vstack([back, [0, 0, 1]])
    np.testing.assert_allclose(full, np.eye(3), atol=1e-9)
    # A mirrored point set still gets a rotation (det > 0), never a flip.
    assert np.linalg.det(similarity_transform(src, src * [-1, 1])[:, :2]) > 0


def test_similarity_transform_refuses_coincident_points():
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.ones((4, 2)), np.zeros((4, 2)))


def test_template_scales_with_input_size_and_margin():
    np.testing.assert_allclose(template_points("arcface", REFERENCE_SIZE), ARCFACE)
    np.testing.assert_allclose(template_points("arcface", 224), np.array(ARCFACE) * 2)
    wide = template_points("arcface", 112, margin=1.0)  # twice the field of view: face half the size
    np.testing.assert_allclose(wide - 56, (np.array(ARCFACE) - 56) / 2)
    with pytest.raises(ValueError, match="unknown template"):
        template_points("nope", 112)


def test_align_face_puts_keypoints_on_the_template():
    """Draw dots at known points, warp, and find them where the template says."""
    img = np.zeros((300, 400, 3), np.uint8)
    kps = np.array([[150.0, 120.0], [230.0, 110.0], [195.0, 160.0], [200.0, 200.0]])
    for x, y in kps:
        cv2.circle(img, (int(x), int(y)), 3, (255, 255, 255), -1)
    crop = align_face(img, kps, 112, "arcface")
    target = template_points("arcface", 112)
    for (x, y) in target:
        assert crop[int(round(y)), int(round(x))].min() > 200


def test_model_json_refuses_bad_alignment_fields():
    with pytest.raises(ContractError, match="align"):
        ModelConfig(align="yes")
    with pytest.raises(ContractError, match="template"):
        ModelConfig(align="face", template="nope")
    with pytest.raises(ContractError, match="template"):
        ModelConfig(align="face", template=[[1, 2], [3, 4]])


def test_noise_has_no_face():
    rng = np.random.default_rng(0)
    with pytest.raises(NoFaceError, match="no face found"):
        Preprocessor(ALIGNED).prepare(rng.integers(0, 256, (250, 250, 3), dtype=np.uint8), "noise.png")


def test_detector_finds_lfw_faces_with_keypoints_in_place(face_data):
    files = sorted((face_data / "lfw-deepfunneled").glob("A*/*.jpg"))[:50]
    detector = open_detector(backend="onnxruntime")
    try:
        found = [detector.detect(decode(f.read_bytes(), str(f))) for f in files]
    finally:
        detector.close()
    assert all(found), [str(f) for f, r in zip(files, found) if not r]
    kp = np.array([r[0].keypoints for r in found])  # deep-funneled: faces at the centre, eyes level
    assert np.all((kp[:, 0, 0] < kp[:, 1, 0]) & (kp[:, 3, 1] > kp[:, 0, 1]))
    assert np.abs(kp[:, :4].mean(0) - [[105, 113], [147, 113], [126, 138], [126, 160]]).max() < 8


def test_openvino_and_onnxruntime_detect_the_same(face_data):
    pytest.importorskip("openvino")
    rgb = decode(_lfw(face_data).read_bytes())
    a, b = open_detector(backend="onnxruntime"), open_detector(backend="openvino")
    try:
        fa, fb = a.detect(rgb)[0], b.detect(rgb)[0]
    finally:
        a.close(), b.close()
    assert np.abs(fa.keypoints - fb.keypoints).max() < 0.05


def test_batched_detection_equals_single(face_data):
    files = sorted((face_data / "lfw-deepfunneled").glob("B*/*.jpg"))[:8]
    images = [decode(f.read_bytes()) for f in files]
    detector = open_detector(backend="onnxruntime")
    try:
        batch = detector.detect_batch(images)
        single = [detector.detect(i) for i in images]
    finally:
        detector.close()
    for b, s in zip(batch, single):
        np.testing.assert_allclose(b[0].keypoints, s[0].keypoints, atol=1e-4)


def test_a_face_filling_the_frame_is_found_on_the_zoomed_out_retry(face_data):
    """BlazeFace misses a face that fills the photo (a tight crop); the second pass in a 2x square finds it,
    with keypoints where the full photo put them."""
    rgb = decode(_lfw(face_data).read_bytes())
    detector = open_detector(backend="onnxruntime")
    try:
        whole = detector.detect(rgb)[0]
        x0, y0, x1, y1 = (int(round(v)) for v in whole.box)
        tight = np.ascontiguousarray(rgb[y0:y1, x0:x1])  # the detected box itself
        assert detector._pass([tight], 1) == [[]]  # the case: nothing at 1x
        faces = detector.detect(tight)
    finally:
        detector.close()
    assert len(faces) == 1
    assert np.abs(faces[0].keypoints[:4] - (whole.keypoints[:4] - (x0, y0))).max() < 4  # measured 1.3 px


def test_padded_photo_aligns_to_the_same_crop(face_data):
    rgb = decode(_lfw(face_data).read_bytes())
    padded = cv2.copyMakeBorder(rgb, 300, 300, 300, 300, cv2.BORDER_CONSTANT, value=(128, 128, 128))
    pre = Preprocessor(ALIGNED)
    a, b = pre.prepare(rgb).image.astype(float), pre.prepare(padded).image.astype(float)
    # Measured 8.3 grey levels (keypoints from a 3.4x smaller detector view); another face gives ~40.
    assert np.abs(a - b).mean() < 12


@given(length=st.integers(1, 20_000), side=st.integers(8, 5_000))
def test_tiles_cover_the_length_with_a_quarter_tile_of_overlap(length, side):
    starts = tile_origins(length, side)
    assert starts[0] == 0 and starts == sorted(starts)
    if length <= side:
        assert starts == [0]
    else:
        assert starts[-1] == length - side  # the last tile ends flush with the image
        assert all(b - a <= 0.75 * side + 1 for a, b in zip(starts, starts[1:]))  # + rounding


def _on_canvas(rgb, width, height, x, y):
    canvas = np.full((height, width, 3), 128, np.uint8)
    canvas[y:y + rgb.shape[0], x:x + rgb.shape[1]] = rgb
    return canvas


@pytest.mark.parametrize("width,height,x,y", [(1600, 1200, 700, 500), (4000, 3000, 2900, 1800), (6000, 4500, 10, 4000)])
def test_small_face_in_a_large_photo_is_found_and_aligned_like_the_photo(face_data, width, height, x, y):
    """A 250 px LFW photo inside a large frame: the whole frame at the detector's 192 px finds
    no face from 3000 px up (tiles do), and its keypoints strayed 10-40 px (refinement mends them)."""
    rgb = decode(_lfw(face_data).read_bytes())
    pre = Preprocessor(ALIGNED)
    alone = pre.prepare(rgb)
    framed = pre.prepare(_on_canvas(rgb, width, height, x, y))
    assert np.abs(framed.face.keypoints[:4] - alone.face.keypoints[:4] - (x, y)).max() < 6  # measured 0.4-3.5
    # Measured 2.5-7.8 grey levels; before refinement 8-40 (another face gives ~40).
    assert np.abs(framed.image.astype(float) - alone.image).mean() < 12


def test_small_face_warns_and_several_faces_take_the_largest(face_data):
    rgb = decode(_lfw(face_data).read_bytes())
    pre = Preprocessor(ALIGNED)
    small = pre.prepare(cv2.resize(rgb, (60, 60), interpolation=cv2.INTER_AREA), "small.jpg")
    assert any("face is small" in w for w in small.warnings)
    two = np.zeros((300, 600, 3), np.uint8)
    two[25:275, 0:250] = rgb
    two[100:200, 400:500] = cv2.resize(rgb, (100, 100), interpolation=cv2.INTER_AREA)  # 0.4x the other
    got = pre.prepare(two, "two.jpg")
    assert got.faces == 2 and any("2 faces" in w for w in got.warnings)
    assert got.face.box[0] < 250  # the big one on the left (the small one is under half its size)


def test_rotated_face_is_reported_not_misaligned(face_data):
    rgb = decode(_lfw(face_data).read_bytes())
    for turn in (-1, 1):  # the eye-line rule alone let the anticlockwise turn through (scored as a stranger)
        with pytest.raises(NoFaceError, match="no (upright )?face found"):
            Preprocessor(ALIGNED).prepare(np.ascontiguousarray(np.rot90(rgb, turn)), "rot.jpg")


@pytest.mark.parametrize("degrees, upright", [(0, True), (30, True), (-44, True), (-46, False), (60, False),
                                              (90, False), (-90, False)])
def test_a_face_tilted_past_45_degrees_is_not_upright(degrees, upright):
    from engine.detect import Face

    # eyes 40 px apart, mouth 45 px below their midpoint, the whole face turned about its centre
    points = np.array([[-20, -20], [20, -20], [0, 0], [0, 25], [-30, -15], [30, -15]], np.float64)
    a = np.radians(degrees)
    turned = points @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) + 100
    face = Face((50.0, 50.0, 150.0, 150.0), 0.9, turned.astype(np.float32))
    assert face.eye_line_ok  # in its own frame every turn looks like a face
    assert face.upright is upright and abs(face.tilt - abs(degrees)) < 1e-3


def test_training_calibration_and_runtime_crops_are_byte_identical(face_data, tmp_path):
    """The loader, calibration, the gate and the Embedder all go through Preprocessor.load."""
    from convert.calibration import load_calibration_images
    from training.data import ImageCache

    path = _lfw(face_data)
    runtime = Preprocessor(ALIGNED).load(path).image
    train = ImageCache([str(path)], 112, enabled=False, preprocessor=Preprocessor(ALIGNED))[0]
    root = path.parents[1]
    rows = [type("Row", (), {"path": f"{path.parent.name}/{path.name}"})()]
    calib = load_calibration_images(rows, root, 112, config=ALIGNED)[0]
    assert np.array_equal(runtime, train) and np.array_equal(runtime, calib)


def _verify(*args):
    proc = subprocess.run([sys.executable, "-m", "engine.verify", *map(str, args), "--json", "--no-progress"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_cli_noise_exits_2_and_padded_photo_matches(face_data, tmp_path):
    rng = np.random.default_rng(1)
    for name in ("n1.png", "n2.png"):
        cv2.imwrite(str(tmp_path / name), rng.integers(0, 256, (250, 250, 3), dtype=np.uint8))
    code, out, _ = _verify(tmp_path / "n1.png", tmp_path / "n2.png")
    assert code == 2 and "no face found" in out["error"]
    src = _lfw(face_data)
    padded = tmp_path / "padded.jpg"
    cv2.imwrite(str(padded), cv2.copyMakeBorder(cv2.imread(str(src)), 300, 300, 300, 300,
                                                cv2.BORDER_CONSTANT, value=(128, 128, 128)))
    code, out, _ = _verify(src, padded)
    assert code == 0 and out["match"] is True and out["detection"]["image_b"]["faces"] == 1


def test_training_config_carries_the_alignment_into_model_json():
    from training.config import ConfigError, TrainConfig, validate

    cfg = TrainConfig(align="face", align_template="lfw-centre", align_margin=0.25)
    model = cfg.model_config()
    assert (model.align, model.template, model.margin) == ("face", "lfw-centre", 0.25)
    for bad, match in ((dict(align="yes"), "align"), (dict(align_template="x"), "align_template"),
                       (dict(align_margin=-1.0), "align_margin")):
        with pytest.raises(ConfigError, match=match):
            validate(TrainConfig(**bad))


def test_detector_onnx_matches_its_anchor_layout():
    """The shipped ONNX has the anchor count convert.detector's rules give (full range: 48x48, one per cell)."""
    from convert.detector import VALUES, VARIANTS, anchor_centres
    from engine.detect import _io_shape, detector_path

    size, width = _io_shape(detector_path())
    _, want_size, layers = VARIANTS["full_range"]
    anchors = anchor_centres(want_size, layers)
    assert size == want_size and width == len(anchors) * VALUES == 2304 * 17
    assert anchors.min() > 0 and anchors.max() < 1
    assert len(anchor_centres(*VARIANTS["short_range"][1:])) == 896  # MediaPipe's short-range count


def test_datasets_check_faces_lists_images_without_a_face(face_data, tmp_path, capsys):
    import shutil

    from engine.datasets import main

    for who, src in (("alice", _lfw(face_data)), ("bob", _lfw(face_data, "Tony_Blair"))):
        (tmp_path / who).mkdir()
        shutil.copy(src, tmp_path / who / "1.jpg")
    cv2.imwrite(str(tmp_path / "bob" / "2.png"), np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8))
    assert main(["identity-folders", str(tmp_path), "--check-faces"]) == 0
    out, err = capsys.readouterr()
    assert "2 of 3 images with a usable face" in out and "bob/2.png: no face found" in err


def test_cli_align_none_refuses_crops_without_a_face(face_data, tmp_path):
    """--align none centre-crops (the contract for pre-aligned data) but still needs a face in the crop:
    two noise images scored 0.947, "same person", before (issue 27, class 3)."""
    rng = np.random.default_rng(2)
    for name in ("n1.png", "n2.png"):
        cv2.imwrite(str(tmp_path / name), rng.integers(0, 256, (250, 250, 3), dtype=np.uint8))
    code, out, err = _verify(tmp_path / "n1.png", tmp_path / "n2.png", "--align", "none")
    assert code == 2 and "n1.png: no face found in the crop (--align none is for face crops)" in err
    code, out, err = _verify(_lfw(face_data), _lfw(face_data), "--align", "none")
    assert code == 0 and "detection" not in out and "alignment none" in err


def test_warmed_detectors_go_one_per_thread_and_close_with_the_preprocessor():
    import threading

    pre = Preprocessor(ModelConfig(align="face"))
    pre.warm(2)
    warmed = list(pre._spare)
    assert len(warmed) == 2
    taken = []
    for _ in range(3):  # the third thread finds no spare and opens its own
        t = threading.Thread(target=lambda: taken.append(pre.detector))
        t.start()
        t.join()
    assert len({id(d) for d in taken}) == 3 and {id(d) for d in warmed} <= {id(d) for d in taken}
    assert not pre._spare
    pre.close()
    assert all(d.backend.closed for d in taken)
    unaligned = Preprocessor(ModelConfig(align="none"))
    unaligned.warm(2)  # nothing to open: no detector without alignment
    assert not unaligned._opened and not unaligned._spare


def test_cli_phone_photo_turned_by_exif_matches_the_upright_one(face_data, tmp_path):
    """A photo stored sideways with an EXIF orientation (as phones save them) is the same person."""
    src = _lfw(face_data)
    turned = write_exif_jpeg(tmp_path / "phone.jpg", decode(src.read_bytes()), 6)
    code, out, _ = _verify(src, turned)
    assert code == 0 and out["match"] is True and out["similarity"] > 0.8  # the image itself: 1.0 less JPEG


def test_cli_small_face_in_a_12_megapixel_photo_matches(face_data, tmp_path):
    """Before tiling, this photo was 'no face found' (exit 2)."""
    src = _lfw(face_data)
    big = tmp_path / "group.jpg"
    cv2.imwrite(str(big), _on_canvas(cv2.imread(str(src)), 4000, 3000, 2900, 1800), [cv2.IMWRITE_JPEG_QUALITY, 95])
    code, out, _ = _verify(src, big)
    assert code == 0 and out["match"] is True
