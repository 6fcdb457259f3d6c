"""Multi-attribute reward model metrics, as pure numpy functions of predicted and gold ratings.

What this module is for: what eval reports for an attribute head (per attribute RMSE, Pearson and
Spearman against gold ratings) and the pairwise accuracy of the combined reward w . attributes. It must
not run a model, import Ray or torch, or read files.

Conventions:
  * ``predicted`` and ``gold`` are (n, k) arrays over the same k attribute names; a gold value that is
    None or NaN is missing, and each attribute is scored on its own rows with a gold value (masked, never
    zero-filled); a predicted value must be finite;
  * Spearman's rho is Pearson's r of the average ranks (ties share the mean of the ranks they span);
  * a correlation is NaN with fewer than 2 rows or when either side is constant; RMSE is NaN with no rows;
  * pairwise accuracy counts ties (equal combined rewards) as wrong, like ``metrics.accuracy``.
"""
from __future__ import annotations

import math

import numpy as np

from ray_rm.eval.metrics import accuracy


def _matrix(values, k: int, name: str) -> np.ndarray:
    """An (n, k) float table, None -> NaN."""
    rows = [[math.nan if v is None else v for v in row] for row in values]
    if any(len(row) != k for row in rows):
        raise ValueError(f"every row of {name} needs {k} values (one per attribute)")
    return np.array(rows, dtype=np.float64).reshape(len(rows), k)


def pearson(x, y) -> float:
    """Pearson's r; NaN for fewer than 2 points or a constant side."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(np.dot(dx, dx)) * float(np.dot(dy, dy)))
    return float(np.dot(dx, dy) / denom) if denom > 0 else math.nan


def average_ranks(x) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span ([10, 20, 20, 30] -> [1, 2.5, 2.5, 4])."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size, dtype=np.float64)
    sorted_x = x[order]
    start = 0
    while start < x.size:
        stop = start + 1
        while stop < x.size and sorted_x[stop] == sorted_x[start]:
            stop += 1
        ranks[order[start:stop]] = (start + 1 + stop) / 2.0  # mean of ranks start+1 .. stop
        start = stop
    return ranks


def spearman(x, y) -> float:
    """Spearman's rho with average ranks for ties; NaN for fewer than 2 points or a constant side."""
    return pearson(average_ranks(x), average_ranks(y))


def attribute_report(predicted, gold, names) -> dict:
    """name -> {count, rmse, pearson, spearman}, each attribute on the rows where its gold value exists."""
    k = len(names)
    pred, true = _matrix(predicted, k, "predicted"), _matrix(gold, k, "gold")
    if pred.shape != true.shape:
        raise ValueError(f"predicted has {pred.shape[0]} rows but gold has {true.shape[0]}")
    if not np.all(np.isfinite(pred)):
        raise ValueError("predicted attributes must be finite numbers")
    report = {}
    for j, name in enumerate(names):
        mask = ~np.isnan(true[:, j])
        p, t = pred[mask, j], true[mask, j]
        report[name] = {"count": int(p.size),
                        "rmse": float(np.sqrt(np.mean((p - t) ** 2))) if p.size else math.nan,
                        "pearson": pearson(p, t), "spearman": spearman(p, t)}
    return report


def combined_reward(attributes, weights) -> np.ndarray:
    """w . attributes for each row of an (n, k) table."""
    a = np.asarray(attributes, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if a.ndim != 2 or w.shape != (a.shape[1],):
        raise ValueError(f"attributes {a.shape} and weights {w.shape} must be (n, k) and (k,)")
    return a @ w


def pairwise_accuracy(chosen_attributes, rejected_attributes, weights) -> float:
    """Share of pairs whose chosen response gets the higher combined reward (ties are wrong); NaN if none."""
    if len(chosen_attributes) == 0:
        return math.nan
    d = combined_reward(chosen_attributes, weights) - combined_reward(rejected_attributes, weights)
    return accuracy(d)
