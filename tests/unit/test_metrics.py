"""engine.metrics: EER variants, ROC, TAR@FAR, k-fold accuracy, bootstrap, evaluate()."""
from __future__ import annotations

import itertools
import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine import metrics as M
from engine.datasets import FAKE_OF_OTHER, FAKE_OF_SAME, GENUINE, IMPOSTOR

# A table worked out by hand. Sorted by descending score:
#   score  0.9 0.8 0.7 0.4 0.3 0.2 0.1
#   label   P   P   N   P   N   N   N        (P = 3 positives, N = 4 negatives)
# ROC points (accept score >= thr):
#   thr   inf  0.9  0.8  0.7  0.4  0.3  0.2  0.1
#   FNR    1   2/3  1/3  1/3   0    0    0    0
#   FPR    0    0    0   1/4  1/4  1/2  3/4   1
#   FNR-FPR 1  2/3  1/3  1/12 -1/4 ...
# Interpolated: the sign changes between thr 0.7 (d = 1/12) and 0.4 (d = -1/4);
#   t = (1/12) / (1/12 + 1/4) = 1/4; EER = 1/4 + t * (1/4 - 1/4) = 1/4 (FNR: 1/3 + t*(0 - 1/3) = 1/4);
#   threshold = 0.7 + t * (0.4 - 0.7) = 0.625.
# Organiser: |FNR-FPR| is smallest (1/12) at thr 0.7, where FNR = 1/3.
# AUC: 0.9 and 0.8 beat all 4 negatives, 0.4 beats 3: 11/12.
HAND_SCORES = [0.9, 0.8, 0.7, 0.4, 0.3, 0.2, 0.1]
HAND_LABELS = [1, 1, 0, 1, 0, 0, 0]


def random_pairs(n, seed, separation=1.0, decimals=None):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = rng.normal(size=n) + separation * y
    return y, (np.round(s, decimals) if decimals is not None else s)


def loop_eer(labels, scores):
    """Independent interpolated EER: scan thresholds with plain Python counting."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    prev = (1.0, 0.0)  # (fnr, fpr) when nothing is accepted
    for thr in sorted(set(scores), reverse=True):
        fnr = sum(s < thr for s in pos) / len(pos)
        fpr = sum(s >= thr for s in neg) / len(neg)
        if fnr - fpr <= 0:
            d0, d1 = prev[0] - prev[1], fnr - fpr
            t = d0 / (d0 - d1)
            return prev[1] + t * (fpr - prev[1])
        prev = (fnr, fpr)
    raise AssertionError("no crossing")


def test_hand_computed_table():
    eer, thr = M.equal_error_rate(HAND_LABELS, HAND_SCORES)
    assert eer == pytest.approx(0.25)
    assert thr == pytest.approx(0.625)
    eer_o, thr_o = M.equal_error_rate(HAND_LABELS, HAND_SCORES, method="organiser")
    assert eer_o == pytest.approx(1 / 3)
    assert thr_o == pytest.approx(0.7)
    assert M.roc_auc(HAND_LABELS, HAND_SCORES) == pytest.approx(11 / 12)
    fpr, tpr, thr_all = M.roc_curve(HAND_LABELS, HAND_SCORES)
    np.testing.assert_allclose(fpr, [0, 0, 0, 1 / 4, 1 / 4, 1 / 2, 3 / 4, 1])
    np.testing.assert_allclose(1 - tpr, [1, 2 / 3, 1 / 3, 1 / 3, 0, 0, 0, 0])
    assert thr_all[0] == np.inf
    # At the interpolated threshold 0.625: 0.4 (positive) rejected, 0.7 (negative) accepted.
    assert M.rates_at_threshold(HAND_LABELS, HAND_SCORES, 0.625) == {"far": 0.25, "frr": pytest.approx(1 / 3)}
    assert M.tar_at_far(HAND_LABELS, HAND_SCORES, fars=(0.1, 0.25, 0.5)) == {0.1: None, 0.25: 1.0, 0.5: 1.0}


def test_perfect_separation_is_zero_at_lowest_positive():
    labels = [1, 1, 1, 0, 0, 0]
    scores = [0.95, 0.9, 0.7, 0.6, 0.2, -0.3]
    for method in M.METHODS:
        eer, thr = M.equal_error_rate(labels, scores, method=method)
        assert eer == 0.0
        assert thr == 0.7
    assert M.roc_auc(labels, scores) == 1.0
    assert M.rates_at_threshold(labels, scores, 0.7) == {"far": 0.0, "frr": 0.0}


def test_perfectly_wrong_scores_give_one():
    assert M.equal_error_rate([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1])[0] == 1.0
    assert M.roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0


def test_identical_distributions_near_half():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 20000)
    scores = rng.normal(size=20000)
    eer, _ = M.equal_error_rate(labels, scores)
    assert abs(eer - 0.5) < 0.02
    assert abs(M.roc_auc(labels, scores) - 0.5) < 0.02


def test_constant_scores():
    # One ROC step from (0,0) to (1,1): interpolation crosses at 0.5; the organiser's
    # argmin ties at both ends and takes the first, where FNR = 1.
    labels, scores = [0, 1, 0, 1], [0.3] * 4
    assert M.equal_error_rate(labels, scores) == (0.5, 0.3)
    assert M.equal_error_rate(labels, scores, method="organiser")[0] == 1.0


@pytest.mark.parametrize("seed", range(6))
def test_roc_matches_sklearn(seed):
    sk = pytest.importorskip("sklearn.metrics")
    labels, scores = random_pairs(400, seed, decimals=seed % 3)  # rounding makes ties
    fpr, tpr, thr = M.roc_curve(labels, scores)
    sfpr, stpr, sthr = sk.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_array_equal(thr[1:], sthr[1:])
    assert thr[0] == np.inf and sthr[0] > scores.max()  # sklearn >= 1.3 also uses inf
    np.testing.assert_allclose(fpr, sfpr, rtol=0, atol=1e-15)
    np.testing.assert_allclose(tpr, stpr, rtol=0, atol=1e-15)
    assert M.roc_auc(labels, scores) == pytest.approx(sk.roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_organiser_variant_matches_its_definition(seed):
    sk = pytest.importorskip("sklearn.metrics")
    labels, scores = random_pairs(300, seed + 10, decimals=1 + seed % 2)
    fpr, tpr, thr = sk.roc_curve(labels, scores)  # the organisers' eer.py: sklearn's default ROC
    fnr = 1 - tpr
    i = np.argmin(np.abs(fnr - fpr))
    assert M.equal_error_rate(labels, scores, method="organiser") == (pytest.approx(fnr[i]), thr[i])


@pytest.mark.parametrize("seed", range(4))
def test_interpolated_matches_threshold_scan(seed):
    labels, scores = random_pairs(150, seed + 20, decimals=seed % 2 + 1)
    eer, thr = M.equal_error_rate(labels, scores)
    assert eer == pytest.approx(loop_eer(labels.tolist(), scores.tolist()), abs=1e-12)
    eer_o, _ = M.equal_error_rate(labels, scores, method="organiser")
    assert abs(eer - eer_o) < 0.05  # both sit at the same crossing of the ROC


def test_unknown_method_rejected():
    with pytest.raises(ValueError, match="method"):
        M.equal_error_rate(HAND_LABELS, HAND_SCORES, method="nearest")


def test_tar_at_far_monotone_and_matches_brute_force():
    labels, scores = random_pairs(5000, 7, separation=2.0)
    fars = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 0.5)
    tar = M.tar_at_far(labels, scores, fars=fars)
    n_neg = int(np.sum(labels == 0))
    assert tar[1e-4] is None and 1e-4 < 1 / n_neg
    values = [tar[f] for f in fars[1:]]
    assert all(v is not None for v in values)
    assert values == sorted(values)
    assert values[0] < values[-1]
    pos, neg = scores[labels == 1], scores[labels == 0]
    for far in fars[1:]:
        best = max(np.mean(pos >= t) for t in np.unique(scores) if np.mean(neg >= t) <= far)
        assert tar[far] == pytest.approx(best)


@pytest.mark.parametrize("labels, message", [
    ([0, 1, 2, 1], "row 2"),
    ([0, 1, -1, 1], "row 2"),
    ([1, 1, 1, 1], "no negative"),
    ([0, 0, 0, 0], "no positive"),
    (["a", "b", "a", "b"], "0 or 1"),
])
def test_label_validation(labels, message):
    with pytest.raises(ValueError, match=message):
        M.equal_error_rate(labels, [0.1, 0.2, 0.3, 0.4])


def test_label_forms_accepted():
    scores = [0.1, 0.2, 0.3, 0.4]
    expected = M.equal_error_rate([0, 0, 1, 1], scores)
    assert M.equal_error_rate([False, False, True, True], scores) == expected
    assert M.equal_error_rate([0.0, 0.0, 1.0, 1.0], scores) == expected


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scores_name_the_row(bad):
    with pytest.raises(ValueError, match=r"row 3 has"):
        M.equal_error_rate([0, 1, 0, 1, 0], [0.1, 0.2, 0.3, bad, 0.5])
    with pytest.raises(ValueError, match="row 3"):
        M.evaluate([0, 1, 0, 1, 0], [0.1, 0.2, 0.3, bad, 0.5], bootstrap=0)


def test_length_mismatch_and_empty():
    with pytest.raises(ValueError, match="length mismatch"):
        M.equal_error_rate([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="empty"):
        M.roc_curve([], [])


def test_kfold_constructed_case():
    # 10 folds x 4 pairs: positives score 1.0, negatives 0.0, except one negative in
    # fold 3 scoring 1.0. Every training split picks threshold 0.5 (midway between
    # the two scores); fold 3 then gets 3/4 right, all others 4/4.
    labels = np.tile([1, 1, 0, 0], 10)
    scores = labels.astype(float)
    scores[3 * 4 + 2] = 1.0
    res = M.kfold_accuracy(labels, scores, 10)
    assert res["per_fold"] == [1.0] * 3 + [0.75] + [1.0] * 6
    assert res["thresholds"] == [0.5] * 10
    assert res["mean"] == pytest.approx(0.975)
    assert res["std"] == pytest.approx(0.075)  # population std: sqrt((9*0.025^2 + 0.225^2)/10)
    by_id = M.kfold_accuracy(labels, scores, np.repeat(np.arange(10), 4))
    assert by_id == res


def test_kfold_picks_threshold_on_other_folds_only():
    # Fold 1 alone would need a threshold near 5; the other fold says midway 0.5.
    labels = np.array([1, 0, 1, 0])
    scores = np.array([1.0, 0.0, 10.0, 2.0])
    res = M.kfold_accuracy(labels, scores, [0, 0, 1, 1])
    assert res["thresholds"] == [6.0, 0.5]  # fold 0 trained on {10 (P), 2 (N)}: midway 6
    assert res["per_fold"] == [0.5, 0.5]


def test_kfold_rejects_bad_folds():
    with pytest.raises(ValueError, match="folds"):
        M.kfold_accuracy([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], 1)
    with pytest.raises(ValueError, match="entries"):
        M.kfold_accuracy([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], [0, 1])


def test_bootstrap_ci_contains_eer_and_is_deterministic():
    labels, scores = random_pairs(3000, 11)
    eer, _ = M.equal_error_rate(labels, scores)
    low, high = M.bootstrap_eer_ci(labels, scores, n=500, seed=5)
    assert low < eer < high
    assert high - low < 0.1
    assert M.bootstrap_eer_ci(labels, scores, n=500, seed=5) == (low, high)
    assert M.bootstrap_eer_ci(labels, scores, n=500, seed=6) != (low, high)
    lo_o, hi_o = M.bootstrap_eer_ci(labels, scores, n=500, seed=5, method="organiser")
    assert lo_o <= M.equal_error_rate(labels, scores, method="organiser")[0] <= hi_o
    # More pairs from the same distributions: a narrower interval.
    big_l, big_s = random_pairs(30000, 12)
    b_low, b_high = M.bootstrap_eer_ci(big_l, big_s, n=500, seed=5)
    assert b_high - b_low < (high - low) / 2


@pytest.mark.parametrize("method", M.METHODS)
def test_bootstrap_draws_have_the_exact_resampling_distribution(method):
    """The bisection sampler must match resampling every pair; enumerate all resamples."""
    pos = [0.9, 0.55, 0.3]
    neg = [0.6, 0.35, 0.1]
    exact = Counter()
    for pi in itertools.product(range(3), repeat=3):
        for ni in itertools.product(range(3), repeat=3):
            s = [pos[i] for i in pi] + [neg[i] for i in ni]
            eer = M.equal_error_rate([1, 1, 1, 0, 0, 0], s, method=method)[0]
            exact[round(eer, 9)] += 1 / 729
    pairs = M._SortedPairs(*M.check_inputs([1, 1, 1, 0, 0, 0], pos + neg))
    tps, fps, _ = pairs.counts()
    draws = M._bootstrap_eers(tps, fps, 60000, np.random.default_rng(0), method)
    seen = Counter(np.round(draws, 9).tolist())
    assert set(seen) <= set(exact)
    for value, p in exact.items():
        assert seen[value] / 60000 == pytest.approx(p, abs=0.01), value


def test_bootstrap_argument_checks():
    with pytest.raises(ValueError, match="n must be"):
        M.bootstrap_eer_ci(HAND_LABELS, HAND_SCORES, n=0)
    with pytest.raises(ValueError, match="alpha"):
        M.bootstrap_eer_ci(HAND_LABELS, HAND_SCORES, alpha=1.5)


def typed_pairs(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    types = rng.choice([GENUINE, IMPOSTOR, FAKE_OF_SAME, FAKE_OF_OTHER], n, p=[0.4, 0.3, 0.2, 0.1])
    labels = (types == GENUINE).astype(int)
    shift = {GENUINE: 2.0, IMPOSTOR: 0.0, FAKE_OF_SAME: 1.2, FAKE_OF_OTHER: 0.3}
    scores = rng.normal(size=n) + np.array([shift[t] for t in types])
    attacks = np.where(np.isin(types, [FAKE_OF_SAME, FAKE_OF_OTHER]), rng.choice(["swap", "morph"], n), "")
    scores[attacks == "morph"] += 0.5  # morphs fool the model more
    return labels, scores, types, attacks


def assert_plain_json(value):
    if isinstance(value, dict):
        for k, v in value.items():
            assert type(k) is str
            assert_plain_json(v)
    elif isinstance(value, list):
        for v in value:
            assert_plain_json(v)
    else:
        assert value is None or type(value) in (int, float, str, bool), (value, type(value))


def test_evaluate_splits_by_type_and_attack():
    labels, scores, types, attacks = typed_pairs()
    r = M.evaluate(labels, scores, types, attacks, threshold=1.0, bootstrap=200, seed=1)
    assert_plain_json(r)
    json.dumps(r, allow_nan=False)

    genuine = types == GENUINE
    fake = np.isin(types, [FAKE_OF_SAME, FAKE_OF_OTHER])
    assert (r["eer"], r["eer_threshold"]) == M.equal_error_rate(labels, scores)
    assert r["eer_organiser"] == M.equal_error_rate(labels, scores, method="organiser")[0]
    real = genuine | (types == IMPOSTOR)
    assert r["eer_real"] == M.equal_error_rate(labels[real], scores[real])[0]
    assert r["eer_fake"] == M.equal_error_rate(labels[genuine | fake], scores[genuine | fake])[0]
    same = genuine | (types == FAKE_OF_SAME)
    assert r["eer_by_type"][FAKE_OF_SAME] == M.equal_error_rate(labels[same], scores[same])[0]
    assert r["counts"] == {t: int(np.sum(types == t)) for t in (GENUINE, IMPOSTOR, FAKE_OF_SAME, FAKE_OF_OTHER)}
    assert r["roc_auc"] == pytest.approx(M.roc_auc(labels, scores))
    assert r["tar_at_far"]["0.0001"] is None  # 2400 negatives
    assert r["tar_at_far"]["0.01"] == M.tar_at_far(labels, scores)[0.01]
    low, high = r["eer_ci"]
    assert low < r["eer"] < high

    thr = r["eer_threshold"]
    point = r["at_eer_threshold"]
    assert point["fake_acceptance_rate"] == pytest.approx(np.mean(scores[fake] >= thr))
    assert point["impostor_acceptance_rate"] == pytest.approx(np.mean(scores[types == IMPOSTOR] >= thr))
    assert point["far"] == pytest.approx(M.rates_at_threshold(labels, scores, thr)["far"])
    given = r["at_threshold"]
    assert given["threshold"] == 1.0
    assert {k: given[k] for k in ("far", "frr")} == pytest.approx(M.rates_at_threshold(labels, scores, 1.0))

    assert set(r["eer_by_attack"]) == {"swap", "morph"}
    for name, entry in r["eer_by_attack"].items():
        m = genuine | (attacks == name)
        assert entry["n_fake"] == int(np.sum(attacks == name))
        assert entry["eer"] == M.equal_error_rate(labels[m], scores[m])[0]
        assert entry["fake_acceptance_rate_at_eer_threshold"] == pytest.approx(
            np.mean(scores[attacks == name] >= thr))
    assert r["eer_by_attack"]["morph"]["eer"] > r["eer_by_attack"]["swap"]["eer"]


def test_evaluate_does_not_depend_on_row_order():
    labels, scores, types, attacks = typed_pairs(2000, seed=4)
    perm = np.random.default_rng(9).permutation(len(labels))
    a = M.evaluate(labels, scores, types, attacks, bootstrap=100)
    b = M.evaluate(labels[perm], scores[perm], types[perm], attacks[perm], bootstrap=100)
    assert a == b


def test_evaluate_without_types_and_organiser_headline():
    labels, scores = random_pairs(1000, 2)
    r = M.evaluate(labels, scores, bootstrap=0, method="organiser")
    assert r["eer_ci"] is None
    assert r["eer"] == r["eer_organiser"] == M.equal_error_rate(labels, scores, method="organiser")[0]
    assert r["eer_interpolated"] == M.equal_error_rate(labels, scores)[0]
    assert r["eer_real"] == r["eer"]  # without types every negative is a real impostor
    assert r["eer_fake"] is None
    assert r["counts"] == {"positive": int(labels.sum()), "negative": int((1 - labels).sum())}
    json.dumps(r, allow_nan=False)


def test_evaluate_attacks_without_types():
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.4, 0.7, 0.85, 0.2, 0.1])
    attacks = np.array(["", "", "", "", "swap", "", ""])
    r = M.evaluate(labels, scores, attacks=attacks, bootstrap=0)
    assert r["counts"] == {GENUINE: 3, IMPOSTOR: 3, "fake": 1}
    assert r["eer_by_attack"]["swap"]["n_fake"] == 1
    assert r["at_eer_threshold"]["fake_acceptance_rate"] == 1.0  # 0.85 beats the EER threshold


def test_evaluate_rejects_inconsistent_types():
    with pytest.raises(ValueError, match=r"row 1: type 'impostor' contradicts label 1"):
        M.evaluate([0, 1, 1], [0.1, 0.2, 0.3], [IMPOSTOR, IMPOSTOR, GENUINE], bootstrap=0)
    with pytest.raises(ValueError, match=r"row 2: unknown pair type 'deepfake'"):
        M.evaluate([0, 1, 0], [0.1, 0.2, 0.3], [IMPOSTOR, GENUINE, "deepfake"], bootstrap=0)
    with pytest.raises(ValueError, match="types has 2 entries"):
        M.evaluate([0, 1, 0], [0.1, 0.2, 0.3], [IMPOSTOR, GENUINE], bootstrap=0)


def test_evaluate_unknown_types_counted():
    r = M.evaluate([0, 1, 0, 1], [0.1, 0.9, 0.3, 0.6], [IMPOSTOR, GENUINE, "", GENUINE], bootstrap=0)
    assert r["counts"]["unknown"] == 1
    assert r["counts"][IMPOSTOR] == 1


def test_evaluate_all_empty_types_same_as_none():
    labels, scores = random_pairs(500, 8)
    a = M.evaluate(labels, scores, [""] * 500, [""] * 500, bootstrap=0)
    b = M.evaluate(labels, scores, bootstrap=0)
    assert {k: a[k] for k in ("eer", "eer_real", "eer_fake", "counts")} == \
        {k: b[k] for k in ("eer", "eer_real", "eer_fake", "counts")}
    assert a == b


def test_evaluate_untyped_negatives_only_count_overall():
    # The untyped negative (0.95) hurts the overall EER but no split.
    labels = [1, 1, 1, 0, 0, 0]
    scores = [0.9, 0.8, 0.7, 0.2, 0.1, 0.95]
    r = M.evaluate(labels, scores, [GENUINE, "", GENUINE, IMPOSTOR, FAKE_OF_SAME, ""], bootstrap=0)
    assert r["eer"] > 0
    assert r["eer_real"] == 0.0 and r["eer_fake"] == 0.0
    assert r["counts"] == {GENUINE: 2, IMPOSTOR: 1, FAKE_OF_SAME: 1, FAKE_OF_OTHER: 0, "unknown": 2}


# --------------------------------------------------- the organisers' scorer exactly

def _sklearn_organiser_eer(labels, scores):
    """The organisers' rule with sklearn itself: FNR at argmin |FNR - FPR| on roc_curve's default ROC."""
    sk = pytest.importorskip("sklearn.metrics")
    fpr, tpr, thr = sk.roc_curve(labels, scores)  # drop_intermediate=True, as in their eer.py
    i = int(np.nanargmin(np.abs((1 - tpr) - fpr)))
    return float(1 - tpr[i]), float(thr[i])


# Small sets drawn from few score values: ties and equal-step runs, where dropping matters.
small_score_sets = st.integers(2, 14).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 1), min_size=n, max_size=n).filter(lambda y: 0 < sum(y) < len(y)),
    st.lists(st.one_of(st.integers(-3, 3).map(float), st.floats(-1, 1, allow_nan=False, width=32)),
             min_size=n, max_size=n)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(small_score_sets)
@example(([0, 0, 0, 1, 1], [0.0, 1.0, 2.0, 0.0, 1.0]))  # full ROC says 0.5, the organisers say 1.0
def test_organiser_eer_matches_sklearn_default_roc(data):
    labels, scores = data
    assert M.equal_error_rate(labels, scores, method="organiser") == _sklearn_organiser_eer(labels, scores)
    r = M.evaluate(labels, scores, bootstrap=0, method="organiser")
    assert (r["eer"], r["eer_organiser"]) == (_sklearn_organiser_eer(labels, scores)[0],) * 2


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(small_score_sets)
def test_roc_curve_drop_intermediate_matches_sklearn(data):
    sk = pytest.importorskip("sklearn.metrics")
    labels, scores = data
    for ours, theirs in zip(M.roc_curve(labels, scores, drop_intermediate=True), sk.roc_curve(labels, scores)):
        np.testing.assert_array_equal(ours, theirs)


def test_organiser_eer_drops_intermediate_points():
    # Sorted: 2 (N), 1 (N, P), 0 (N, P): points (T, F) = (0,0) (0,1) (1,2) (2,3), FNR - FPR =
    # 1, 2/3, -1/6, -1. The full ROC picks (1,2), FNR 0.5; sklearn drops (1,2), the middle of two
    # equal steps (+1 P, +1 N), so the organisers' scorer picks (0,1), FNR 1.0 at threshold 2.
    labels, scores = [0, 0, 0, 1, 1], [0.0, 1.0, 2.0, 0.0, 1.0]
    fpr, tpr, _ = M.roc_curve(labels, scores)
    full = float((1 - tpr)[np.argmin(np.abs(1 - tpr - fpr))])
    assert full == 0.5  # what --method organiser said before: not the organisers' number
    assert M.equal_error_rate(labels, scores, method="organiser") == (1.0, 2.0)
    assert len(M.roc_curve(labels, scores, drop_intermediate=True)[0]) < len(fpr)


@pytest.mark.parametrize("pos,neg", [([2.0, 1.0, 0.0], [2.0, 1.0, 0.0]), ([1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0])])
def test_bootstrap_organiser_follows_the_dropping_rule_exactly(pos, neg):
    """Enumerate every resample (ties make sklearn drop points near the crossing)."""
    labels = [1] * len(pos) + [0] * len(neg)
    exact = Counter()
    weight = 1 / (len(pos) ** len(pos) * len(neg) ** len(neg))
    for pi in itertools.product(range(len(pos)), repeat=len(pos)):
        for ni in itertools.product(range(len(neg)), repeat=len(neg)):
            s = [pos[i] for i in pi] + [neg[i] for i in ni]
            exact[round(_sklearn_organiser_eer(labels, s)[0], 9)] += weight
    tps, fps, _ = M._SortedPairs(*M.check_inputs(labels, pos + neg)).counts()
    draws = M._bootstrap_eers(tps, fps, 60000, np.random.default_rng(0), "organiser")
    seen = Counter(np.round(draws, 9).tolist())
    assert set(seen) <= set(exact)
    for value, p in exact.items():
        assert seen[value] / 60000 == pytest.approx(p, abs=0.008), value


# ------------------------------------------------- submission row order (positional scorer)

from engine.submission import main as scorer_main  # noqa: E402  (the scorer CLI lives beside the submission reader)


def _labels_and_submission(tmp_path, sub_order):
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("pair_id,label\n" + "".join(f"{k:08d},{k % 2}\n" for k in range(6)))
    sub = tmp_path / "sub.csv"
    sub.write_text("pair_id,similarity\n" + "".join(f"{k:08d},{0.1 * k}\n" for k in sub_order))
    return labels_csv, sub


def test_cli_warns_when_submission_rows_are_not_in_label_order(tmp_path, capsys):
    labels_csv, sub = _labels_and_submission(tmp_path, [1, 0, 2, 3, 4, 5])
    assert scorer_main(["--submission", str(sub), "--labels", str(labels_csv), "--bootstrap", "0"]) == 0
    err = capsys.readouterr().err
    assert "rows are not in the order of" in err and "row 1: 00000001, labels: 00000000" in err
    assert "pairs rows by position" in err and len(err.strip().splitlines()) == 1


def test_cli_quiet_when_submission_rows_follow_the_labels(tmp_path, capsys):
    labels_csv, sub = _labels_and_submission(tmp_path, range(6))
    assert scorer_main(["--submission", str(sub), "--labels", str(labels_csv), "--bootstrap", "0"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_cli_help_documents_the_positional_scorer(capsys):
    with pytest.raises(SystemExit):
        scorer_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "by position" in text and "drop_intermediate" in text


def test_submission_pair_ids_are_ascii_digits_only(tmp_path):
    from engine import submission

    with pytest.raises(ValueError, match="ASCII digits"):
        submission.write_submission(tmp_path / "sub.csv", ["٠٠٠٠٠٠٠١"], np.array([0.5]))
    labels_csv, sub = _labels_and_submission(tmp_path, range(6))
    sub.write_text(sub.read_text().replace("00000001,", "٠٠٠٠٠٠٠١,"))  # int() would read it as 1
    with pytest.warns(submission.SubmissionWarning) as record:
        result = submission.score_submission(sub, labels_csv, bootstrap=0)
    assert result["join"]["missing"] == ["00000001"] and result["join"]["extra"] == ["٠٠٠٠٠٠٠١"]
    assert any("not in" in str(w.message) for w in record)
