"""PRM metrics and aggregations against hand-computed values.

Scores are written as logits of round probabilities (``logit(0.9)``), so every expected value below is
arithmetic on those probabilities, done by hand in the comments.
"""
from __future__ import annotations

import math

import pytest

from ray_rm.eval.prm_metrics import (aggregate, best_of_n, first_bad_step, first_error, processbench,
                                     reliability_by_position, step_accuracy)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def scores(*probs):
    return [logit(p) for p in probs]


def test_aggregations_act_on_step_probabilities():
    s = scores(0.9, 0.2, 0.7)
    assert aggregate(s, "min") == pytest.approx(0.2)
    assert aggregate(s, "prod") == pytest.approx(0.9 * 0.2 * 0.7)  # 0.126
    assert aggregate(s, "last") == pytest.approx(0.7)
    assert aggregate(s, "mean") == pytest.approx(0.6)  # (0.9 + 0.2 + 0.7) / 3, not sigmoid(mean logit)
    assert aggregate(s, "mean") != pytest.approx(1 / (1 + math.exp(-sum(s) / 3)))
    assert aggregate(scores(0.5), "prod") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(s, "max")
    with pytest.raises(ValueError, match="non-empty"):
        aggregate([], "min")


def test_first_bad_step_and_first_error():
    assert first_bad_step(scores(0.9, 0.2, 0.7)) == 1
    assert first_bad_step(scores(0.9, 0.6, 0.7)) == -1
    assert first_bad_step(scores(0.9, 0.6, 0.7), threshold=0.8) == 1
    assert first_bad_step(scores(0.9, 0.6, 0.7), threshold=0.95) == 0
    assert first_bad_step([0.0, -1e-9]) == 1  # p = 0.5 exactly passes the 0.5 threshold; just below fails
    assert first_error([True, True, False, True]) == 2
    assert first_error([True, True]) == -1
    assert first_error([False, None]) == 0  # unlabelled steps after the first error are fine
    with pytest.raises(ValueError, match="step 1 is unlabelled"):
        first_error([True, None, False])


def test_best_of_n_picks_the_highest_aggregate_first_on_ties():
    sols = [scores(0.9, 0.3), scores(0.6, 0.6), scores(0.6, 0.6), scores(0.95, 0.9, 0.1)]
    # min: 0.3, 0.6, 0.6, 0.1 -> index 1 (tie with 2: first wins)
    assert best_of_n(sols, "min") == 1
    # prod: 0.27, 0.36, 0.36, 0.0855 -> 1
    assert best_of_n(sols, "prod") == 1
    # last: 0.3, 0.6, 0.6, 0.1 -> 1; mean: 0.6, 0.6, 0.6, 0.65 -> 3
    assert best_of_n(sols, "last") == 1 and best_of_n(sols, "mean") == 3
    with pytest.raises(ValueError):
        best_of_n([], "min")


def test_step_accuracy_skips_unlabelled_steps():
    s = [scores(0.9, 0.2, 0.7), scores(0.4, 0.8)]
    labels = [[True, True, None], [False, False]]
    # predictions: T F (T) | F T  vs labels T T (-) | F F  -> hits: 1, 0, -, 1, 0 -> 2 / 4
    assert step_accuracy(s, labels) == pytest.approx(0.5)
    # threshold 0.3: T F (T) | T T -> hits 1, 0, 0, 0 -> 1/4
    assert step_accuracy(s, labels, threshold=0.3) == pytest.approx(0.25)
    assert step_accuracy(s, [[True] * 3, [False] * 2], threshold=0.95) == pytest.approx(2 / 5)
    assert math.isnan(step_accuracy([], []))
    # through the first error only: the steps after a False label are not counted
    two = [scores(0.9, 0.2, 0.8, 0.7), scores(0.6, 0.4)]
    two_labels = [[True, False, False, False], [True, True]]
    assert step_accuracy(two, two_labels) == pytest.approx(3 / 6)  # hits: 0.9, 0.2 | 0.6
    assert step_accuracy(two, two_labels, through_first_error=True) == pytest.approx(3 / 4)
    assert math.isnan(step_accuracy([scores(0.9)], [[None]]))
    with pytest.raises(ValueError, match="2 step scores but 3 labels"):
        step_accuracy([scores(0.9, 0.1)], [[True, True, True]])
    with pytest.raises(ValueError, match="1 score lists but 2"):
        step_accuracy([scores(0.9)], [[True], [True]])


def test_processbench_first_error_f1():
    s = [scores(0.9, 0.2, 0.7),  # predicted first error 1, true 1 -> match
         scores(0.9, 0.8, 0.3),  # predicted 2, true 0 -> miss
         scores(0.9, 0.8),  # predicted -1, true -1 -> match
         scores(0.6, 0.4)]  # predicted 1, true -1 -> miss
    labels = [[True, False, False], [False, False, False], [True, True], [True, True]]
    got = processbench(s, labels)
    assert got == {"error_accuracy": 0.5, "correct_accuracy": 0.5, "f1": pytest.approx(0.5),
                   "num_erroneous": 2, "num_correct": 2}
    # drop the 4th: correct accuracy 1.0 -> F1 = 2 * 0.5 * 1 / 1.5 = 2/3
    got = processbench(s[:3], labels[:3])
    assert (got["error_accuracy"], got["correct_accuracy"]) == (0.5, 1.0)
    assert got["f1"] == pytest.approx(2 / 3)


def test_processbench_edge_cases():
    # all correct samples, all predicted correct: no erroneous samples -> error accuracy and F1 are NaN
    got = processbench([scores(0.9, 0.9)] * 3, [[True, True]] * 3)
    assert got["correct_accuracy"] == 1.0 and math.isnan(got["error_accuracy"]) and math.isnan(got["f1"])
    # everything wrong: both accuracies 0 -> F1 0 (not 0/0)
    got = processbench([scores(0.9, 0.9), scores(0.1, 0.9)], [[True, False], [True, True]])
    assert (got["error_accuracy"], got["correct_accuracy"], got["f1"]) == (0.0, 0.0, 0.0)
    # perfect
    got = processbench([scores(0.2), scores(0.9)], [[False], [True]])
    assert got["f1"] == 1.0
    got = processbench([], [])
    assert math.isnan(got["f1"]) and got["num_erroneous"] == got["num_correct"] == 0


def test_reliability_by_position():
    s = [scores(0.9, 0.6, 0.3), scores(0.7, 0.2)]
    labels = [[True, True, False], [True, None]]
    rows = reliability_by_position(s, labels, max_position=2)
    # position 0: p 0.9, 0.7 -> mean 0.8; labels T, T -> 1.0
    # position >= 1 (open-ended): p 0.6, 0.3 (the None step is skipped) -> 0.45; labels T, F -> 0.5
    assert [r["count"] for r in rows] == [2, 2]
    assert rows[0]["mean_probability"] == pytest.approx(0.8) and rows[0]["label_rate"] == 1.0
    assert rows[1]["mean_probability"] == pytest.approx(0.45) and rows[1]["label_rate"] == 0.5
    assert [r["open_ended"] for r in rows] == [False, True]
    rows = reliability_by_position(s, labels, max_position=4)
    assert [r["count"] for r in rows] == [2, 1, 1, 0] and rows[3]["mean_probability"] is None
    with pytest.raises(ValueError):
        reliability_by_position(s, labels, max_position=0)
