"""``python -m engine.verify``: exit codes, JSON, submissions (sorted, complete, atomic), evaluations, bad input."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, synthetic_face, write_jpeg
from engine.verify import FAILED_PAIR_SCORE, main
from tiny_model import tiny_model_folder


@pytest.fixture(scope="module")
def model():
    return str(tiny_model_folder())


def make_pairs(root: Path, n: int, labels: bool = True, ids=None) -> Path:
    """A Kryptonite test_public-style folder; odd pairs show the same synthetic face twice."""
    ids = ids or [f"{i * 7 + 3:08d}" for i in range(n)]  # gaps: sorting must not assume 0..n-1
    rows = ["pair_id,label,type,attack"]
    for k, pid in enumerate(ids):
        same = k % 2 == 1
        write_jpeg(root / "images" / pid / "0.jpg", synthetic_face(k, size=40))
        write_jpeg(root / "images" / pid / "1.jpg", np.roll(synthetic_face(k if same else 500 + k, size=40), 1, 0))
        rows.append(f"{pid},{int(same)},{'genuine' if same else 'impostor'},")
    if labels:
        (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("pairs"), 12)


def run(capsys, *argv):
    code = main([*map(str, argv), "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- two images


def test_two_images_exit_codes_follow_the_decision(capsys, model, pairs_dir):
    a, b = pairs_dir / "images/00000003/0.jpg", pairs_dir / "images/00000003/1.jpg"
    code, out, err = run(capsys, a, b, "--model", model, "--threshold", "-1")
    assert code == 0 and "decision:   same person" in out
    assert "backend openvino" in err or "backend onnxruntime" in err  # the automatic choice is printed
    code, out, _ = run(capsys, a, b, "--model", model, "--threshold", "1")
    assert code == 1 and "different people" in out


def test_two_images_json(capsys, model, pairs_dir):
    a, b = pairs_dir / "images/00000010/0.jpg", pairs_dir / "images/00000010/1.jpg"
    code, out, _ = run(capsys, a, b, "--model", model, "--json", "--backend", "onnxruntime", "--precision", "fp32")
    info = json.loads(out)
    assert code == (0 if info["match"] else 1)
    assert info["threshold"] == 0.5  # from model.json
    assert info["match"] == (info["similarity"] >= 0.5)
    assert -1.0 <= info["similarity"] <= 1.0
    assert (info["backend"], info["precision"], info["model"]) == ("onnxruntime", "fp32", model)
    assert info["executed_precision"] == "fp32"  # what the runtime runs, not only what was asked for
    assert info["image_a"] == str(a)


def test_same_image_twice_is_similarity_one(capsys, model, pairs_dir):
    a = pairs_dir / "images/00000003/0.jpg"
    code, out, _ = run(capsys, a, a, "--model", model, "--json")
    assert code == 0 and json.loads(out)["similarity"] == pytest.approx(1.0, abs=1e-6)


def test_error_exit_code_and_json_error(capsys, model, tmp_path, pairs_dir):
    code, out, err = run(capsys, tmp_path / "nope.jpg", pairs_dir / "images/00000003/0.jpg", "--model", model,
                         "--json")
    assert code == 2
    assert json.loads(out) == {"error": f"{tmp_path / 'nope.jpg'}: no such file"}
    assert f"error: {tmp_path / 'nope.jpg'}: no such file" in err
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    code, _, err = run(capsys, text, pairs_dir / "images/00000003/0.jpg", "--model", model)
    assert code == 2 and f"{text}: not a decodable image" in err


def test_one_colour_image_is_refused_and_1x1_refused(capsys, model, tmp_path, pairs_dir):
    import cv2

    flat, dot = tmp_path / "flat.png", tmp_path / "dot.png"
    cv2.imwrite(str(flat), np.full((50, 50, 3), 90, np.uint8))
    cv2.imwrite(str(dot), np.full((1, 1, 3), 90, np.uint8))
    face = pairs_dir / "images/00000003/0.jpg"
    # align none (the tiny model's contract): nothing to verify in one colour, so no score at all
    code, out, _ = run(capsys, flat, face, "--model", model, "--json")
    assert code == 2 and json.loads(out) == {"error": f"{flat}: blank image (one colour throughout): no face to verify"}
    code, _, err = run(capsys, flat, face, "--model", model, "--align", "face")
    assert code == 2 and f"{flat}: no face found" in err
    code, _, err = run(capsys, dot, face, "--model", model)
    assert code == 2 and "1x1, smaller than 8px" in err


def test_model_that_is_not_onnx_or_plan(capsys, tmp_path, pairs_dir):
    face = pairs_dir / "images/00000003/0.jpg"
    fake = tmp_path / "model.onnx"
    fake.write_text("definitely not protobuf")
    code, _, err = run(capsys, face, face, "--model", fake)
    assert code == 2 and f"{fake}: not a readable ONNX model" in err
    other = tmp_path / "weights.pt"
    other.write_bytes(b"\x00" * 10)
    code, _, err = run(capsys, face, face, "--model", other)
    assert code == 2 and "not an ONNX file (.onnx), TensorRT plan" in err
    code, _, err = run(capsys, face, face, "--model", tmp_path / "missing_dir")
    assert code == 2 and "no such file or folder" in err


def test_no_model_and_no_bundled_model_says_how_to_make_one(capsys, monkeypatch, tmp_path, pairs_dir):
    monkeypatch.setattr("engine.backends.default_model_dir", lambda: tmp_path / "models")
    face = pairs_dir / "images/00000003/0.jpg"
    code, _, err = run(capsys, face, face)
    assert code == 2 and "python -m convert" in err


def test_no_threshold_anywhere_is_an_error_after_printing_the_similarity(capsys, model, pairs_dir):
    onnx = Path(model) / "model.fp32.onnx"
    bare = pairs_dir.parent / "bare.onnx"  # a lone ONNX file has no model.json, so no threshold
    bare.write_bytes(onnx.read_bytes())
    face = pairs_dir / "images/00000003/0.jpg"
    code, out, err = run(capsys, face, face, "--model", bare, "--json")
    assert code == 2 and json.loads(out)["match"] is None and "pass --threshold" in err


@pytest.mark.parametrize("argv, message", [
    ([], "give exactly one of"),
    (["a.jpg"], "two images are needed"),
    (["a.jpg", "b.jpg", "--pairs", "x"], "give exactly one of"),
    (["--lfw", "x"], "--lfw DIR and --lfw-pairs FILE go together"),
    (["a.jpg", "b.jpg", "--out", "s.csv"], "--out writes a submission for --pairs"),
    (["a.jpg", "b.jpg", "--threshold", "nan"], "--threshold must be a cosine similarity in [-1, 1], got nan"),
    (["a.jpg", "b.jpg", "--threshold", "5"], "--threshold must be a cosine similarity in [-1, 1], got 5.0"),
    (["--pairs", "x", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--pairs", "x", "--lfw-folds", "1"], "--lfw-folds goes with --lfw"),
    (["", "b.jpg"], "argument IMG_A: an empty path names no file"),  # was: '.: is a directory'
    (["a.jpg", "b.jpg", "--model", ""], "argument --model: an empty path names no file"),
    (["--pairs", "x", "--workers", "100000"], "--workers must be <= 64, got 100000"),  # 3 GB in 25 s before
    (["--lfw", "x", "--lfw-pairs", "y", "--bootstrap", "100000000"], "--bootstrap must be in [0, 100000]"),
])
def test_bad_flag_combinations(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("engine.verify: error:")]


def _strict_json(text: str):
    """json.loads that refuses NaN/Infinity, as strict JSON readers do."""
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name} in {text!r}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("exc, code", [(ZeroDivisionError("float division by zero"), 2),
                                       (MemoryError(), 2), (KeyboardInterrupt(), 130)],
                         ids=["bug", "memory", "ctrl-c"])
@pytest.mark.parametrize("mode", ["images", "pairs"])
def test_any_failure_exits_2_with_one_line_and_json(capsys, monkeypatch, model, pairs_dir, exc, code, mode):
    def boom(self, paths, desc=""):
        raise exc

    monkeypatch.setattr("engine.embedder.Embedder.embed_paths", boom)
    a, b = pairs_dir / "images/00000003/0.jpg", pairs_dir / "images/00000003/1.jpg"
    args = [a, b] if mode == "images" else ["--pairs", pairs_dir]
    got, out, err = run(capsys, *args, "--model", model, "--json")
    assert got == code  # never 1: in two-image mode that means "not the same person"
    assert "Traceback" not in err and len(_error_lines(err)) == 1
    message = _strict_json(out)["error"]
    assert list(_strict_json(out)) == ["error"] and "\n" not in message
    assert message == "interrupted" if code == 130 else str(a if mode == "images" else pairs_dir) in message


@pytest.mark.parametrize("value", ['"0.5"', "[0.5]", "true", "NaN", "5.0", "Infinity"])
def test_bad_threshold_in_model_json_is_refused_naming_file_and_key(capsys, tmp_path, pairs_dir, value):
    from tiny_model import copy_model

    folder = copy_model(tmp_path / "m")
    config = json.loads((folder / "model.json").read_text())
    text = json.dumps(config).replace('"threshold": 0.5', f'"threshold": {value}')
    assert text != json.dumps(config)
    (folder / "model.json").write_text(text)
    face = pairs_dir / "images/00000003/0.jpg"
    code, out, err = run(capsys, face, face, "--model", folder, "--json")
    assert code == 2 and "Traceback" not in err
    message = _strict_json(out)["error"]
    assert message.startswith(f"{folder / 'model.json'}: threshold must be") and "[-1, 1]" in message


@pytest.mark.parametrize("bad", [np.nan, 0.0], ids=["nan", "zero"])
def test_non_finite_similarity_is_an_error_never_nan_json(capsys, monkeypatch, model, pairs_dir, tmp_path, bad):
    from engine.backends.onnxruntime_backend import OnnxRuntimeBackend

    real = OnnxRuntimeBackend._infer  # the embedder's answers only; the face detector runs on ORT too
    monkeypatch.setattr(OnnxRuntimeBackend, "_infer", lambda self, batch: np.full((len(batch), 16), bad, np.float32)
                        if self.embedding_dim == 16 else real(self, batch))
    a, b = pairs_dir / "images/00000003/0.jpg", pairs_dir / "images/00000003/1.jpg"
    code, out, err = run(capsys, a, b, "--model", model, "--backend", "onnxruntime", "--json")
    assert code == 2 and "similarity is nan" in _strict_json(out)["error"]
    code, out, err = run(capsys, "--pairs", pairs_dir, "--model", model, "--backend", "onnxruntime", "--json",
                         "--out", tmp_path / "sub.csv", "--bootstrap", "0")
    assert code == 2 and "similarity is nan" in _strict_json(out)["error"] and len(_error_lines(err)) == 1
    assert not (tmp_path / "sub.csv").exists()


@pytest.mark.parametrize("argv, message", [
    (["a.jpg", "b.jpg", "--threshold", "abc"], "argument --threshold: invalid float value: 'abc'"),
    (["a.jpg", "b.jpg", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["a.jpg", "b.jpg", "--workers", "-1"], "--workers must be >= 1"),
    (["a.jpg", "b.jpg", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_argument_errors_are_json_too(capsys, argv, message):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 2 and message in _strict_json(out)["error"] and len(_error_lines(err)) == 1


def test_batch_size_over_the_cpu_limit_is_refused_before_the_backend_opens(capsys, model, pairs_dir):
    from engine.verify import MAX_CPU_BATCH

    face = pairs_dir / "images/00000003/0.jpg"
    code, _, err = run(capsys, face, face, "--model", model, "--backend", "onnxruntime",
                       "--batch-size", MAX_CPU_BATCH + 1)
    assert code == 2 and f"--batch-size {MAX_CPU_BATCH + 1} is over the limit for the onnxruntime backend" in err
    assert "backend onnxruntime (" not in err  # refused before opening it, let alone embedding


def test_batch_size_over_what_the_opened_backend_takes_is_refused(capsys, monkeypatch, model, pairs_dir):
    import engine.backends

    real = engine.backends.open_backend

    def capped(*args, max_batch=None, **kw):  # a backend whose limit is its own, like a plan's profile
        return real(*args, max_batch=4, **kw)

    monkeypatch.setattr(engine.backends, "open_backend", capped)
    monkeypatch.setattr("engine.embedder.Embedder.embed_paths", lambda *a, **k: pytest.fail("embedded"))
    face = pairs_dir / "images/00000003/0.jpg"
    code, _, err = run(capsys, face, face, "--model", model, "--backend", "onnxruntime", "--batch-size", 8)
    assert code == 2 and "--batch-size 8 is more than the onnxruntime backend takes (4" in err


def test_batch_size_over_a_plans_profile_is_refused(tmp_path):
    from engine.verify import UsageError, check_batch_size
    from tiny_model import copy_model

    folder = copy_model(tmp_path / "m", files=("model.json",))
    (folder / "model.fp16.plan").write_bytes(b"not read")
    (folder / "model.fp16.plan.json").write_text(json.dumps(
        {"precision": "fp16", "profile": {"input": "images", "min": [1, 32, 32, 3], "opt": [8, 32, 32, 3],
                                          "max": [16, 32, 32, 3]}}))
    check_batch_size(16, folder, "tensorrt", None)
    with pytest.raises(UsageError, match=r"--batch-size 17 is over the profile maximum of .*model.fp16.plan \(16\)"):
        check_batch_size(17, folder, "tensorrt", None)


def _read_only(path: Path) -> Path:
    path.mkdir(exist_ok=True)
    path.chmod(0o555)
    if os.access(path, os.W_OK):
        pytest.skip("running as root: a read-only folder is still writable, the case cannot happen")
    return path


@pytest.mark.parametrize("case", ["out in missing folder", "out is a folder", "out in read-only folder",
                                  "cache is a file", "cache is /dev/null", "cache in read-only folder",
                                  "report is a file", "report would replace a folder"])
def test_output_paths_are_refused_before_any_image_is_embedded(capsys, monkeypatch, model, pairs_dir, tmp_path,
                                                               case):
    (tmp_path / "file.txt").write_text("x")
    flag, target = {
        "out in missing folder": ("--out", tmp_path / "missing" / "sub.csv"),
        "out is a folder": ("--out", tmp_path),
        "out in read-only folder": ("--out", (tmp_path / "ro", "sub.csv")),
        "cache is a file": ("--cache", tmp_path / "file.txt"),
        "cache is /dev/null": ("--cache", Path(os.devnull)),
        "cache in read-only folder": ("--cache", (tmp_path / "ro", "cache")),
        "report is a file": ("--report", tmp_path / "file.txt"),
        "report would replace a folder": ("--report", tmp_path / "rep"),  # rep/roc.png is a folder
    }[case]
    (tmp_path / "rep" / "roc.png").mkdir(parents=True)
    if isinstance(target, tuple):
        target = _read_only(target[0]) / target[1]
    monkeypatch.setattr("engine.embedder.Embedder.embed_paths", lambda *a, **k: pytest.fail("embedded first"))
    code, out, err = run(capsys, "--pairs", pairs_dir, flag, target, "--model", model, "--json")
    assert code == 2
    message = _strict_json(out)["error"]
    assert message.startswith(f"{flag} {target}: ") and ".tmp" not in message


def test_image_path_that_is_not_a_file_says_what_it_is(capsys, model, pairs_dir, tmp_path):
    face = pairs_dir / "images/00000003/0.jpg"
    fifo, loop_a, loop_b = tmp_path / "pipe.jpg", tmp_path / "a.jpg", tmp_path / "b.jpg"
    os.mkfifo(fifo)
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    for path, what in ((tmp_path, "is a directory"), (fifo, "is a FIFO (named pipe)"),
                       (loop_a, "symlink loop")):
        code, out, _ = run(capsys, path, face, "--model", model, "--json")
        assert code == 2 and _strict_json(out)["error"].startswith(f"{path}: {what}")


def _hdr_bomb(path: Path) -> Path:
    """A Radiance HDR header claiming 16000x16000 (~3 GB of float pixels), named like a JPEG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 16000 +X 16000\n" + b"\x02\x02\x3e\x80" * 64)
    return path


def _photo_pairs(root: Path, face_data: Path, n: int) -> Path:
    """A pairs folder of real LFW photos (the detector finds their faces), for --align face."""
    import shutil

    people = sorted(p for p in (face_data / "lfw-deepfunneled").iterdir() if p.is_dir())[:2 * n]
    for k in range(n):
        for side, person in enumerate(people[2 * k:2 * k + 2]):
            dst = root / "images" / f"{k * 7 + 3:08d}" / f"{side}.jpg"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(sorted(person.iterdir())[0], dst)
    return root


@pytest.mark.parametrize("align", ["none", "face"])
def test_strict_pairs_refuse_bombs_and_blank_images(capsys, request, model, tmp_path, align):
    if align == "face":
        folder = _photo_pairs(tmp_path / "p", request.getfixturevalue("face_data"), 3)
    else:
        folder = make_pairs(tmp_path / "p", 3, labels=False)
    ids = sorted(p.name for p in (folder / "images").iterdir())
    code, _, err = run(capsys, "--pairs", folder, "--model", model, "--strict", "--align", align)
    assert code == 0, err  # the folder is usable as it is

    kept = {name: (folder / "images" / ids[1] / name).read_bytes() for name in ("0.jpg", "1.jpg")}
    for name in kept:  # two all-black images: must never be "the same person"
        write_jpeg(folder / "images" / ids[1] / name, np.zeros((120, 120, 3), np.uint8))
    blank = folder / "images" / ids[1] / "0.jpg"
    why = "blank image" if align == "none" else "no face found"
    code, _, err = run(capsys, "--pairs", folder, "--model", model, "--strict", "--align", align)
    assert code == 2 and f"error: {blank}: {why}" in err
    out_csv = tmp_path / "sub.csv"
    code, _, err = run(capsys, "--pairs", folder, "--model", model, "--align", align, "--out", out_csv)
    assert code == 0 and f"skipped image {blank}: {why}" in err
    assert float(dict(read_submission(out_csv)[1])[ids[1]]) == FAILED_PAIR_SCORE

    for name, data in kept.items():
        (folder / "images" / ids[1] / name).write_bytes(data)
    bomb = _hdr_bomb(folder / "images" / ids[2] / "0.jpg")
    code, _, err = run(capsys, "--pairs", folder, "--model", model, "--strict", "--align", align)
    assert code == 2 and f"error: {bomb}: image header says 16000x16000, over the" in err


# ----------------------------------------------------------------------------- pairs folder


def read_submission(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def test_submission_is_sorted_complete_and_evaluated(capsys, model, pairs_dir, tmp_path):
    out_csv, report = tmp_path / "sub.csv", tmp_path / "report"
    code, out, err = run(capsys, "--pairs", pairs_dir, "--out", out_csv, "--report", report, "--model", model,
                         "--bootstrap", "50")
    assert code == 0, err
    header, rows = read_submission(out_csv)
    ids = sorted(p.name for p in (pairs_dir / "images").iterdir())
    assert header == ["pair_id", "similarity"]
    assert [r[0] for r in rows] == ids  # every pair once, in pair-id order
    assert all(-1.0 <= float(r[1]) <= 1.0 for r in rows)
    assert "pairs/s" in out and "images/s" in out and "EER" in out
    assert sorted(p.name for p in report.iterdir()) == ["det.png", "metrics.json", "metrics.md", "roc.png",
                                                         "scores.png"]
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["n_pairs"] == 12 and metrics["counts"]["genuine"] == 6
    assert metrics["run"]["pairs"] == 12 and metrics["run"]["images_per_s"] > 0


def test_pairs_json_summary_and_labels_flag(capsys, model, tmp_path):
    folder = make_pairs(tmp_path / "p", 6, labels=False)
    labels = tmp_path / "labels.csv"
    labels.write_text("pair_id,label\n" + "".join(f"{p.name},{k % 2}\n" for k, p in
                                                  enumerate(sorted((folder / "images").iterdir()))))
    code, out, _ = run(capsys, "--pairs", folder, "--labels", labels, "--model", model, "--json", "--bootstrap", "0")
    summary = json.loads(out)
    assert code == 0 and summary["pairs"] == 6 and summary["pairs_scored"] == 6
    assert summary["metrics"]["n_pairs"] == 6 and "eer" in summary["metrics"]


def test_unlabelled_pairs_without_out_still_score(capsys, model, tmp_path):
    # No labels and no --out: nothing to write, but scoring still reports throughput.
    folder = make_pairs(tmp_path / "p", 2, labels=False)
    code, out, _ = run(capsys, "--pairs", folder, "--model", model)
    assert code == 0 and "2 pairs (2 scored)" in out


def test_corrupt_image_is_reported_and_the_rest_scored(capsys, model, tmp_path):
    folder = make_pairs(tmp_path / "p", 6)
    ids = sorted(p.name for p in (folder / "images").iterdir())
    bad = folder / "images" / ids[2] / "1.jpg"
    bad.write_bytes(b"garbage, not a jpeg")
    out_csv = tmp_path / "sub.csv"
    code, out, err = run(capsys, "--pairs", folder, "--out", out_csv, "--model", model, "--bootstrap", "0")
    assert code == 0
    assert f"skipped image {bad}: not a decodable image" in err
    assert "1 of 6 pairs have an unusable image" in err
    _, rows = read_submission(out_csv)
    assert [r[0] for r in rows] == ids  # still complete
    scores = {r[0]: float(r[1]) for r in rows}
    assert scores[ids[2]] == -1.0 and all(scores[i] > -1.0 for i in ids if i != ids[2])
    assert "| pairs scored | 5 |" in out  # left out of the evaluation

    out_csv.unlink()
    code, _, err = run(capsys, "--pairs", folder, "--out", out_csv, "--model", model, "--strict")
    assert code == 2 and f"error: {bad}: not a decodable image" in err
    assert not out_csv.exists()


def test_folder_without_pairs_is_refused(capsys, model, tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    code, _, err = run(capsys, "--pairs", tmp_path / "empty", "--out", tmp_path / "s.csv", "--model", model)
    assert code == 2 and "no pairs found" in err
    code, _, err = run(capsys, "--pairs", tmp_path / "nothing_here", "--out", tmp_path / "s.csv", "--model", model)
    assert code == 2 and "no such folder" in err
    assert not (tmp_path / "s.csv").exists()


def test_failed_write_leaves_no_file_under_the_final_name(capsys, model, pairs_dir, tmp_path, monkeypatch):
    out_csv = tmp_path / "sub.csv"

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    code, _, err = run(capsys, "--pairs", pairs_dir, "--out", out_csv, "--model", model, "--bootstrap", "0")
    assert code == 2 and "No space left on device" in err
    assert list(tmp_path.iterdir()) == []  # neither the final file nor a temporary one


KILLED_RUN = """
import os, sys, time
real_replace = os.replace
def slow_replace(src, dst):
    if str(dst).endswith("sub.csv"):
        print("REPLACING", flush=True)  # the temporary file is written; the rename is next
        time.sleep(60)
    return real_replace(src, dst)
os.replace = slow_replace
from engine.verify import main
sys.exit(main(sys.argv[1:]))
"""


def _killed_run(args, marker: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env)
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            if marker in line or time.monotonic() > deadline:
                break
        else:
            pytest.fail(f"the run ended before {marker!r} appeared (exit {proc.wait()})")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("moment", ["once the backend is open", "between writing and renaming"])
def test_killed_run_never_leaves_a_partial_submission(model, pairs_dir, tmp_path, moment):
    out_csv = tmp_path / "sub.csv"
    out_csv.write_text("pair_id,similarity\nprevious,run\n")  # an older result must survive intact
    marker = "backend " if moment == "once the backend is open" else "REPLACING"
    _killed_run(["--pairs", pairs_dir, "--out", out_csv, "--model", model, "--no-progress", "--bootstrap", "0"],
                marker, tmp_path)
    assert out_csv.read_text() == "pair_id,similarity\nprevious,run\n"


# ----------------------------------------------------------------------------- LFW


def test_lfw_evaluation_on_a_few_real_pairs(capsys, model, face_data, tmp_path):
    # 2 folds x (2 same + 2 different) LFW lines, identities taken from the official list.
    lines = (face_data / "lfw-pairs.txt").read_text().splitlines()[1:]
    same = [ln for ln in lines if len(ln.split()) == 3][:4]
    diff = [ln for ln in lines if len(ln.split()) == 4][:4]
    pairs_txt = tmp_path / "pairs.txt"
    pairs_txt.write_text("2\t2\n" + "\n".join(same[:2] + diff[:2] + same[2:] + diff[2:]) + "\n")
    code, out, err = run(capsys, "--lfw", face_data / "lfw-deepfunneled", "--lfw-pairs", pairs_txt, "--model", model,
                         "--json", "--bootstrap", "0")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["pairs"] == 8 and summary["metrics"]["n_pairs"] == 8
    acc = summary["metrics"]["lfw_kfold_accuracy"]
    assert len(acc["per_fold"]) == 2 and 0.0 <= acc["mean"] <= 1.0

    # Only fold 2 (a held-out fold): its 4 pairs, no k-fold accuracy from a single fold.
    code, out, err = run(capsys, "--lfw", face_data / "lfw-deepfunneled", "--lfw-pairs", pairs_txt, "--model", model,
                         "--json", "--bootstrap", "0", "--lfw-folds", "2")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["pairs"] == 4 and "lfw_kfold_accuracy" not in summary["metrics"]


@pytest.mark.parametrize("text", ["0", "11", "a", ""])
def test_bad_lfw_folds_are_refused(text):
    from engine.verify import UsageError, parse_folds

    with pytest.raises(UsageError, match="--lfw-folds"):
        parse_folds(text)


def test_module_entry_point_runs(model, pairs_dir):
    a = pairs_dir / "images/00000003/0.jpg"
    proc = subprocess.run([sys.executable, "-m", "engine.verify", str(a), str(a), "--model", model, "--json",
                           "--no-progress"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["match"] is True
    help_text = subprocess.run([sys.executable, "-m", "engine.verify", "--help"], capture_output=True, text=True,
                               cwd=REPO, timeout=60).stdout
    for flag in ("--pairs", "--out", "--labels", "--lfw", "--lfw-pairs", "--report", "--json", "--model",
                 "--backend", "--precision", "--threshold", "--batch-size", "--workers", "--strict", "--cache"):
        assert flag in help_text


def test_nothing_is_written_when_no_pair_could_be_scored(capsys, model, tmp_path):
    folder = make_pairs(tmp_path / "p", 2)
    for image in (folder / "images").rglob("*.jpg"):
        image.write_bytes(b"not an image")
    out_csv, report = tmp_path / "sub.csv", tmp_path / "rep"
    for extra in (("--report", report), ()):  # labelled, then unlabelled (a submission only)
        if not extra:
            (folder / "pairs.csv").unlink()
        code, out, err = run(capsys, "--pairs", folder, "--out", out_csv, *extra, "--model", model, "--json")
        assert code == 2 and "no pair could be scored" in _strict_json(out)["error"]
        assert not out_csv.exists() and not report.exists()
        assert "in the submission" not in err  # no line promising scores in a file that is not written


def test_out_naming_an_input_image_is_refused_before_any_work(capsys, monkeypatch, model, tmp_path):
    folder = make_pairs(tmp_path / "p", 2)
    image = folder / "images" / "00000003" / "0.jpg"
    before = image.read_bytes()
    monkeypatch.setattr("engine.embedder.Embedder.embed_paths", lambda *a, **k: pytest.fail("embedded first"))
    code, out, _ = run(capsys, "--pairs", folder, "--out", image, "--model", model, "--json")
    assert code == 2 and "is one of the job's inputs" in _strict_json(out)["error"]
    assert image.read_bytes() == before
    labels = (folder / "pairs.csv").read_bytes()  # the labels it reads by default
    code, out, _ = run(capsys, "--pairs", folder, "--out", folder / "pairs.csv", "--model", model, "--json")
    assert code == 2 and "is one of the job's inputs" in _strict_json(out)["error"]
    assert (folder / "pairs.csv").read_bytes() == labels


def test_a_model_file_that_is_a_fifo_is_refused_not_waited_on(capsys, model, pairs_dir, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.json").write_bytes((Path(model) / "model.json").read_bytes())
    os.mkfifo(folder / "model.fp32.onnx")
    a = pairs_dir / "images/00000003/0.jpg"
    code, out, _ = run(capsys, a, a, "--model", folder, "--json")
    assert code == 2 and _strict_json(out)["error"] == f"{folder / 'model.fp32.onnx'}: is a FIFO (named pipe), not an ONNX model"
    (folder / "model.json").unlink()
    os.mkfifo(folder / "model.json")  # named for what it is, not "not a model folder"
    code, out, _ = run(capsys, a, a, "--model", folder, "--json")
    assert code == 2 and _strict_json(out)["error"] == f"{folder / 'model.json'}: is a FIFO (named pipe), not a model.json"


def test_cli_errors_are_one_line_of_ours_even_when_a_decoder_complains(model, pairs_dir, tmp_path):
    """No 'None:' prefix, no OpenCV/libtiff log lines, no Pillow warnings: only engine.verify's own lines."""
    import struct

    from PIL import Image

    def cli(*argv):
        return subprocess.run([sys.executable, "-m", "engine.verify", *map(str, argv), "--no-progress"],
                              capture_output=True, text=True, cwd=REPO, timeout=120)

    done = cli()
    assert done.returncode == 2 and done.stderr.strip() == (
        "engine.verify: error: give exactly one of: two images (IMG_A IMG_B), --pairs DIR, --lfw DIR")
    a = pairs_dir / "images/00000003/0.jpg"
    tiff = tmp_path / "half.tif"
    Image.fromarray(synthetic_face(1, size=64)).save(tiff)
    tiff.write_bytes(tiff.read_bytes()[: tiff.stat().st_size // 2])
    jpg = a.read_bytes()
    cases = [(tiff, 2)]
    for name, app1 in (("ifd_past_end", b"Exif\0\0II*\0" + struct.pack("<I", 0xFFFFFFF0)),
                       # orientation tag claiming 2**31 values: Pillow's "Tag data larger than file"
                       ("tag_too_long", b"Exif\0\0II*\0" + struct.pack("<IHHHII", 8, 1, 0x0112, 3, 0x7FFFFFFF, 16))):
        bad_exif = tmp_path / f"{name}.jpg"
        bad_exif.write_bytes(jpg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpg[2:])
        cases.append((bad_exif, 0))
    for other, code in cases:
        done = cli(a, other, "--model", model, "--threshold", "-1")
        assert done.returncode == code, done.stderr
        assert all(line.startswith("engine.verify: ") for line in done.stderr.splitlines()), done.stderr


@pytest.mark.parametrize("stdout", ["full", "closed"])
@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_a_result_that_cannot_be_written_is_exit_2_never_a_decision(model, pairs_dir, stdout, json_flag):
    """stdout on a full disk (/dev/full) or closed (`>&-`): a same-person pair must not end as exit 1
    ('not the same person') after a traceback, nor as exit 0 that nobody could read."""
    if stdout == "full" and not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    a = pairs_dir / "images/00000010/0.jpg"  # pair 1 (odd): the same face twice
    b = pairs_dir / "images/00000010/1.jpg"
    cmd = [sys.executable, "-m", "engine.verify", str(a), str(b), "--model", model, "--threshold", "-1", *json_flag]
    if stdout == "full":
        with open("/dev/full", "w") as full:
            done = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=120)
    else:
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
                              timeout=120, pass_fds=(), preexec_fn=lambda: os.close(1))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and ("cannot write the result" in errors[0] or "stdout is closed" in errors[0])


@pytest.mark.parametrize("name", ["\x1b[2J\x1b[31m OK same person \x1b[0m.jpg", "a\u202egpj.exe", "x\x85y.jpg"])
def test_file_names_cannot_repaint_the_error_line(capsys, model, pairs_dir, tmp_path, name):
    """A name with escape sequences (clear screen, colour), a bidi override or a C1 control is shown escaped."""
    from engine.files import printable

    missing = tmp_path / name
    code, out, err = run(capsys, missing, pairs_dir / "images/00000003/0.jpg", "--model", model)
    assert code == 2
    assert not any(ch in err for ch in "\x1b\u202e\x85")
    assert printable(str(missing)) in err and ("\\x1b[2J" in err or "\\u202e" in err or "\\x85" in err)


def test_printable_escapes_only_what_a_terminal_acts_on():
    from engine.files import printable

    assert printable("naïve café 日本.jpg") == "naïve café 日本.jpg"
    assert printable("\x1b[0m\x00\x7f\u2028\u2066") == "\\x1b[0m\\x00\\x7f\\u2028\\u2066"


def test_an_unknown_detector_in_model_json_is_one_error_before_any_image(capsys, model, pairs_dir, tmp_path):
    """Was reported once per image, after the backend opened and the work began."""
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(model, folder)
    config = json.loads((folder / "model.json").read_text())
    config.update(align="face", template="arcface", detector="no_such_detector")
    (folder / "model.json").write_text(json.dumps(config))
    code, _, err = run(capsys, "--pairs", pairs_dir, "--model", folder)
    errors = _error_lines(err)
    assert code == 2 and len(errors) == 1 and "no_such_detector" in errors[0] and "not shipped" in errors[0]
    assert "skipped image" not in err
