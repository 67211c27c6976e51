"""Verification metrics, defined once: EER, ROC, TAR@FAR, k-fold accuracy, bootstrap CI.

Training validation, the conversion accuracy gates and the verify CLI all call
these functions, so a number means the same thing everywhere.

Conventions:
- ``labels``: 1 = genuine pair (two real images of the same person), 0 = any
  negative (impostor or a pair holding a fake).
- ``scores``: higher means "more likely the same person" (cosine similarity).
- A pair is accepted when ``score >= threshold``. FAR is the fraction of
  negatives accepted, FRR (= FNR) the fraction of positives rejected.

Everything is vectorised numpy; one sort of the scores serves every metric
computed by :func:`evaluate`.

Pure computation: the scorer CLI (``python -m engine.submission``), the
reports and the conversion gates import this module, never the reverse.
"""
from __future__ import annotations

import math

import numpy as np

METHODS = ("interpolated", "organiser")
DEFAULT_FARS = (1e-1, 1e-2, 1e-3, 1e-4)


# ----------------------------------------------------------------------------- validation

def check_inputs(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to (bool labels, float64 scores); raise ValueError on bad input."""
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if labels.ndim != 1 or scores.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {labels.shape} and {scores.shape}")
    if len(labels) != len(scores):
        raise ValueError(f"length mismatch: {len(labels)} labels but {len(scores)} scores")
    if len(labels) == 0:
        raise ValueError("no pairs: labels and scores are empty")
    if labels.dtype == bool:
        lab = labels
    else:
        try:
            numeric = labels.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"labels must be 0 or 1, got dtype {labels.dtype}") from None
        bad = np.flatnonzero((numeric != 0) & (numeric != 1))
        if bad.size:
            raise ValueError(f"labels must be 0 or 1; row {bad[0]} has {labels[bad[0]].tolist()!r} "
                             f"({bad.size} bad row(s))")
        lab = numeric == 1
    n_pos = int(np.count_nonzero(lab))
    if n_pos == 0 or n_pos == len(lab):
        missing = "positive (label 1)" if n_pos == 0 else "negative (label 0)"
        raise ValueError(f"both classes are needed: no {missing} pairs among {len(lab)}")
    try:
        sc = scores.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"scores must be numbers, got dtype {scores.dtype}") from None
    bad = np.flatnonzero(~np.isfinite(sc))
    if bad.size:
        raise ValueError(f"scores must be finite; row {bad[0]} has {sc[bad[0]]} ({bad.size} bad row(s))")
    return lab, sc


# ----------------------------------------------------------------------------- ROC core

class _SortedPairs:
    """Pairs sorted once by descending score; subsets keep the order (boolean masks)."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray, presorted: bool = False):
        # Ties need no order among themselves: counts are read at the end of each run.
        self.order = None if presorted else np.argsort(-scores)
        self.scores = scores if presorted else scores[self.order]
        self.labels = labels if presorted else labels[self.order]

    def subset(self, mask_sorted: np.ndarray) -> "_SortedPairs":
        return _SortedPairs(self.labels[mask_sorted], self.scores[mask_sorted], presorted=True)

    def counts(self):
        """Cumulative (tps, fps, thresholds) at each distinct score, with the (0, 0, inf) start."""
        s, y = self.scores, self.labels
        # Last index of each run of equal scores (like sklearn's roc_curve).
        ends = np.flatnonzero(np.diff(s)) if len(s) > 1 else np.empty(0, dtype=np.intp)
        ends = np.append(ends, len(s) - 1)
        tps = np.cumsum(y, dtype=np.int64)[ends]
        fps = (ends + 1) - tps
        return (np.concatenate(([0], tps)), np.concatenate(([0], fps)),
                np.concatenate(([np.inf], s[ends])))

    def roc(self):
        tps, fps, thr = self.counts()
        return fps / fps[-1], tps / tps[-1], thr


def _drop_intermediate(tps: np.ndarray, fps: np.ndarray, thr: np.ndarray):
    """The ROC points scikit-learn's ``roc_curve`` keeps by default (``drop_intermediate=True``).

    On the counts after the (0, 0, inf) start: the first and last points are
    kept, and an inner point only where the second difference of the false
    or the true positive counts is non-zero (a corner); points in the middle
    of a run of equal steps go. The start point is always kept. The
    organisers' scorer computes its EER on exactly these points.
    """
    if len(tps) - 1 <= 2:
        return tps, fps, thr
    t, f = tps[1:], fps[1:]
    corner = (np.diff(f, 2) != 0) | (np.diff(t, 2) != 0)
    keep = np.concatenate(([True, True], corner, [True]))  # start, first, inner corners, last
    return tps[keep], fps[keep], thr[keep]


def roc_curve(labels, scores, drop_intermediate: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC as (fpr, tpr, thresholds), highest threshold first.

    Identical to ``sklearn.metrics.roc_curve(labels, scores, drop_intermediate=...)``:
    the first point is (0, 0) at threshold +inf; point k accepts ``score >= thresholds[k]``.
    By default one point per distinct score; ``drop_intermediate=True`` keeps
    only the corners, as sklearn's default (and so the organisers' scorer) does.
    """
    tps, fps, thr = _SortedPairs(*check_inputs(labels, scores)).counts()
    if drop_intermediate:
        tps, fps, thr = _drop_intermediate(tps, fps, thr)
    return fps / fps[-1], tps / tps[-1], thr


def _eer_from_counts(tps, fps, thr, method: str) -> tuple[float, float]:
    """EER and threshold from ROC counts; ``organiser`` first drops the points sklearn drops."""
    if method == "organiser":
        tps, fps, thr = _drop_intermediate(tps, fps, thr)
    return _eer_from_roc(fps / fps[-1], 1.0 - tps / tps[-1], thr, method)


def _eer_from_roc(fpr, fnr, thr, method: str) -> tuple[float, float]:
    if method == "organiser":
        # Kryptonite's scorer (eer.py): FNR at the first index minimising |FNR - FPR|,
        # on sklearn's default ROC, i.e. after drop_intermediate (see _eer_from_counts).
        i = int(np.argmin(np.abs(fnr - fpr)))
        return float(fnr[i]), float(thr[i])
    if method != "interpolated":
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    d = fnr - fpr  # starts at 1, ends at -1, never increases
    i = int(np.argmax(d <= 0))
    if d[i] == 0:
        return float(fpr[i]), float(thr[i])
    t = d[i - 1] / (d[i - 1] - d[i])
    eer = fpr[i - 1] + t * (fpr[i] - fpr[i - 1])
    hi, lo = thr[i - 1], thr[i]
    threshold = lo if not np.isfinite(hi) else hi + t * (lo - hi)
    return float(eer), float(threshold)


def equal_error_rate(labels, scores, method: str = "interpolated") -> tuple[float, float]:
    """Equal error rate and its threshold.

    ``method="interpolated"``: where the FNR and FPR curves cross, interpolated
    linearly between the two neighbouring ROC points (threshold interpolated the
    same way). ``method="organiser"``: the Kryptonite challenge scorer exactly,
    FNR at the first index minimising |FNR - FPR|, without interpolation, over
    the ROC that ``sklearn.metrics.roc_curve`` returns by default (intermediate
    points dropped: :func:`_drop_intermediate`).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    tps, fps, thr = _SortedPairs(*check_inputs(labels, scores)).counts()
    return _eer_from_counts(tps, fps, thr, method)


def _auc(fpr, tpr) -> float:
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (ties count one half, as in the Mann-Whitney U)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return _auc(fpr, tpr)


def _tar_at_far(tps, fps, fars) -> dict[float, float | None]:
    n_neg, n_pos = fps[-1], tps[-1]
    out = {}
    for far in fars:
        if far < 1.0 / n_neg:
            out[far] = None  # not enough impostor pairs to measure this FAR
            continue
        allowed = math.floor(far * n_neg + 1e-9)
        k = int(np.searchsorted(fps, allowed, side="right")) - 1
        out[far] = float(tps[k] / n_pos)
    return out


def tar_at_far(labels, scores, fars=DEFAULT_FARS) -> dict[float, float | None]:
    """True accept rate at each false accept rate: the best TAR whose FAR is <= far.

    ``None`` where far < 1/negatives: too few negative pairs to measure it.
    """
    pairs = _SortedPairs(*check_inputs(labels, scores))
    tps, fps, _ = pairs.counts()
    return _tar_at_far(tps, fps, fars)


def rates_at_threshold(labels, scores, threshold: float) -> dict:
    """FAR (negatives with score >= threshold) and FRR (positives with score < threshold)."""
    lab, sc = check_inputs(labels, scores)
    accept = sc >= threshold
    return {"far": float(np.mean(accept[~lab])), "frr": float(np.mean(~accept[lab]))}


# ----------------------------------------------------------------------------- k-fold accuracy

def _best_threshold(lab: np.ndarray, sc: np.ndarray) -> float:
    """Accuracy-maximising threshold on these pairs: midway between accepted and rejected scores."""
    pairs = _SortedPairs(lab, sc)
    tps, fps, thr = pairs.counts()
    n_neg = fps[-1]
    correct = tps + (n_neg - fps)  # positives accepted + negatives rejected, per ROC point
    k = int(np.argmax(correct))
    if k == 0:
        return float(thr[1] + 1.0)  # reject everything: above the top score
    if k == len(thr) - 1:
        return float(thr[k])  # accept everything: the lowest score
    return float((thr[k] + thr[k + 1]) / 2)


def kfold_accuracy(labels, scores, folds=10) -> dict:
    """LFW-style accuracy: for each fold, pick the threshold on the others, test on it.

    ``folds`` is a number of contiguous folds (LFW's pairs.txt is ordered by
    fold) or an array giving each pair's fold id. Returns ``mean``, ``std``
    (population, as the LFW protocol reports it), ``per_fold`` and ``thresholds``.
    """
    lab, sc = check_inputs(labels, scores)
    if np.ndim(folds) == 0:
        k = int(folds)
        if k < 2 or k > len(lab):
            raise ValueError(f"folds must be between 2 and the number of pairs ({len(lab)}), got {k}")
        fold_of = np.repeat(np.arange(k), [len(a) for a in np.array_split(np.arange(len(lab)), k)])
    else:
        fold_of = np.asarray(folds)
        if fold_of.shape != lab.shape:
            raise ValueError(f"folds has {len(fold_of)} entries for {len(lab)} pairs")
    ids = np.unique(fold_of)
    if len(ids) < 2:
        raise ValueError("kfold_accuracy needs at least 2 folds")
    accs, thrs = [], []
    for f in ids:
        test = fold_of == f
        train_lab, train_sc = lab[~test], sc[~test]
        if train_lab.all() or not train_lab.any():
            raise ValueError(f"fold {f}: the other folds hold only one class")
        t = _best_threshold(train_lab, train_sc)
        accs.append(float(np.mean((sc[test] >= t) == lab[test])))
        thrs.append(t)
    return {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "per_fold": accs, "thresholds": thrs}


# ----------------------------------------------------------------------------- bootstrap

def _bootstrap_eers(tps: np.ndarray, fps: np.ndarray, n: int, rng, method: str) -> np.ndarray:
    """EERs of ``n`` stratified resamples of the pairs, given their ROC counts ``tps``/``fps``.

    A resample draws P positives with replacement among the P positives and N
    negatives among the N negatives. Its ROC counts at the original ROC points,
    T(g) and F(g), are cumulative multinomial counts, and given T at two points
    the count between them is binomial (each positive is equally likely). The
    EER only needs the two neighbouring points where FNR - FPR changes sign, and
    FNR - FPR never increases along the ROC, so each resample is found by
    bisection over the ROC points, sampling T and F at each midpoint from
    their exact conditional binomials: the same distribution as drawing every
    pair, in O(n log points) instead of O(n * pairs).

    ``organiser`` also needs the points sklearn would drop around the crossing
    (:func:`_drop_intermediate`): :func:`_organiser_points` walks outwards from
    the crossing one ROC point at a time, sampling each point's counts given
    the nearest points already sampled (kept per resample as a stack of the
    bisection's bounds), until it meets the kept point on each side.
    """
    P, N = int(tps[-1]), int(fps[-1])
    G = len(tps) - 1
    lo = np.zeros(n, dtype=np.int64)
    hi = np.full(n, G, dtype=np.int64)
    t_lo, f_lo = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    t_hi, f_hi = np.full(n, P, dtype=np.int64), np.full(n, N, dtype=np.int64)
    organiser = method == "organiser"
    if organiser:
        # Every sampled bound, per resample and side: (index, T, F); top = current lo / hi.
        depth = G.bit_length() + 2
        left = np.zeros((3, n, depth), dtype=np.int64)
        right = np.zeros((3, n, depth), dtype=np.int64)
        right[:, :, 0] = np.array([G, P, N])[:, None]
        n_left, n_right = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    # Invariant: FNR - FPR > 0 at lo and <= 0 at hi (true at the ends: +1 and -1).
    while True:
        active = np.flatnonzero(hi - lo > 1)
        if active.size == 0:
            break
        a_lo, a_hi = lo[active], hi[active]
        mid = (a_lo + a_hi) // 2

        def split(c, c_lo, c_hi):
            # Resampled count up to ``mid``: c_lo + Binomial(count in (lo, hi], share of (lo, mid]).
            span = c[a_hi] - c[a_lo]
            p = np.divide(c[mid] - c[a_lo], span, out=np.zeros(active.size), where=span > 0)
            return c_lo[active] + rng.binomial(c_hi[active] - c_lo[active], p)

        t_mid = split(tps, t_lo, t_hi)
        f_mid = split(fps, f_lo, f_hi)
        below = (1.0 - t_mid / P - f_mid / N) <= 0
        go_hi, go_lo = active[below], active[~below]
        hi[go_hi], t_hi[go_hi], f_hi[go_hi] = mid[below], t_mid[below], f_mid[below]
        lo[go_lo], t_lo[go_lo], f_lo[go_lo] = mid[~below], t_mid[~below], f_mid[~below]
        if organiser:
            for stack, count, rows, keep in ((right, n_right, go_hi, below), (left, n_left, go_lo, ~below)):
                count[rows] += 1
                stack[:, rows, count[rows]] = np.stack([mid[keep], t_mid[keep], f_mid[keep]])
    if organiser:
        (t_a, f_a), (t_b, f_b) = _organiser_points(tps, fps, rng, left, n_left, right, n_right,
                                                   t_hi - t_lo, f_hi - f_lo)
        d_a, d_b = 1.0 - t_a / P - f_a / N, 1.0 - t_b / P - f_b / N
        # First index on ties (the earlier point); d strictly falls between kept points.
        return np.where(np.abs(d_a) <= np.abs(d_b), 1.0 - t_a / P, 1.0 - t_b / P)
    fpr_lo, fpr_hi = f_lo / N, f_hi / N
    fnr_lo, fnr_hi = 1.0 - t_lo / P, 1.0 - t_hi / P
    d_lo, d_hi = fnr_lo - fpr_lo, fnr_hi - fpr_hi
    t = np.where(d_hi == 0, 1.0, d_lo / (d_lo - d_hi))
    return fpr_lo + t * (fpr_hi - fpr_lo)


def _organiser_points(tps, fps, rng, left, n_left, right, n_right, step_t, step_f):
    """Counts at the kept ROC points either side of each resample's crossing.

    The bisection left each resample's crossing between grid points lo and
    hi = lo + 1 (tops of ``left``/``right``); the resample's ROC point B = hi
    is reached by the step (``step_t``, ``step_f``) != 0. sklearn drops a point
    when the steps into and out of it are equal, so the kept points around the
    crossing are the two ends of the run of steps equal to B's step: walking
    down from lo to the first resample point whose own step differs (or that
    is the first point; none at all means the (0, 0) start), and up from hi to
    the first point whose next step differs (or that is the last point).
    Each grid point's counts are drawn given the nearest sampled points around
    it (a binomial share of what lies between), so the walk keeps the exact
    resampling distribution. Returns ((T, F) before, (T, F) after).
    """
    n = len(step_t)
    rows = np.arange(n)
    P, N = int(tps[-1]), int(fps[-1])

    def share(total, c, a, b, c_from):
        """Binomial part of ``total`` (drawn in (a, b]) falling in grid step c_from -> c_from +- 1."""
        span = np.abs(c[b] - c[a])
        part = np.abs(c[c_from + np.sign(b - a)] - c[c_from])
        return rng.binomial(total, np.divide(part, span, out=np.zeros(len(total)), where=span > 0))

    # Down from lo: the sampled point below the current one is the stack entry under it.
    cur = left[0, rows, n_left].copy()
    tc, fc = left[1, rows, n_left].copy(), left[2, rows, n_left].copy()
    below = n_left - 1
    before_t, before_f = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    active = cur > 0  # lo = 0: no resample point before B, the kept point is the start
    while active.any():
        a = np.flatnonzero(active)
        k = left[:, a, below[a]]  # (index, T, F) of the sampled point below
        # The step into grid point cur: a share of what lies between k and cur.
        bt = share(tc[a] - k[1], tps, cur[a], k[0], cur[a])
        bf = share(fc[a] - k[2], fps, cur[a], k[0], cur[a])
        real = (bt > 0) | (bf > 0)
        first = (tc[a] - bt == 0) & (fc[a] - bf == 0)
        stop = real & ((bt != step_t[a]) | (bf != step_f[a]) | first)
        before_t[a[stop]], before_f[a[stop]] = tc[a[stop]], fc[a[stop]]
        tc[a] -= bt
        fc[a] -= bf
        cur[a] -= 1
        below[a] -= cur[a] == k[0]
        active[a[stop | (cur[a] == 0)]] = False  # reaching 0 unstopped: no earlier point, the start

    # Up from hi: B is kept when it is the first or last point, else while the next step equals B's.
    cur = right[0, rows, n_right].copy()
    tc, fc = right[1, rows, n_right].copy(), right[2, rows, n_right].copy()
    above = n_right - 1
    after_t, after_f = tc.copy(), fc.copy()
    first_b = (tc - step_t == 0) & (fc - step_f == 0)
    active = ~first_b & ~((tc == P) & (fc == N))
    while active.any():
        a = np.flatnonzero(active)
        k = right[:, a, above[a]]  # the sampled point above
        bt = share(k[1] - tc[a], tps, cur[a], k[0], cur[a])
        bf = share(k[2] - fc[a], fps, cur[a], k[0], cur[a])
        tc[a] += bt
        fc[a] += bf
        cur[a] += 1
        above[a] -= cur[a] == k[0]
        real = (bt > 0) | (bf > 0)
        same = real & (bt == step_t[a]) & (bf == step_f[a])
        moved = a[same]  # the point we stood on is dropped: the next one is the candidate now
        after_t[moved], after_f[moved] = tc[moved], fc[moved]
        last = same & (tc[a] == P) & (fc[a] == N)
        active[a[(real & ~same) | last]] = False
    return (before_t, before_f), (after_t, after_f)


def bootstrap_eer_ci(labels, scores, n: int = 1000, seed: int = 0, alpha: float = 0.05,
                     *, method: str = "interpolated") -> tuple[float, float]:
    """Percentile bootstrap confidence interval (1 - alpha) for the EER.

    Pairs are resampled with replacement within each class (positives among
    positives, negatives among negatives), so every resample has both classes
    and the class balance of the data. Deterministic for a given ``seed``.
    With ``method="organiser"`` each resample's EER follows the organisers'
    rule exactly too (sklearn's ROC with intermediate points dropped).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    pairs = _SortedPairs(*check_inputs(labels, scores))
    tps, fps, _ = pairs.counts()
    return _bootstrap_ci(tps, fps, n, seed, alpha, method)


def _bootstrap_ci(tps, fps, n, seed, alpha, method) -> tuple[float, float]:
    if n < 1:
        raise ValueError(f"bootstrap n must be >= 1, got {n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    eers = _bootstrap_eers(tps, fps, int(n), np.random.default_rng(seed), method)
    low, high = np.quantile(eers, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


# ----------------------------------------------------------------------------- evaluate

def _json_float(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _check_strings(values, n: int, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"{name} has {arr.shape[0] if arr.ndim else 0} entries for {n} pairs")
    if arr.dtype.kind not in "UO":
        raise ValueError(f"{name} must be strings, got dtype {arr.dtype}")
    return arr.astype(str) if arr.dtype.kind == "O" else arr


def _acceptance(accept_sorted: np.ndarray, mask_sorted: np.ndarray) -> float | None:
    n = int(np.count_nonzero(mask_sorted))
    return float(np.count_nonzero(accept_sorted & mask_sorted) / n) if n else None


def evaluate(labels, scores, types=None, attacks=None, *, threshold: float | None = None,
             bootstrap: int = 1000, seed: int = 0, method: str = "interpolated",
             fars=DEFAULT_FARS) -> dict:
    """All verification metrics for one set of scored pairs, as a JSON-ready dict.

    ``types`` (optional) gives each pair's type from :mod:`engine.datasets`
    (genuine, impostor, fake-of-same, fake-of-other; "" = unknown: such a
    negative counts only in the overall numbers) and must agree with the labels;
    all "" is the same as ``None``. ``attacks`` (optional) names the synthesis method of each
    fake pair ("" elsewhere). ``method`` picks the headline EER ("eer" and the
    split EERs); both variants are always reported as ``eer_interpolated`` and
    ``eer_organiser``. ``threshold``, if given, adds error rates at that
    operating point. ``bootstrap`` = number of resamples for the 95% CI (0 = none).
    Non-finite numbers (an infinite threshold) are written as ``None``.
    """
    from engine.datasets import FAKE_OF_OTHER, FAKE_OF_SAME, GENUINE, IMPOSTOR, PAIR_TYPES

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    lab, sc = check_inputs(labels, scores)
    n = len(lab)
    pairs = _SortedPairs(lab, sc)
    order = pairs.order
    slab = pairs.labels

    tps, fps, thr = pairs.counts()
    fpr, fnr = fps / fps[-1], 1.0 - tps / tps[-1]
    eer_i, thr_i = _eer_from_counts(tps, fps, thr, "interpolated")
    eer_o, thr_o = _eer_from_counts(tps, fps, thr, "organiser")
    eer, eer_thr = (eer_i, thr_i) if method == "interpolated" else (eer_o, thr_o)

    result: dict = {
        "method": method,
        "n_pairs": n,
        "n_positive": int(tps[-1]),
        "n_negative": int(fps[-1]),
        "eer": eer,
        "eer_threshold": _json_float(eer_thr),
        "eer_ci": None,
        "eer_ci_level": 0.95,
        "bootstrap": int(bootstrap),
        "seed": int(seed),
        "eer_interpolated": eer_i,
        "eer_interpolated_threshold": _json_float(thr_i),
        "eer_organiser": eer_o,
        "eer_organiser_threshold": _json_float(thr_o),
        "roc_auc": _auc(fpr, 1.0 - fnr),
        "tar_at_far": {f"{far:g}": v for far, v in _tar_at_far(tps, fps, fars).items()},
    }
    if bootstrap:
        result["eer_ci"] = list(_bootstrap_ci(tps, fps, int(bootstrap), seed, 0.05, method))

    # Pair-type masks, in sorted order.
    if types is not None:
        t = _check_strings(types, n, "types")
        if not (t != "").any():
            types = None  # no pair typed (LFW, say): the same as no types
    if types is not None:
        t = t[order]
        genuine = t == GENUINE
        impostor = t == IMPOSTOR
        fake_same, fake_other = t == FAKE_OF_SAME, t == FAKE_OF_OTHER
        typed = genuine | impostor | fake_same | fake_other
        bad = np.flatnonzero(~typed & (t != ""))
        if bad.size:
            raise ValueError(f"row {int(order[bad[0]])}: unknown pair type {str(t[bad[0]])!r}; "
                             f"expected one of {list(PAIR_TYPES)} or ''")
        wrong = np.flatnonzero(typed & (genuine != slab))
        if wrong.size:
            row = int(order[wrong[0]])
            raise ValueError(f"row {row}: type {str(t[wrong[0]])!r} contradicts label {int(slab[wrong[0]])}")
        result["counts"] = {name: int(np.count_nonzero(m)) for name, m in
                            ((GENUINE, genuine), (IMPOSTOR, impostor), (FAKE_OF_SAME, fake_same),
                             (FAKE_OF_OTHER, fake_other))}
        if not typed.all():
            result["counts"]["unknown"] = int(np.count_nonzero(~typed))
        fake = fake_same | fake_other
        genuine = slab  # every positive is genuine; untyped negatives only count overall
    else:
        genuine, impostor = slab, ~slab
        fake = np.zeros(n, dtype=bool)
        result["counts"] = {"positive": int(tps[-1]), "negative": int(fps[-1])}

    att = None
    if attacks is not None:
        att = _check_strings(attacks, n, "attacks")[order]
        if not (att != "").any():
            att = None  # no attack named anywhere: the same as no attacks
    if att is not None:
        if types is None:  # without types, a negative pair with an attack name holds a fake
            fake = ~slab & (att != "")
            impostor = ~slab & (att == "")
            result["counts"] = {GENUINE: int(tps[-1]), IMPOSTOR: int(np.count_nonzero(impostor)),
                                "fake": int(np.count_nonzero(fake))}

    def split_eer(neg_mask):
        if not genuine.any() or not neg_mask.any():
            return None, None
        sub = pairs.subset(genuine | neg_mask)
        st, sf, sthr = sub.counts()
        e, th = _eer_from_counts(st, sf, sthr, method)
        return e, _json_float(th)

    result["eer_real"], result["eer_real_threshold"] = split_eer(impostor)
    result["eer_fake"], result["eer_fake_threshold"] = split_eer(fake)
    if types is not None:
        result["eer_by_type"] = {name: split_eer(m)[0] for name, m in
                                 ((FAKE_OF_SAME, fake_same), (FAKE_OF_OTHER, fake_other))}

    def operating_point(th: float) -> dict:
        accept = pairs.scores >= th
        point = {
            "threshold": _json_float(th),
            "far": _acceptance(accept, ~slab),
            "frr": 1.0 - _acceptance(accept, slab),
            "impostor_acceptance_rate": _acceptance(accept, impostor),
            "fake_acceptance_rate": _acceptance(accept, fake),
        }
        if types is not None:
            point["fake_of_same_acceptance_rate"] = _acceptance(accept, fake_same)
            point["fake_of_other_acceptance_rate"] = _acceptance(accept, fake_other)
        return point

    result["at_eer_threshold"] = operating_point(eer_thr)
    if threshold is not None:
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold}")
        result["at_threshold"] = operating_point(float(threshold))

    if att is not None:
        by_attack = {}
        accept_eer = pairs.scores >= eer_thr
        fake_att = att[fake]
        for name in sorted(set(np.unique(fake_att).tolist()) - {""}):
            m = fake & (att == name)
            e, th = split_eer(m)
            entry = {"n_fake": int(np.count_nonzero(m)), "eer": e, "threshold": th,
                     "fake_acceptance_rate_at_eer_threshold": _acceptance(accept_eer, m)}
            if threshold is not None:
                entry["fake_acceptance_rate_at_threshold"] = _acceptance(pairs.scores >= threshold, m)
            by_attack[name] = entry
        result["eer_by_attack"] = by_attack
    return result
