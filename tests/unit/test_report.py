"""engine.report: report folder contents, Markdown, DET axes, nothing half-written."""
from __future__ import annotations

import json
from statistics import NormalDist

import numpy as np
import pytest

from engine import report
from engine.datasets import FAKE_OF_OTHER, FAKE_OF_SAME, GENUINE, IMPOSTOR
from engine.metrics import evaluate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def scored():
    rng = np.random.default_rng(0)
    n = 600
    types = rng.choice([GENUINE, IMPOSTOR, FAKE_OF_SAME, FAKE_OF_OTHER], n)
    labels = (types == GENUINE).astype(int)
    scores = rng.normal(size=n) + 2.0 * labels + 0.8 * (types == FAKE_OF_SAME)
    attacks = np.where(labels == 0, np.where(types == IMPOSTOR, "", "swap"), "")
    return labels, scores, types, attacks


def test_write_report_files(tmp_path, scored):
    labels, scores, types, attacks = scored
    result = evaluate(labels, scores, types, attacks, bootstrap=50)
    out = tmp_path / "nested" / "report"
    paths = report.write_report(result, out, labels, scores, types)
    assert set(paths) == set(report.REPORT_FILES)
    assert sorted(p.name for p in out.iterdir()) == sorted(report.REPORT_FILES)  # no temp folder left
    assert json.loads(paths["metrics.json"].read_text()) == result
    md = paths["metrics.md"].read_text()
    assert "| EER (interpolated) |" in md
    assert f"{100 * result['eer']:.3f}%" in md
    assert "| swap |" in md
    for name in ("roc.png", "det.png", "scores.png"):
        data = paths[name].read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name


def test_write_report_without_types_replaces_old_files(tmp_path, scored):
    labels, scores, _, _ = scored
    (tmp_path / "metrics.json").write_text("stale")
    result = evaluate(labels, scores, bootstrap=0)
    report.write_report(result, tmp_path, labels, scores)
    assert json.loads((tmp_path / "metrics.json").read_text())["eer"] == result["eer"]
    assert (tmp_path / "scores.png").read_bytes().startswith(PNG_MAGIC)


def test_failed_report_leaves_nothing_half_written(tmp_path, scored, monkeypatch):
    labels, scores, types, _ = scored
    result = evaluate(labels, scores, types, bootstrap=0)

    def broken(*args, **kwargs):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(report, "_plot_scores", broken)
    with pytest.raises(RuntimeError, match="plot failed"):
        report.write_report(result, tmp_path / "r", labels, scores, types)
    assert list((tmp_path / "r").iterdir()) == []  # metrics.json etc. were never moved in


def test_markdown_marks_unmeasurable_tar():
    result = evaluate([0, 1, 0, 1], [0.1, 0.9, 0.4, 0.3], bootstrap=0)
    md = report.format_markdown(result)
    assert "| TAR @ FAR=0.01 | not enough impostor pairs |" in md
    assert "| TAR @ FAR=0.1 | not enough impostor pairs |" in md  # 2 negatives: FAR steps of 0.5


def test_probit_is_the_normal_deviate():
    p = np.array([0.001, 0.025, 0.5, 0.975])
    expected = [NormalDist().inv_cdf(v) for v in p]
    np.testing.assert_allclose(report._probit(p), expected, rtol=0, atol=1e-12)
    assert report._probit(np.array([0.975]))[0] == pytest.approx(1.959963985, abs=1e-8)


def test_thin_keeps_ends_and_caps_points():
    fpr = np.linspace(0, 1, 100_000) ** 3
    idx = report._thin(len(fpr), fpr)
    assert idx[0] == 0 and idx[-1] == len(fpr) - 1
    assert len(idx) <= report._MAX_CURVE_POINTS
    assert np.all(np.diff(idx) > 0)
    assert np.any(fpr[idx][1:] < 1e-6)  # dense at small FPR for the log axis


def test_write_report_with_untyped_pairs(tmp_path, scored):
    labels, scores, _, _ = scored
    types = [""] * len(labels)
    result = evaluate(labels, scores, types, bootstrap=0)
    paths = report.write_report(result, tmp_path, labels, scores, types)
    assert paths["scores.png"].read_bytes().startswith(PNG_MAGIC)
