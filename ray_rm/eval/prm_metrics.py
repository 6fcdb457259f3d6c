"""Process reward model metrics and step-reward aggregations, as pure numpy functions of step scores.

What this module is for: what eval reports for a PRM (step accuracy, ProcessBench first-error F1, a
per-position reliability table) and the aggregations Best-of-N and serving use. It must not run a model,
import Ray or torch, or read files.

Conventions (stated once, used everywhere):
  * a step's *score* is the PRM's raw logit; its probability of being correct is p = sigmoid(score);
  * every threshold is on p (default 0.5, i.e. score 0); a step is predicted correct when p >= threshold;
  * labels are True (correct), False (wrong) or None (unlabelled: skipped by step accuracy and the
    reliability table; not allowed where a first error must be known);
  * aggregations act on probabilities, all four of them: ``prod`` (the chance every step is right, if
    steps were independent: PRM800K / Let's Verify Step by Step) needs p, and using p for ``min``,
    ``last`` and ``mean`` too keeps every aggregate in [0, 1], comparable across modes and thresholdable
    with the same p-threshold. ``min`` and ``last`` rank solutions exactly as on raw scores (sigmoid is
    monotone); ``mean`` of p is not sigmoid(mean score) (one very wrong step weighs at most 1);
  * first-error identification follows ProcessBench (Zheng et al. 2024, arXiv:2412.06559; its
    code/run_eval_prm_trl.py): the true first error is the index of the first False label, -1 when all
    steps are correct; the prediction is the first step with p < threshold, -1 when none;
    accuracy on erroneous samples = share with prediction == true index, accuracy on correct samples =
    share predicted -1, F1 = 2 a_err a_cor / (a_err + a_cor) (0 when both are 0);
  * empty inputs give NaN for dataset-level rates (no erroneous samples: error accuracy and F1 are NaN);
    shape mismatches and empty solutions raise ValueError.
"""
from __future__ import annotations

import math

import numpy as np

from ray_rm.eval.metrics import sigmoid

AGGREGATIONS = ("min", "prod", "last", "mean")


def _scores(scores) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"a solution's step scores must be a non-empty 1-D sequence, got shape {s.shape}")
    return s


def _pairs(scores_list, labels_list) -> list[tuple[np.ndarray, list]]:
    if len(scores_list) != len(labels_list):
        raise ValueError(f"{len(scores_list)} score lists but {len(labels_list)} label lists")
    out = []
    for i, (scores, labels) in enumerate(zip(scores_list, labels_list)):
        s = _scores(scores)
        if len(labels) != s.size:
            raise ValueError(f"solution {i}: {s.size} step scores but {len(labels)} labels")
        out.append((s, list(labels)))
    return out


def aggregate(scores, how: str = "min") -> float:
    """One solution's reward from its step scores: min | prod | last | mean of step probabilities."""
    p = sigmoid(_scores(scores))
    if how == "min":
        return float(p.min())
    if how == "prod":
        return float(np.prod(p))
    if how == "last":
        return float(p[-1])
    if how == "mean":
        return float(p.mean())
    raise ValueError(f"unknown aggregation {how!r}; expected one of {', '.join(AGGREGATIONS)}")


def first_bad_step(scores, threshold: float = 0.5) -> int:
    """Index of the first step whose probability is below ``threshold``; -1 when every step passes.

    The cut a Best-of-N filter applies: a solution is kept up to (excluding) this step."""
    below = np.flatnonzero(sigmoid(_scores(scores)) < threshold)
    return int(below[0]) if below.size else -1


def first_error(labels) -> int:
    """Index of the first False label; -1 when all are True. Unlabelled steps before it are an error."""
    for i, label in enumerate(labels):
        if label is None:
            raise ValueError(f"step {i} is unlabelled, so the first error is unknown")
        if not label:
            return i
    return -1


def best_of_n(solution_scores, how: str = "min") -> int:
    """Index of the solution with the highest aggregate reward (the first one on ties)."""
    if not solution_scores:
        raise ValueError("best_of_n needs at least one solution")
    rewards = [aggregate(s, how) for s in solution_scores]
    return int(np.argmax(rewards))


def step_accuracy(scores_list, labels_list, threshold: float = 0.5, through_first_error: bool = False) -> float:
    """Share of labelled steps whose prediction (p >= threshold means correct) matches the label.

    ``through_first_error``: count each solution's steps only up to and including its first False label
    (ProcessBench's scope). Why a second figure: Math-Shepherd-style labels mark every step after a first
    error wrong, though such a step may compute correctly from the wrong value; a PRM trained on first
    errors calls those right, which the plain figure counts as misses."""
    hits, n = 0, 0
    for s, labels in _pairs(scores_list, labels_list):
        predicted = sigmoid(s) >= threshold
        for pred, label in zip(predicted, labels):
            if label is not None:
                hits += int(bool(pred) == bool(label))
                n += 1
            if through_first_error and label is False:
                break
    return hits / n if n else math.nan


def processbench(scores_list, labels_list, threshold: float = 0.5) -> dict:
    """ProcessBench first-error identification: error / correct accuracy, their F1, and the counts."""
    matches = {True: [], False: []}  # erroneous? -> per-sample match
    for s, labels in _pairs(scores_list, labels_list):
        truth = first_error(labels)
        matches[truth != -1].append(first_bad_step(s, threshold) == truth)
    err = float(np.mean(matches[True])) if matches[True] else math.nan
    cor = float(np.mean(matches[False])) if matches[False] else math.nan
    if math.isnan(err) or math.isnan(cor):
        f1 = math.nan
    else:
        f1 = 2 * err * cor / (err + cor) if err + cor > 0 else 0.0
    return {"error_accuracy": err, "correct_accuracy": cor, "f1": f1,
            "num_erroneous": len(matches[True]), "num_correct": len(matches[False])}


def reliability_by_position(scores_list, labels_list, max_position: int = 8) -> list[dict]:
    """Per step position (0-based; the last bucket gathers positions >= max_position - 1): the number of
    labelled steps, their mean predicted probability and the share labelled correct (None when empty).

    The data of a reliability plot per step position: a calibrated PRM has mean_probability close to
    label_rate in every bucket."""
    if max_position < 1:
        raise ValueError("max_position must be >= 1")
    probs = [[] for _ in range(max_position)]
    rates = [[] for _ in range(max_position)]
    for s, labels in _pairs(scores_list, labels_list):
        for i, (p, label) in enumerate(zip(sigmoid(s), labels)):
            if label is not None:
                b = min(i, max_position - 1)
                probs[b].append(p)
                rates[b].append(float(bool(label)))
    return [{"position": b, "open_ended": b == max_position - 1, "count": len(probs[b]),
             "mean_probability": float(np.mean(probs[b])) if probs[b] else None,
             "label_rate": float(np.mean(rates[b])) if rates[b] else None}
            for b in range(max_position)]
