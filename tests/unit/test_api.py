"""The Python API (engine.api, exported by engine): one object from a photo to a decision."""
from __future__ import annotations

import re
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import REPO, synthetic_face, write_jpeg

pytest.importorskip("openvino")

import engine  # noqa: E402
from engine import FaceVerifier, ImageError, ModelError, NoFaceError, Verification  # noqa: E402


@pytest.fixture(scope="module")
def fv():
    with FaceVerifier() as verifier:
        yield verifier


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faces")
    return [write_jpeg(folder / f"{k}.jpg", synthetic_face(k, 160)) for k in range(3)]


def test_verify_gives_a_decision_with_its_evidence(fv, faces):
    same = fv.verify(faces[0], faces[0])
    assert isinstance(same, Verification) and same.match and same.similarity == pytest.approx(1.0, abs=1e-5)
    assert same.threshold == fv.threshold and len(same.realness) == 2 and same.faces[0] is not None
    other = fv.verify(faces[0], faces[1])
    assert other.similarity < same.similarity and other.match == (other.similarity >= fv.threshold)
    assert other.looks_fake == (not other.match and min(other.realness) < 0)


def test_paths_bytes_and_arrays_are_the_same_image(fv, faces):
    import cv2

    rgb = cv2.cvtColor(cv2.imread(str(faces[2])), cv2.COLOR_BGR2RGB)
    emb = fv.embed([faces[2], faces[2].read_bytes(), rgb, str(faces[2])])
    assert emb.shape == (4, fv._backend.embedding_dim) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    assert np.allclose(emb, emb[0], atol=1e-5)
    assert fv.embed(faces[2]).shape == (1, emb.shape[1]) and fv.embed(rgb).shape == (1, emb.shape[1])  # one image
    assert fv.embed([]).shape == (0, emb.shape[1])
    assert fv.compare(emb[0], emb[1]) == pytest.approx(1.0, abs=1e-5)


def test_errors_are_typed_exceptions_naming_the_image(fv, faces, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    with pytest.raises(NoFaceError, match=r"^image 0: no face found"):
        fv.verify(noise, faces[0])
    with pytest.raises(ImageError, match=r"^image 1: not a decodable image"):
        fv.embed([faces[0], b"not an image"])
    with pytest.raises(ImageError, match=r"expected a uint8 \(H, W, 3\) RGB array, got float32"):
        fv.embed(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ImageError, match="no such file"):
        fv.verify(tmp_path / "missing.jpg", faces[0])
    with pytest.raises(ImageError, match="expected a path, encoded bytes or a uint8 RGB array, got int"):
        fv.embed([3])
    with pytest.raises(ValueError, match="same length"):
        fv.compare(np.ones(3), np.ones(4))
    assert issubclass(NoFaceError, ImageError)


def test_a_model_that_cannot_be_used_is_a_model_error(tmp_path):
    from bench.hostile import tampered_model

    with pytest.raises(ModelError, match="no such file or folder"):
        FaceVerifier(tmp_path / "nowhere")
    with pytest.raises(ModelError, match="its SHA-256"):
        FaceVerifier(tampered_model(tmp_path / "m", "byte-flipped"))
    with pytest.raises(ValueError, match=r"threshold must be a cosine similarity in \[-1, 1\]"):
        FaceVerifier(threshold=2)


def test_calls_from_several_threads_are_serialised(fv, faces):
    results, errors = [], []

    def work():
        try:
            results.append(fv.verify(faces[0], faces[1]).similarity)
        except Exception as exc:  # pragma: no cover - a failure is reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4 and max(results) - min(results) < 1e-6


def test_import_engine_stays_light_and_help_names_the_api():
    done = subprocess.run([sys.executable, "-c", "import sys, engine; print('cv2' in sys.modules, "
                           "'engine.backends' in sys.modules)"], capture_output=True, text=True, cwd=REPO)
    assert done.stdout.split() == ["False", "False"]
    assert "FaceVerifier" in engine.__doc__ and set(engine.__all__) <= set(dir(engine))


def test_the_readme_python_example_runs_as_printed(faces, tmp_path):
    """The README's Python block, with A.jpg and B.jpg made here (two drawings of the same face)."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert "FaceVerifier" in block
    (tmp_path / "A.jpg").write_bytes(faces[0].read_bytes())
    (tmp_path / "B.jpg").write_bytes(faces[0].read_bytes())
    done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"1\.000 same person \n", done.stdout), done.stdout


def test_the_cli_and_the_api_decide_alike(fv, faces):
    """One rule (engine.api.decide) behind `python -m engine.verify --json` and FaceVerifier.verify."""
    import json

    done = subprocess.run([sys.executable, "-m", "engine.verify", str(faces[0]), str(faces[1]), "--json"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    cli = json.loads(done.stdout)
    api = fv.verify(faces[0], faces[1])
    assert cli["similarity"] == pytest.approx(api.similarity, abs=1e-6) and cli["match"] == api.match
    assert cli["looks_fake"] == api.looks_fake
    assert (cli["realness"]["image_a"], cli["realness"]["image_b"]) == pytest.approx(api.realness, abs=1e-4)
    assert done.returncode == (0 if api.match else 1)


def test_decide_refuses_a_similarity_that_is_not_a_number():
    from engine.api import decide

    with pytest.raises(ValueError):
        decide(np.array([[0.0, 0.0], [1.0, 0.0]]), 0.5, 0.0)
    verdict = decide(np.array([[1.0, 0.0], [0.6, 0.8]]), 0.5, 0.0)
    assert verdict.similarity == pytest.approx(0.6) and verdict.match and not verdict.looks_fake
