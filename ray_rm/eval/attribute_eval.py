"""Evaluating an attribute reward model on rated rows: predicted vs gold attribute values per response.

What this module is for: the rated-row half of ``ray_rm eval`` for ``model.head=attributes`` checkpoints
(pairs in the same files are scored as usual, with the combined reward ``w . attributes``, so pairwise
accuracy is the combined reward's). It scores rated examples through the shared scorer (the same
tokenization and packing as serving) and reports per-attribute RMSE, Pearson and Spearman
(``attribute_metrics``). It must not import Ray (the eval runner's actors call it) or read files.
"""
from __future__ import annotations

from dataclasses import dataclass

from ray_rm.data.ratings import RatedExample
from ray_rm.eval.attribute_metrics import attribute_report


@dataclass
class RatedScore:
    """One rated response: the model's attribute values and the gold ones (None = not rated), in name order."""

    example_id: str
    predicted: list
    gold: list
    truncated: bool = False


def score_rated(scorer, examples: list[RatedExample], truncate: bool = True) -> tuple[list[RatedScore], list]:
    """(scored rated examples, (reason, message) drops for over-length ones when not truncating)."""
    ids = scorer.encode([(ex.prompt, ex.response) for ex in examples]) if examples else []
    kept, drops = [], []
    for ex, seq in zip(examples, ids):
        if len(seq) > scorer.max_length and not truncate:
            drops.append(("over_length", f"{ex.example_id}: {len(seq)} tokens > the scoring limit {scorer.max_length}"))
            continue
        kept.append((ex, seq[-scorer.max_length:], len(seq) > scorer.max_length))
    seqs = [s for _, s, _ in kept]
    scorer.check_ids(seqs)
    outputs = scorer.score_output_ids(seqs) if seqs else []
    return [RatedScore(ex.example_id, vec, list(ex.values), cut) for (ex, _, cut), vec in zip(kept, outputs)], drops


def attribute_section(scores: list[RatedScore], names: list[str]) -> dict:
    """The report's ``attributes`` entry: per-attribute count, RMSE, Pearson and Spearman on the rated rows."""
    return {"rows": len(scores),
            "per_attribute": attribute_report([s.predicted for s in scores], [s.gold for s in scores], names)}
