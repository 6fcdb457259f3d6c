"""Fast tests: the eval metrics against independent computations (explicit loops, scipy)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, stats

from ray_rm.eval import metrics as M


def _ref_ece(d, bins, T=1.0):
    """ECE written independently of the implementation's index arithmetic: each pair's confidence
    sigmoid(|d| / T) is placed by comparing it with explicit bin edges 0.5 + 0.5 k / bins (the last bin
    closed), then each bin's |mean correctness - mean confidence| is weighted by its share of pairs."""
    edges = [0.5 + 0.5 * k / bins for k in range(bins + 1)]
    members = {k: [] for k in range(bins)}
    for x in d:
        conf = 1 / (1 + math.exp(-abs(x) / T))
        k = next(k for k in range(bins) if edges[k] <= conf < edges[k + 1] or (k == bins - 1 and conf <= 1.0))
        members[k].append((conf, 1.0 if x > 0 else 0.0))
    total = 0.0
    for pairs in members.values():
        if pairs:
            confidence = sum(c for c, _ in pairs) / len(pairs)
            accuracy = sum(a for _, a in pairs) / len(pairs)
            total += len(pairs) / len(d) * abs(accuracy - confidence)
    return total


def test_ece_by_hand():
    """sigmoid(ln 1.5) = 0.6, sigmoid(ln 4) = 0.8; a tie has confidence 0.5 and counts as wrong. With two bins
    [0.5, 0.75) and [0.75, 1]: bin 1 holds confidences 0.6 (right) and 0.5 (tie): |0.5 - 0.55| = 0.05; bin 2 holds
    0.8 right and 0.8 wrong: |0.5 - 0.8| = 0.3; ECE = 2/4 * 0.05 + 2/4 * 0.3 = 0.175."""
    d = np.array([math.log(1.5), 0.0, math.log(4.0), -math.log(4.0)])
    assert M.reliability(d, 2)["ece"] == pytest.approx(0.175, abs=1e-12)
    assert [b["count"] for b in M.reliability(d, 2)["bins"]] == [2, 2]


def test_pairwise_metrics_match_reference():
    rng = np.random.default_rng(0)
    d = np.concatenate([rng.normal(0.8, 1.5, 500), [0.0, 0.0]])
    assert M.accuracy(d) == pytest.approx(np.sum(d > 0) / d.size)
    assert M.reliability(d, 10)["ece"] == pytest.approx(_ref_ece(d, 10), abs=1e-12)
    ref = optimize.minimize_scalar(lambda t: np.mean(np.log1p(np.exp(-d / t))), bounds=(0.01, 100),
                                   method="bounded", options={"xatol": 1e-10})
    T = M.fit_temperature(d)
    assert T == pytest.approx(ref.x, rel=1e-4)
    assert M.reliability(d, 10, T)["ece"] == pytest.approx(_ref_ece(d, 10, T), abs=1e-12)
    assert M.nll(d, T) <= M.nll(d, 1.0) + 1e-12
    bins = M.reliability(d, 5)["bins"]
    assert sum(b["count"] for b in bins) == d.size and bins[0]["lo"] == 0.5 and bins[-1]["hi"] == 1.0


def test_kendall_tau_b_matches_scipy_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(50):
        k = int(rng.integers(3, 8))
        x = rng.integers(0, 3, k).astype(float)
        y = rng.integers(0, 4, k).astype(float)
        want = stats.kendalltau(x, y).statistic
        got = M.kendall_tau_b(x, y)
        assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want)


def test_kway_pairs_ranking_and_sections():
    exs = [M.ScoredExample("a", [3.0, 1.0, 2.0], [0, 1, 2], [10, 20, 30], "alpacaeval-easy"),
           M.ScoredExample("b", [1.0, 1.0], [0, 1], [5, 5], "mt-bench-hard"),
           M.ScoredExample("c", [2.0, 0.0], [0, 1], [50, 8], "math-prm"),
           M.ScoredExample("d", [0.0, 2.0], [0, 1], [7, 9], "hep-go"),
           M.ScoredExample("e", [1.0, 0.5, 0.5, 0.0], [0, 1, 1, 2], [1, 2, 3, 4], "custom")]
    pairs = M.to_pairs(exs)
    # a: (0,1) +2, (0,2) +1, (1,2) -1; b: 0; c: +2; d: -2; e: 5 ordered pairs (the tied middle pair is skipped)
    assert pairs.margin.size == 3 + 1 + 1 + 1 + 5
    r = M.compute_metrics(exs)
    assert r["accuracy"] == pytest.approx(np.mean(pairs.margin > 0)) and r["ties"] == 1
    rk = r["ranking"]
    assert rk["num_rows"] == 2
    assert rk["kendall_tau"] == pytest.approx(np.mean([stats.kendalltau([3, 1, 2], [0, -1, -2]).statistic,
                                                       stats.kendalltau([1, .5, .5, 0], [0, -1, -1, -2]).statistic]))
    rb = r["rewardbench"]
    assert rb["sections"]["Chat"] == pytest.approx(2 / 3)
    assert rb["sections"]["Chat Hard"] == 0.0  # a tie is wrong
    assert rb["sections"]["Reasoning"] == pytest.approx(984 / (984 + 164))  # RewardBench's count weights
    assert rb["sections"]["Other"] == 1.0
    # the v1 score is the mean of its four sections (Chat, Chat Hard, Safety, Reasoning) present; Other is excluded
    assert rb["score"] == pytest.approx(np.mean([rb["sections"][s] for s in ("Chat", "Chat Hard", "Reasoning")]))
    assert rb["score"] == pytest.approx((2 / 3 + 0.0 + 984 / 1148) / 3)


def test_length_bias_and_buckets():
    d = np.array([1.0, -1.0, 2.0, 0.5, -0.3, 0.2])
    lb = np.array([10, 10, 40, 40, 80, 80.0])
    lw = np.array([5, 20, 40, 30, 90, 10.0])
    pairs = M.ScoredPairs(d, lb, lw, np.array([None] * 6, dtype=object))
    bias = M.length_bias(pairs)
    assert bias["pairs_unequal_length"] == 5
    # longer wins: #0 (chosen longer, d>0), #1 (rejected longer, d<0), #3, #4 (rejected longer, d<0), #5
    assert bias["rm_prefers_longer_rate"] == pytest.approx(5 / 5)
    assert bias["accuracy_chosen_longer"] == pytest.approx(1.0)
    assert bias["accuracy_chosen_shorter"] == pytest.approx(0.0)
    buckets = M.length_buckets(pairs, 3)
    assert sum(b["count"] for b in buckets) == 6
    assert sum(b["accuracy"] * b["count"] for b in buckets) == pytest.approx(np.sum(d > 0))
