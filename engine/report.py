"""Evaluation reports: metrics.json, a Markdown table and ROC / DET / score-histogram plots.

``write_report`` takes the dict from :func:`engine.metrics.evaluate` plus the
labels and scores it came from (the plots need the raw scores). Files are
written into a temporary folder inside ``out_dir`` and then moved in, so a
failure never leaves a half-written report. matplotlib is imported lazily and
used through ``Figure`` objects rendered by Agg: no display, no pyplot state.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

REPORT_FILES = ("metrics.json", "metrics.md", "roc.png", "det.png", "scores.png")
_MAX_CURVE_POINTS = 4000  # plotted points per curve; the full ROC can have one per pair


def _fmt(value, pct: bool = False) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{100 * value:.3f}%" if pct else f"{value:.4f}"
    return str(value)


def format_markdown(result: dict) -> str:
    """The metrics as Markdown tables: headline numbers, operating points, attacks, pair counts."""
    r = result
    lines = ["| Metric | Value |", "|---|---|"]

    def row(name, value, pct=False):
        lines.append(f"| {name} | {_fmt(value, pct)} |")

    row(f"EER ({r.get('method', 'interpolated')})", r["eer"], pct=True)
    ci = r.get("eer_ci")
    if ci:
        row(f"EER {round(100 * r.get('eer_ci_level', 0.95))}% CI (bootstrap n={r.get('bootstrap')})",
            f"{100 * ci[0]:.3f}% – {100 * ci[1]:.3f}%")
    row("EER threshold", r.get("eer_threshold"))
    row("EER, interpolated", r.get("eer_interpolated"), pct=True)
    row("EER, organiser (Kryptonite scorer)", r.get("eer_organiser"), pct=True)
    row("EER_real (genuine vs impostor)", r.get("eer_real"), pct=True)
    row("EER_fake (genuine vs fakes)", r.get("eer_fake"), pct=True)
    for name, value in (r.get("eer_by_type") or {}).items():
        row(f"EER genuine vs {name}", value, pct=True)
    row("ROC AUC", r.get("roc_auc"))
    for far, tar in (r.get("tar_at_far") or {}).items():
        row(f"TAR @ FAR={far}", tar if tar is not None else "not enough impostor pairs", pct=True)
    row("pairs scored", r.get("n_pairs"))
    for name, count in (r.get("counts") or {}).items():
        row(f"pairs: {name}", count)
    join = r.get("join")
    if join:
        for key in ("missing", "extra", "duplicate_submission"):
            row(f"pair ids {key.replace('_', ' ')}", len(join.get(key, [])))
    text = "\n".join(lines) + "\n"

    points = [(title, r[key]) for key, title in (("at_eer_threshold", "EER threshold"),
                                                  ("at_threshold", "given threshold")) if r.get(key)]
    if points:
        rates = [k for k in _RATES if any(k in p for _, p in points)]
        table = ["", "| Operating point | Threshold | " + " | ".join(_RATES[k] for k in rates) + " |",
                 "|---|---|" + "---|" * len(rates)]
        for title, p in points:
            table.append(f"| {title} | {_fmt(p.get('threshold'))} | "
                         + " | ".join(_fmt(p.get(k), True) for k in rates) + " |")
        text += "\n".join(table) + "\n"

    attacks = r.get("eer_by_attack")
    if attacks:
        table = ["", "| Attack | Fake pairs | EER (genuine vs these fakes) | Fake acceptance at EER threshold |",
                 "|---|---|---|---|"]
        for name, e in attacks.items():
            table.append(f"| {name} | {e['n_fake']} | {_fmt(e['eer'], True)} | "
                         f"{_fmt(e['fake_acceptance_rate_at_eer_threshold'], True)} |")
        text += "\n".join(table) + "\n"
    return text


_RATES = {"far": "FAR", "frr": "FRR", "impostor_acceptance_rate": "Impostors accepted",
          "fake_acceptance_rate": "Fakes accepted", "fake_of_same_acceptance_rate": "Fake-of-same accepted",
          "fake_of_other_acceptance_rate": "Fake-of-other accepted"}


def _thin(n: int, *monotone: np.ndarray) -> np.ndarray:
    """Indices of at most ~_MAX_CURVE_POINTS curve points, dense where log-scale axes need them."""
    if n <= _MAX_CURVE_POINTS:
        return np.arange(n)
    k = _MAX_CURVE_POINTS // (1 + len(monotone))
    keep = [np.linspace(0, n - 1, k).astype(np.int64)]
    for curve in monotone:  # non-decreasing rates: sample them evenly on a log scale
        targets = np.logspace(-7, 0, k)
        keep.append(np.clip(np.searchsorted(curve, targets), 0, n - 1))
    return np.unique(np.concatenate(keep))


def _probit(p: np.ndarray) -> np.ndarray:
    """Inverse standard normal CDF, vectorised over the (few thousand) plotted points."""
    from statistics import NormalDist

    inv = np.frompyfunc(NormalDist().inv_cdf, 1, 1)
    return inv(p).astype(np.float64)


def _typed(types) -> np.ndarray | None:
    """Pair types as a string array, or None when absent or all empty (as evaluate() treats them)."""
    if types is None:
        return None
    t = np.asarray(types).astype(str)
    return t if (t != "").any() else None


def _curves(labels, scores, types):
    """(name, fpr, fnr) per curve: all pairs, then genuine vs each negative type present."""
    from engine.datasets import FAKE_OF_OTHER, FAKE_OF_SAME, IMPOSTOR
    from engine.metrics import check_inputs, roc_curve

    lab, sc = check_inputs(labels, scores)
    fpr, tpr, _ = roc_curve(lab, sc)
    curves = [("all pairs", fpr, 1 - tpr)]
    t = _typed(types)
    if t is not None:
        genuine = lab
        same, other = t == FAKE_OF_SAME, t == FAKE_OF_OTHER
        splits = [("genuine vs impostor", t == IMPOSTOR), ("genuine vs fakes", same | other)]
        if same.any() and other.any():  # otherwise identical to "genuine vs fakes"
            splits.append((f"genuine vs {FAKE_OF_SAME}", same))
        for name, neg in splits:
            if genuine.any() and neg.any():
                m = genuine | neg
                f, tp, _ = roc_curve(lab[m], sc[m])
                curves.append((name, f, 1 - tp))
    return lab, sc, curves


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # Agg renders PNGs; pyplot (global state) is never used

    return Figure(figsize=(width, height))


def _plot_roc(path, curves, result):
    fig = _figure(6, 5)
    ax = fig.subplots()
    floor = 1.0
    for name, fpr, fnr in curves:
        idx = _thin(len(fpr), fpr)
        x = fpr[idx]
        pos = x > 0
        if pos.any():
            floor = min(floor, x[pos].min())
        ax.plot(np.where(pos, x, np.nan), 1 - fnr[idx], label=name, lw=1.5)
    eer = result.get("eer")
    if eer:
        ax.plot([eer], [1 - eer], "o", color="black", label=f"EER {100 * eer:.2f}%")
    ax.set_xscale("log")
    ax.set_xlim(max(floor, 1e-6) / 2, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("False accept rate (FPR)")
    ax.set_ylabel("True accept rate (TPR)")
    ax.set_title("ROC")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_det(path, curves, result, n_pairs):
    eps = 0.5 / max(n_pairs, 1)  # keep 0 and 1 off the infinite ends of the probit axes
    fig = _figure(6, 5)
    ax = fig.subplots()
    for name, fpr, fnr in curves:
        idx = _thin(len(fpr), fpr, fnr[::-1])
        idx = np.unique(np.concatenate([idx, len(fpr) - 1 - _thin(len(fpr), fnr[::-1])]))
        x = _probit(np.clip(fpr[idx], eps, 1 - eps))
        y = _probit(np.clip(fnr[idx], eps, 1 - eps))
        ax.plot(x, y, label=name, lw=1.5)
    eer = result.get("eer")
    if eer:
        e = _probit(np.clip(np.array([eer]), eps, 1 - eps))[0]
        ax.plot([e], [e], "o", color="black", label=f"EER {100 * eer:.2f}%")
    ticks = np.array([1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8, 0.95])
    ticks = ticks[ticks >= eps]
    pos = _probit(ticks)
    labels = [f"{100 * t:g}%" for t in ticks]
    lim = (_probit(np.array([max(eps, 5e-5)]))[0], _probit(np.array([0.99]))[0])
    ax.set_xticks(pos, labels)
    ax.set_yticks(pos, labels)
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.plot(lim, lim, ":", color="grey", lw=0.8)
    ax.set_xlabel("False accept rate (normal deviate scale)")
    ax.set_ylabel("False reject rate (normal deviate scale)")
    ax.set_title("DET")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_scores(path, lab, sc, types, result):
    from engine.datasets import PAIR_TYPES

    t = _typed(types)
    if t is not None:
        groups = [(name, sc[t == name]) for name in PAIR_TYPES] + [("untyped", sc[t == ""])]
    else:
        groups = [("positive (label 1)", sc[lab]), ("negative (label 0)", sc[~lab])]
    groups = [(name, s) for name, s in groups if len(s)]
    bins = np.linspace(sc.min(), sc.max(), 81) if sc.max() > sc.min() else 10
    fig = _figure(7, 4.5)
    ax = fig.subplots()
    for name, s in groups:
        ax.hist(s, bins=bins, density=True, histtype="step", lw=1.5, label=f"{name} ({len(s)})")
    thr = result.get("eer_threshold")
    if thr is not None:
        ax.axvline(thr, color="black", ls="--", lw=1, label=f"EER threshold {thr:.3f}")
    ax.set_xlabel("Similarity score")
    ax.set_ylabel("Density")
    ax.set_title("Scores by pair type")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(result: dict, out_dir, labels, scores, types=None) -> dict[str, Path]:
    """Write metrics.json, metrics.md, roc.png, det.png and scores.png into ``out_dir``.

    Returns ``{file name: path}``. Everything is rendered in a temporary folder
    first; only then are the files moved in (replacing older ones).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lab, sc, curves = _curves(labels, scores, types)
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out_dir))
    try:
        (tmp / "metrics.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
        (tmp / "metrics.md").write_text("# Verification metrics\n\n" + format_markdown(result))
        _plot_roc(tmp / "roc.png", curves, result)
        _plot_det(tmp / "det.png", curves, result, len(lab))
        _plot_scores(tmp / "scores.png", lab, sc, types, result)
        paths = {}
        for name in REPORT_FILES:
            os.replace(tmp / name, out_dir / name)
            paths[name] = out_dir / name
        return paths
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
