"""training.teacher's batching and worker processes, with a stand-in encoder (dlib is optional)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import synthetic_face, write_jpeg
from training.teacher import embed_training_reals, main


class MeanColourEncoder:
    """Stand-in for DlibFaceEncoder: a descriptor that depends only on the image."""

    def __init__(self):
        self.detected = 0

    def encode(self, images):
        self.detected += len(images)
        return np.stack([np.resize(im.astype(np.float32).mean((0, 1)), 128) for im in images])


@pytest.fixture
def data(tmp_path):
    meta = {}
    for ident in range(3):
        for k in range(4):
            rel = f"{ident:05d}/{k}.jpg"
            write_jpeg(tmp_path / "train" / "images" / rel, synthetic_face(ident * 10 + k, size=48))
            meta[rel] = int(k == 3)  # one fake per identity: never embedded
    (tmp_path / "train" / "meta.json").write_text(json.dumps(meta))
    return tmp_path


def test_workers_share_batches_without_changing_the_output(data, tmp_path):
    one = embed_training_reals(data, tmp_path / "one.npz", batch_size=2, image_size=48, encoder=MeanColourEncoder)
    two = embed_training_reals(data, tmp_path / "two.npz", batch_size=2, image_size=48, workers=2,
                               encoder=MeanColourEncoder)
    assert one == two == {"embedded": 9, "failed": 0, "face_detected": 9}
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert list(a["paths"]) == [f"{i:05d}/{k}.jpg" for i in range(3) for k in range(3)]
    np.testing.assert_array_equal(a["paths"], b["paths"])
    np.testing.assert_array_equal(a["embeddings"], b["embeddings"])
    assert a["embeddings"].shape == (9, 128) and a["embeddings"].dtype == np.float32


def test_unreadable_images_are_counted_not_fatal(data, tmp_path):
    (data / "train" / "images" / "00001" / "0.jpg").write_bytes(b"not a jpeg")
    counts = embed_training_reals(data, tmp_path / "t.npz", batch_size=4, image_size=48, encoder=MeanColourEncoder)
    assert counts == {"embedded": 8, "failed": 1, "face_detected": 8}
    assert "00001/0.jpg" not in set(np.load(tmp_path / "t.npz")["paths"])


def test_cli_rejects_bad_arguments(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(data), "--out", str(tmp_path / "t.npz"), "--workers", "0"])
    assert exc.value.code == 2 and "--workers" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "t.npz")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "t.npz").exists()


def test_a_missing_teacher_fails_once_before_any_worker_starts(data, tmp_path):
    def missing():
        raise RuntimeError("dlib is not installed (pip install dlib-bin face_recognition_models)")

    with pytest.raises(RuntimeError, match="dlib is not installed"):
        embed_training_reals(data, tmp_path / "t.npz", workers=2, encoder=missing)
    assert not (tmp_path / "t.npz").exists()
