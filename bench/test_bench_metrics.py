"""Speed of the metric code on one million scored pairs (pytest-benchmark).

Run: ``python -m pytest bench/test_bench_metrics.py --benchmark-only``
(bench/ is outside the default test paths, so the unit suite never runs this).
"""
from __future__ import annotations

import numpy as np
import pytest

from engine import metrics
from engine.datasets import FAKE_OF_OTHER, FAKE_OF_SAME, GENUINE, IMPOSTOR

N_PAIRS = 1_000_000


@pytest.fixture(scope="module")
def million_pairs():
    rng = np.random.default_rng(0)
    types = rng.choice(np.array([GENUINE, IMPOSTOR, FAKE_OF_SAME, FAKE_OF_OTHER]), N_PAIRS,
                       p=[0.5, 0.2, 0.2, 0.1])
    labels = types == GENUINE
    # float32 cosine similarities, as a model produces them (many exact ties).
    scores = np.clip(rng.normal(0.1, 0.2, N_PAIRS) + 0.5 * labels + 0.3 * (types == FAKE_OF_SAME),
                     -1, 1).astype(np.float32)
    fake = (types == FAKE_OF_SAME) | (types == FAKE_OF_OTHER)
    attacks = np.where(fake, rng.choice(np.array(["faceswap", "morph", "selfblend"]), N_PAIRS), "")
    return labels, scores, types, attacks


def run(benchmark, fn, *args, **kwargs):
    return benchmark.pedantic(fn, args=args, kwargs=kwargs, rounds=5, iterations=1, warmup_rounds=1)


def test_equal_error_rate_1m(benchmark, million_pairs):
    labels, scores, _, _ = million_pairs
    eer, _ = run(benchmark, metrics.equal_error_rate, labels, scores)
    assert 0 < eer < 0.5


def test_evaluate_1m_plain(benchmark, million_pairs):
    labels, scores, _, _ = million_pairs
    run(benchmark, metrics.evaluate, labels, scores, bootstrap=0)


def test_evaluate_1m_types_attacks(benchmark, million_pairs):
    labels, scores, types, attacks = million_pairs
    r = run(benchmark, metrics.evaluate, labels, scores, types, attacks, bootstrap=0)
    assert set(r["eer_by_attack"]) == {"faceswap", "morph", "selfblend"}


def test_evaluate_1m_types_attacks_bootstrap1000(benchmark, million_pairs):
    labels, scores, types, attacks = million_pairs
    r = run(benchmark, metrics.evaluate, labels, scores, types, attacks, bootstrap=1000)
    assert r["eer_ci"][0] <= r["eer"] <= r["eer_ci"][1]


def test_bootstrap_ci_1m_1000(benchmark, million_pairs):
    labels, scores, _, _ = million_pairs
    run(benchmark, metrics.bootstrap_eer_ci, labels, scores, n=1000)
