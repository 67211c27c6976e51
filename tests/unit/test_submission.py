"""engine.submission and its ``python -m engine.submission`` scorer CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import metrics, submission
from engine.datasets import DataError, FAKE_OF_SAME, GENUINE, IMPOSTOR
from engine.submission import SubmissionWarning

REPO = Path(__file__).resolve().parents[2]


def make_labels(tmp_path, n=200, seed=0, pad=True):
    rng = np.random.default_rng(seed)
    types = rng.choice([GENUINE, IMPOSTOR, FAKE_OF_SAME], n)
    labels = (types == GENUINE).astype(int)
    scores = rng.normal(size=n) + 2 * labels
    ids = np.arange(n) * 3 + 7  # sparse ids: row order and id order must not be confused
    path = tmp_path / "labels.csv"
    lines = ["pair_id,label,type,attack"]
    for k in rng.permutation(n):
        pid = f"{ids[k]:08d}" if pad else str(ids[k])
        lines.append(f"{pid},{labels[k]},{types[k]},{'swap' if types[k] == FAKE_OF_SAME else ''}")
    path.write_text("\n".join(lines) + "\n")
    return path, ids, labels, scores, types


def test_write_submission_sorted_and_padded(tmp_path):
    path = tmp_path / "sub.csv"
    submission.write_submission(path, [12, "3", 100000, 7], np.array([0.5, -0.25, 1.0, 0.125]))
    assert path.read_text() == ("pair_id,similarity\n00000003,-0.25\n00000007,0.125\n"
                                "00000012,0.5\n00100000,1.0\n")
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]  # no temp file left


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_submission_round_trips_scores_exactly(tmp_path, dtype):
    scores = np.random.default_rng(1).normal(size=50).astype(dtype)
    path = submission.write_submission(tmp_path / "sub.csv", range(50), scores)
    back = submission.read_submission(path)
    assert list(back) == [f"{i:08d}" for i in range(50)]
    np.testing.assert_array_equal(np.array(list(back.values()), dtype=dtype), scores)


@pytest.mark.parametrize("ids, scores, message", [
    ([1, 2, 1], [0.1, 0.2, 0.3], "duplicate pair id 00000001"),
    ([1, "x2"], [0.1, 0.2], "non-negative integers"),
    ([1, -2], [0.1, 0.2], "negative"),
    ([1, 2], [0.1, float("nan")], "pair 00000002 .row 1. is nan"),
    ([1, 2, 3], [0.1, 0.2], "3 pair ids"),
])
def test_write_submission_refuses_bad_input_and_keeps_old_file(tmp_path, ids, scores, message):
    path = tmp_path / "sub.csv"
    path.write_text("old\n")
    with pytest.raises(ValueError, match=message):
        submission.write_submission(path, ids, scores)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]


def test_write_submission_is_atomic_when_the_rename_fails(tmp_path, monkeypatch):
    path = tmp_path / "sub.csv"
    path.write_text("old\n")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        submission.write_submission(path, [1, 2], [0.1, 0.2])
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]


def test_read_submission_warns_on_duplicates_first_row_wins(tmp_path):
    path = tmp_path / "sub.csv"
    path.write_text("pair_id,similarity\n1,0.5\n00000002,0.25\n00000001,0.75\n")
    with pytest.warns(SubmissionWarning, match="1 duplicate pair id.*00000001"):
        got = submission.read_submission(path)
    assert got == {"00000001": 0.5, "00000002": 0.25}


@pytest.mark.parametrize("text, where", [
    ("pair_id,similarity\n00000001,0.5\n00000002,abc\n", ":3: similarity 'abc' is not a number"),
    ("pair_id,similarity\n00000001,nan\n", ":2: similarity is nan"),
    ("pair_id,similarity\n00000001,0.5,9\n", ":2: 3 fields"),
    ("pair_id,score\n00000001,0.5\n", ":1: header"),
    ("", ": empty file"),
    ("pair_id,similarity\n\n", ": no rows"),
])
def test_read_submission_errors_name_file_and_line(tmp_path, text, where):
    path = tmp_path / "sub.csv"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        submission.read_submission(path)
    assert str(info.value).startswith(str(path))
    assert where in str(info.value)


def test_score_joins_on_pair_id_not_row_order(tmp_path):
    labels_csv, ids, labels, scores, types = make_labels(tmp_path, pad=False)
    sub = tmp_path / "sub.csv"
    perm = np.random.default_rng(5).permutation(len(ids))
    # Rows shuffled and ids unpadded: the scorer must still pair each score with its label.
    sub.write_text("pair_id,similarity\n" + "".join(f"{ids[k]},{float(scores[k])!r}\n" for k in perm))
    result = submission.score_submission(sub, labels_csv, bootstrap=100)
    expected = metrics.evaluate(labels, scores, types, np.where(types == FAKE_OF_SAME, "swap", ""),
                                bootstrap=100)
    for key in ("eer", "eer_threshold", "eer_ci", "eer_organiser", "eer_real", "eer_fake", "roc_auc",
                "counts", "eer_by_attack", "tar_at_far"):
        assert result[key] == expected[key], key
    assert result["join"] == {"scored": len(ids), "missing": [], "extra": [], "duplicate_submission": []}


def test_score_warns_about_missing_extra_and_duplicate_ids(tmp_path):
    labels_csv, ids, labels, scores, types = make_labels(tmp_path)
    sub = tmp_path / "sub.csv"
    rows = [f"{ids[k]:08d},{float(scores[k])!r}" for k in range(2, len(ids))]  # first two missing
    rows += ["99999999,0.5", f"{ids[5]:08d},-3.0"]  # one extra, one duplicate (ignored)
    sub.write_text("pair_id,similarity\n" + "\n".join(rows) + "\n")
    with pytest.warns(SubmissionWarning) as record:
        result = submission.score_submission(sub, labels_csv, bootstrap=0)
    text = " ".join(str(w.message) for w in record)
    assert "2 labelled pair id(s) missing" in text and "1 pair id(s) not in" in text
    assert "1 duplicate pair id(s)" in text
    assert result["join"]["missing"] == [f"{ids[0]:08d}", f"{ids[1]:08d}"]
    assert result["join"]["extra"] == ["99999999"]
    assert result["join"]["duplicate_submission"] == [f"{ids[5]:08d}"]
    assert result["n_pairs"] == len(ids) - 2
    kept = slice(2, None)
    assert result["eer"] == metrics.equal_error_rate(labels[kept], scores[kept])[0]


def test_score_without_common_ids_or_with_one_class(tmp_path):
    labels_csv, *_ = make_labels(tmp_path)
    sub = tmp_path / "sub.csv"
    sub.write_text("pair_id,similarity\n99999999,0.5\n")
    with pytest.warns(SubmissionWarning), pytest.raises(DataError, match="no pair id in common"):
        submission.score_submission(sub, labels_csv)
    labels_csv.write_text("pair_id,label\n00000001,1\n00000002,1\n")
    sub.write_text("pair_id,similarity\n00000001,0.5\n00000002,0.7\n")
    with pytest.raises(DataError, match="no negative"):
        submission.score_submission(sub, labels_csv)


def test_score_writes_report(tmp_path):
    labels_csv, ids, labels, scores, types = make_labels(tmp_path)
    sub = submission.write_submission(tmp_path / "sub.csv", ids, scores)
    result = submission.score_submission(sub, labels_csv, tmp_path / "rep", bootstrap=0)
    saved = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert saved == result
    assert (tmp_path / "rep" / "det.png").stat().st_size > 0


def test_cli_scores_and_writes_report(tmp_path, capsys):
    labels_csv, ids, labels, scores, types = make_labels(tmp_path)
    sub = submission.write_submission(tmp_path / "sub.csv", ids, scores)
    out = tmp_path / "rep"
    rc = submission.main(["--submission", str(sub), "--labels", str(labels_csv), "--out", str(out),
                       "--method", "organiser", "--bootstrap", "50", "--seed", "3"])
    assert rc == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["method"] == "organiser" and saved["bootstrap"] == 50 and saved["seed"] == 3
    assert saved["eer"] == metrics.equal_error_rate(labels, scores, method="organiser")[0]
    assert f"| EER (organiser) | {100 * saved['eer']:.3f}% |" in printed
    assert sorted(p.name for p in out.iterdir()) == ["det.png", "metrics.json", "metrics.md", "roc.png",
                                                     "scores.png"]


def test_cli_bad_csv_exits_2_naming_file_and_line(tmp_path, capsys):
    labels_csv, *_ = make_labels(tmp_path)
    sub = tmp_path / "sub.csv"
    sub.write_text("pair_id,similarity\n00000007,0.5\n00000010,oops\n")
    rc = submission.main(["--submission", str(sub), "--labels", str(labels_csv), "--out", str(tmp_path / "rep")])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"error: {sub}:3: similarity 'oops' is not a number" in err
    assert not (tmp_path / "rep").exists()


def test_cli_bad_label_csv_and_missing_file(tmp_path, capsys):
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("pair_id,label\n00000001,1\n00000002,yes\n")
    sub = submission.write_submission(tmp_path / "sub.csv", [1, 2], [0.5, 0.1])
    assert submission.main(["--submission", str(sub), "--labels", str(labels_csv)]) == 2
    assert f"{labels_csv}:3" in capsys.readouterr().err
    assert submission.main(["--submission", str(tmp_path / "nope.csv"), "--labels", str(labels_csv)]) == 2
    assert "nope.csv: no such file" in capsys.readouterr().err


def test_cli_argument_errors(capsys):
    with pytest.raises(SystemExit) as info:
        submission.main(["--submission", "a.csv", "--labels", "b.csv", "--method", "nearest"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        submission.main(["--submission", "a.csv", "--labels", "b.csv", "--bootstrap", "-1"])
    assert info.value.code == 2


def test_python_dash_m_help():
    proc = subprocess.run([sys.executable, "-m", "engine.submission", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--submission", "--labels", "--out", "--method", "--bootstrap", "--seed", "--threshold"):
        assert flag in proc.stdout


# ----------------------------------------------------------------------------- output modes
# Atomic writes go through mkstemp/mkdtemp, which make private files (0600) and
# folders (0700): the results must get the modes a plain open/mkdir would give.


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield 0o022
    os.umask(old)


def test_new_submission_gets_the_umask_default_mode(tmp_path, umask_022):
    path = submission.write_submission(tmp_path / "sub.csv", [1], [0.5])
    assert path.stat().st_mode & 0o777 == 0o644


def test_replaced_submission_keeps_the_old_files_mode(tmp_path, umask_022):
    path = tmp_path / "sub.csv"
    path.write_text("old\n")
    path.chmod(0o664)
    submission.write_submission(path, [1], [0.5])
    assert path.stat().st_mode & 0o777 == 0o664 and path.read_text().startswith("pair_id,similarity\n")


@pytest.mark.parametrize("existing", [False, True])
def test_convert_output_folder_gets_the_umask_default_mode(tmp_path, umask_022, existing):
    import tempfile

    from convert import _replace_dir

    out = tmp_path / "model"
    if existing:  # --force over an older folder
        out.mkdir()
        (out / "old.txt").write_text("x")
    work = Path(tempfile.mkdtemp(prefix=".model.tmp-", dir=tmp_path))
    (work / "model.json").write_text("{}")
    _replace_dir(work, out)
    assert out.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in out.iterdir()) == ["model.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


@pytest.mark.parametrize("kind", ["device", "fifo", "folder"])
def test_cli_refuses_a_submission_that_is_not_a_file_instead_of_reading_forever(tmp_path, capsys, kind):
    """/dev/zero was read until memory ran out and a FIFO hung: every named file goes through engine.files."""
    import os

    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("pair_id,label\n00000001,1\n")
    target = {"device": "/dev/zero", "fifo": str(tmp_path / "fifo"), "folder": str(tmp_path)}[kind]
    if kind == "fifo":
        os.mkfifo(target)
    assert submission.main(["--submission", target, "--labels", str(labels_csv)]) == 2
    err = capsys.readouterr().err
    assert {"device": "is a character device", "fifo": "is a FIFO", "folder": "is a directory"}[kind] in err
