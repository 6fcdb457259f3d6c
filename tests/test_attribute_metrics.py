"""Attribute metrics against hand-computed values (and scipy's, where it is installed, as a second reference)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ray_rm.eval.attribute_metrics import (attribute_report, average_ranks, combined_reward, pairwise_accuracy,
                                           pearson, spearman)


def test_average_ranks_share_ties():
    assert average_ranks([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]
    assert average_ranks([3, 1, 3, 3]).tolist() == [3, 1, 3, 3]  # the three 3s share ranks 2, 3, 4
    assert average_ranks([5, 5]).tolist() == [1.5, 1.5]
    assert average_ranks([]).tolist() == []


def test_pearson_and_spearman_by_hand():
    # x = [1, 2, 3], y = [2, 4, 7]: dx = [-1, 0, 1], dy = [-7/3, -1/3, 8/3]; sum dx dy = 5,
    # sum dx^2 = 2, sum dy^2 = 114/9  ->  r = 5 / sqrt(2 * 114 / 9)
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / math.sqrt(2 * 114 / 9))
    # no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / 60 = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties: ranks x = [1, 2.5, 2.5, 4], y = [1, 2, 3, 4]; dx = [-1.5, 0, 0, 1.5], dy = [-1.5, -.5, .5, 1.5]
    # sum dx dy = 4.5, sum dx^2 = 4.5, sum dy^2 = 5  ->  4.5 / sqrt(22.5)
    assert spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    # undefined: a constant side, or fewer than two points
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([4, 4], [1, 2]))
    assert math.isnan(pearson([1], [2])) and math.isnan(spearman([], []))


def test_against_scipy_on_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 200), rng.integers(0, 5, 200) + rng.integers(0, 2, 200)
    assert average_ranks(x) == pytest.approx(stats.rankdata(x))
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic)


def test_attribute_report_masks_missing_gold_values():
    predicted = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [0.0, 1.0]]
    gold = [[1, None], [4, 4], [math.nan, 8], [1, 1]]
    report = attribute_report(predicted, gold, ["helpfulness", "verbosity"])
    # helpfulness on rows 0, 1, 3: errors 0, -1, -1 -> rmse sqrt(2/3); p = [1, 3, 0], t = [1, 4, 1]
    h = report["helpfulness"]
    assert h["count"] == 3 and h["rmse"] == pytest.approx(math.sqrt(2 / 3))
    # p: dx = [-1/3, 5/3, -4/3], t: dy = [-1, 2, -1]; sum dx dy = 5, sum dx^2 = 42/9, sum dy^2 = 6
    assert h["pearson"] == pytest.approx(5 / math.sqrt(42 / 9 * 6))
    # ranks p = [2, 3, 1], t = [1.5, 3, 1.5]: dx = [0, 1, -1], dy = [-.5, 1, -.5]; 1.5 / sqrt(2 * 1.5)
    assert h["spearman"] == pytest.approx(1.5 / math.sqrt(3))
    # verbosity on rows 1, 2, 3: errors 0, -2, 0 -> rmse sqrt(4/3); a missing value is never read as 0
    v = report["verbosity"]
    assert v["count"] == 3 and v["rmse"] == pytest.approx(math.sqrt(4 / 3))
    assert v["pearson"] == pytest.approx(pearson([4, 6, 1], [4, 8, 1]))


def test_attribute_report_edge_cases():
    # no gold value at all for one attribute: count 0, every metric NaN
    report = attribute_report([[1.0, 2.0]], [[None, 3]], ["a", "b"])
    assert report["a"]["count"] == 0 and math.isnan(report["a"]["rmse"]) and math.isnan(report["a"]["pearson"])
    assert report["b"]["rmse"] == 1.0 and math.isnan(report["b"]["spearman"])  # one point: no correlation
    empty = attribute_report([], [], ["a"])
    assert empty["a"]["count"] == 0 and math.isnan(empty["a"]["rmse"])
    # a perfect predictor
    perfect = attribute_report([[0.0], [2.0], [4.0]], [[0], [2], [4]], ["a"])["a"]
    assert (perfect["rmse"], perfect["pearson"], perfect["spearman"]) == (0.0, pytest.approx(1.0), pytest.approx(1.0))
    with pytest.raises(ValueError, match="needs 2 values"):
        attribute_report([[1.0]], [[1, 2]], ["a", "b"])
    with pytest.raises(ValueError, match="rows"):
        attribute_report([[1.0], [2.0]], [[1]], ["a"])
    with pytest.raises(ValueError, match="finite"):
        attribute_report([[math.nan]], [[1]], ["a"])


def test_combined_reward_and_pairwise_accuracy():
    w = [1.0, -0.5]
    chosen = [[4, 0], [2, 2], [3, 2], [1, 0]]
    rejected = [[0, 0], [2, 0], [3, 2], [0, 4]]
    # combined: chosen 4, 1, 2, 1; rejected 0, 2, 2, -2 -> wins: yes, no, tie (wrong), yes -> 2 / 4
    assert combined_reward(chosen, w).tolist() == [4, 1, 2, 1]
    assert pairwise_accuracy(chosen, rejected, w) == 0.5
    assert pairwise_accuracy(chosen, rejected, [1.0, 0.0]) == 0.5  # 4>0, 2=2, 3=3, 1>0
    assert math.isnan(pairwise_accuracy([], [], w))
    with pytest.raises(ValueError, match="must be"):
        combined_reward(chosen, [1.0])
