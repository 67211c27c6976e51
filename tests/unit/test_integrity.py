"""Model files are what model.json records, or nothing runs (issue 27, class 1; engine/integrity.py).

The same tampered folders are refused by the C++ runner with the same line: test_cpp_runner.py.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, synthetic_face, write_jpeg

from bench.hostile import TAMPERS, tampered_model

from engine.backends import BackendError, open_backend
from engine.contract import ContractError
from engine.integrity import SHIPPED_DETECTORS, file_digest, sha256_file, verified_detector

pytest.importorskip("openvino")

SHIPPED = json.loads((REPO / "engine" / "models" / "model.json").read_text())["extra"]["onnx_sha256"]["fp16"]
PINNED_SUM_150 = 74267469
PINNED_CENTRES_150 = [132, 219, 128, 148, 121, 178, 142, 209]
EXPECTED = {
    "byte-flipped": rf"model\.fp16\.onnx: its SHA-256 [0-9a-f]{{12}}\.\.\. is not the {SHIPPED[:12]}\.\.\. that "
                    r"model\.json records: the file changed after it was made",
    "unrecorded-file": r"model\.fp32\.onnx: model\.json records no SHA-256 for this file",
    "canaries-negated": r"openvino fp16 disagrees with FP32 on this machine \(canary cosine -1\.0000 < 0\.98\)",
    "conv-zeroed-digest-updated": r"openvino fp16 disagrees with FP32 on this machine \(canary cosine 0\.\d{4} < 0\.98\)",
    "canaries-of-another-generator": r"model\.json: its canary record was drawn by another generator \(1, this "
                                     r"runtime draws 2\)",
    "canaries-malformed": r"model\.json: its canary record is malformed",
}


def test_every_tamper_has_an_expected_refusal():
    assert set(EXPECTED) == set(TAMPERS)


@pytest.mark.parametrize("kind", TAMPERS)
def test_a_tampered_model_folder_is_refused_before_any_decision(tmp_path, kind):
    folder = tampered_model(tmp_path / kind, kind)
    a, b = (write_jpeg(tmp_path / f"{n}.jpg", synthetic_face(n, 160)) for n in (1, 2))
    env = {**os.environ, "FAKEAWARE_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "engine.verify", "--model", str(folder), "--backend", "openvino",
                           str(a), str(b), "--json"], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and re.search(EXPECTED[kind], errors[0]), done.stderr
    assert "similarity" not in done.stdout and json.loads(done.stdout)["error"]


def test_a_changed_file_is_refused_even_after_its_original_was_cached(tmp_path, monkeypatch):
    """The compiled blob, contract check and canary answer of the original are in the cache; the same
    path with other bytes of the same size and mtime must not reuse them."""
    monkeypatch.setenv("FAKEAWARE_CACHE_DIR", str(tmp_path / "cache"))
    folder = tampered_model(tmp_path / "m", "canaries-malformed")
    config = json.loads((folder / "model.json").read_text())
    config["extra"]["canary"]["count"] -= 1  # undo: a good folder
    (folder / "model.json").write_text(json.dumps(config))
    with open_backend(folder, backend="openvino") as be:
        assert be.canary_cosine > 0.999 and be.model_digest == config["extra"]["onnx_sha256"]["fp16"]
    onnx_file = folder / "model.fp16.onnx"
    st = onnx_file.stat()
    data = bytearray(onnx_file.read_bytes())
    data[-100] ^= 1
    onnx_file.write_bytes(bytes(data))
    os.utime(onnx_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ContractError, match=f"its SHA-256 .* is not the {SHIPPED[:12]}"):
        open_backend(folder, backend="openvino")


def test_the_shipped_detector_is_the_recorded_one_and_a_changed_one_is_refused(tmp_path):
    from engine.detect import DETECTOR_DIR

    for name, digest in SHIPPED_DETECTORS.items():
        assert sha256_file(DETECTOR_DIR / f"{name}.onnx") == digest
    changed = tmp_path / "blazeface_full_range.onnx"
    data = bytearray((DETECTOR_DIR / "blazeface_full_range.onnx").read_bytes())
    data[1000] ^= 1
    changed.write_bytes(bytes(data))
    with pytest.raises(ContractError, match=r"blazeface_full_range\.onnx: its SHA-256 .* that this release records"):
        verified_detector(changed, "blazeface_full_range")
    with pytest.raises(ContractError, match="detector 'other' has no recorded SHA-256"):
        verified_detector(changed, "other")


def test_the_digest_is_computed_once_per_process_and_again_for_a_rewritten_file(tmp_path, monkeypatch):
    import engine.integrity as integrity

    f = tmp_path / "m.onnx"
    f.write_bytes(b"x" * 1000)
    calls = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda p: calls.append(p) or real(p))
    first = file_digest(f)
    assert file_digest(f) == first and len(calls) == 1
    st = f.stat()
    f.write_bytes(b"y" * 1000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime; the ctime changes
    assert file_digest(f) != first and len(calls) == 2


def test_canary_images_are_fixed_pixels(tmp_path):
    """The drawing is part of the model.json format (generator 2): the C++ runner draws the same.
    These sums pin it; a change here needs a new generator number."""
    from engine.canary import canary_images

    images = canary_images(150)
    assert images.shape == (8, 150, 150, 3) and images.dtype == np.uint8
    assert int(images.astype(np.int64).sum()) == PINNED_SUM_150
    assert [int(v) for v in images[:, 75, 75, 0]] == PINNED_CENTRES_150


def test_a_plan_whose_bytes_are_not_the_sidecars_digest_is_refused(tmp_path):
    from engine.backends.tensorrt_backend import _verified_plan

    plan = tmp_path / "model.fp16.plan"
    blob = b"plan bytes"
    import hashlib

    assert _verified_plan(plan, blob, {"plan_sha256": hashlib.sha256(blob).hexdigest()})
    with pytest.raises(ContractError, match=r"model\.fp16\.plan: its SHA-256 .* that model\.fp16\.plan\.json records"):
        _verified_plan(plan, blob + b"!", {"plan_sha256": hashlib.sha256(blob).hexdigest()})


def test_a_folder_without_canaries_still_opens_but_a_damaged_record_does_not(tmp_path):
    folder = tampered_model(tmp_path / "m", "canaries-malformed")
    config = json.loads((folder / "model.json").read_text())
    config["extra"].pop("canary")
    (folder / "model.json").write_text(json.dumps(config))
    with open_backend(folder, backend="onnxruntime") as be:
        assert getattr(be, "canary_cosine", None) is None
    config["extra"]["canary"] = "garbage"
    (folder / "model.json").write_text(json.dumps(config))
    with pytest.raises(BackendError, match="its canary record is malformed"):
        open_backend(folder, backend="onnxruntime")
