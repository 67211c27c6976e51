"""Calibration manifest: deterministic, identity-stratified, fakes included, never the test split."""
from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import synthetic_face, write_jpeg
from convert.calibration import (CalibrationError, CalibrationImage, load_calibration_images, main,
                                 make_manifest, read_manifest, sample_calibration)
from engine.datasets import Sample
from engine.preprocess import load_image


def make_dataset(root: Path, identities: int = 30, reals: int = 4, fakes: int = 2, test_ids: int = 5) -> Path:
    """Kryptonite layout: train/ (reals + fakes per identity) and a test/ pair folder of other identities."""
    meta = {}
    for ident in range(identities):
        for k in range(reals + fakes):
            rel = f"{ident:06d}/{k}.jpg"
            write_jpeg(root / "train" / "images" / rel, synthetic_face(ident * 10 + k, 24))
            meta[rel] = int(k >= reals)
    (root / "train" / "meta.json").write_text(json.dumps(meta))
    rows = ["pair_id,label,type,attack"]
    for p in range(test_ids):
        pid = f"{p:08d}"
        for j in (0, 1):
            write_jpeg(root / "test" / "images" / pid / f"{j}.jpg", synthetic_face(9000 + p * 2 + j, 24))
        rows.append(f"{pid},0,impostor,")
    (root / "test" / "pairs.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("kryptonite"))


def fake_samples(identities: int, reals: int, fakes: int) -> list[Sample]:
    return [Sample(Path(f"train/images/{i:04d}/{k}.jpg"), f"{i:04d}", k >= reals)
            for i in range(identities) for k in range(reals + fakes)]


def test_sample_is_stratified_over_identities_with_the_fake_share():
    samples = fake_samples(identities=200, reals=5, fakes=5)
    picked = sample_calibration(samples, count=500, fake_share=0.2, seed=0)
    assert len(picked) == 500 and len({s.path for s in picked}) == 500
    real = [s for s in picked if not s.is_fake]
    fake = [s for s in picked if s.is_fake]
    assert len(fake) == 100 and len(real) == 400
    # 400 reals over 200 identities: every identity gives exactly 2 before any gives a third.
    assert set(collections.Counter(s.identity for s in real).values()) == {2}
    # 100 fakes: 100 different identities.
    assert len({s.identity for s in fake}) == 100


def test_sample_is_deterministic_and_order_independent():
    samples = fake_samples(identities=80, reals=4, fakes=2)
    a = sample_calibration(samples, count=120, fake_share=0.25, seed=3)
    b = sample_calibration(list(reversed(samples)), count=120, fake_share=0.25, seed=3)
    c = sample_calibration(samples, count=120, fake_share=0.25, seed=4)
    assert a == b
    assert a != c


def test_too_few_fakes_are_topped_up_with_reals_and_errors():
    samples = fake_samples(identities=10, reals=5, fakes=1)
    picked = sample_calibration(samples, count=40, fake_share=0.5, seed=0)
    assert sum(s.is_fake for s in picked) == 10 and len(picked) == 40
    with pytest.raises(CalibrationError, match="only 60"):
        sample_calibration(samples, count=61)
    with pytest.raises(CalibrationError, match="fake share"):
        sample_calibration(samples, count=10, fake_share=1.5)


def test_manifest_from_training_images_only(dataset, tmp_path):
    out = tmp_path / "calib" / "manifest.csv"
    rows = make_manifest(dataset, out, count=60, fake_share=0.2, seed=0)
    assert out.read_text().splitlines()[0] == "path,identity,is_fake"
    assert read_manifest(out) == rows
    assert len(rows) == 60 and sum(r.is_fake for r in rows) == 12
    meta = json.loads((dataset / "train" / "meta.json").read_text())
    for r in rows:
        assert r.path.startswith("train/images/")  # relative to the data root, never test/
        assert meta[r.path.removeprefix("train/images/")] == int(r.is_fake)
        assert r.identity == r.path.split("/")[2]
    test_files = {p.relative_to(dataset).as_posix() for p in (dataset / "test").rglob("*.jpg")}
    assert not test_files & {r.path for r in rows}
    # deterministic: the same command writes the same bytes
    again = tmp_path / "again.csv"
    make_manifest(dataset, again, count=60, fake_share=0.2, seed=0)
    assert again.read_bytes() == out.read_bytes()


def test_loader_uses_the_shared_preprocessing(dataset, tmp_path):
    out = tmp_path / "m.csv"
    rows = make_manifest(dataset, out, count=8, seed=1)
    images = load_calibration_images(read_manifest(out), dataset, 32, progress=False)
    assert images.dtype == np.uint8 and images.shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(images[3], load_image(dataset / rows[3].path, 32))
    tight = load_calibration_images(read_manifest(out), dataset, 32, crop_fraction=0.5, progress=False)
    np.testing.assert_array_equal(tight[3], load_image(dataset / rows[3].path, 32, 0.5))
    assert not np.array_equal(tight[3], images[3])


@pytest.mark.parametrize("text, message", [
    ("", "empty calibration manifest"),
    ("path,identity,is_fake\n", "empty calibration manifest"),
    ("path,identity\na.jpg,1\n", "missing column"),
    ("path,identity,is_fake\na.jpg,1,yes\n", r"m.csv:2: is_fake must be 0 or 1"),
    ("path,identity,is_fake\n../../etc/passwd,1,0\n", "escapes"),
    ("path,identity,is_fake\n/etc/passwd,1,0\n", "absolute path"),
])
def test_bad_manifests(tmp_path, text, message):
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(CalibrationError, match=message):
        read_manifest(path)


def test_missing_manifest_and_image(tmp_path, dataset):
    with pytest.raises(CalibrationError, match="no such calibration manifest"):
        read_manifest(tmp_path / "nope.csv")
    from engine.preprocess import ImageError

    with pytest.raises(ImageError, match="missing.jpg"):
        load_calibration_images([CalibrationImage("train/images/missing.jpg", "x", False)], dataset, 32,
                                progress=False)


def test_cli(dataset, tmp_path, capsys):
    out = tmp_path / "manifest.csv"
    assert main(["--data", str(dataset), "--out", str(out), "--count", "30", "--seed", "2"]) == 0
    assert "30 images (6 fakes)" in capsys.readouterr().out
    assert len(read_manifest(out)) == 30
    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "meta.json" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()
    assert main(["--data", str(dataset), "--out", str(tmp_path / "y.csv"), "--count", "1000"]) == 2
    assert "only 180" in capsys.readouterr().err


def test_images_without_a_face_are_left_out_of_calibration(dataset, tmp_path, monkeypatch, capsys):
    """With alignment on, a manifest image where no face is found has nothing to calibrate: skipped, counted."""
    from engine.preprocess import NoFaceError, Preprocessor

    out = tmp_path / "m.csv"
    rows = make_manifest(dataset, out, count=8, seed=1)
    real_load = Preprocessor.load
    faceless = str(dataset / rows[2].path)

    def load(self, path, *args, **kwargs):
        if str(path) == faceless:
            raise NoFaceError(f"{path}: no face found")
        return real_load(self, path, *args, **kwargs)

    monkeypatch.setattr(Preprocessor, "load", load)
    images = load_calibration_images(read_manifest(out), dataset, 32, progress=False)
    assert images.shape == (7, 32, 32, 3)
    assert "left out 1 of 8 images with no face found" in capsys.readouterr().err
    monkeypatch.setattr(Preprocessor, "load", lambda self, path, *a, **k: (_ for _ in ()).throw(NoFaceError("x")))
    with pytest.raises(CalibrationError, match="no calibration image has a face"):
        load_calibration_images(read_manifest(out), dataset, 32, progress=False)
