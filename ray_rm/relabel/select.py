"""What each relabel mode writes for one scored input row: pure rules, no Ray, no torch.

It must not score, read files or import Ray or torch.

Every function returns a ``Selection``: the output records, or the (reason, message) for which the
row yields none, plus counters for the summary. Choices are deterministic functions of the scores,
the row id and the seed, so a resumed or repeated run writes exactly the same rows.

Drop reasons: ``tie`` (the scores that decide the pair are equal), ``under_margin`` (margin below
``relabel.min_margin``), ``disagree`` (rejudge with ``disagree=drop``).
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa

from ray_rm.data.formats import PreferenceExample
from ray_rm.errors import DataError

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


class OneSchemaParser:
    """A row parser for one task that refuses a row whose schema differs from the task's first row.

    Why: a task writes one part file, and a part file's prompt column is either text or a message list
    (``MESSAGES``); a file mixing both would fail at write time, far from the row that caused it. ``chat``
    is the task's schema once a row was parsed (None before)."""

    def __init__(self, parse, rows: str, field: str):
        self.parse, self.rows, self.field, self.chat = parse, rows, field, None

    def __call__(self, raw, source: str, rowno: int):
        ex = self.parse(raw, source, rowno)
        if self.chat is None:
            self.chat = ex.is_chat
        elif ex.is_chat != self.chat:
            raise DataError(f"mixes text and message-list {self.rows} in one file; split them into separate files",
                            source, rowno, self.field)
        return ex


@dataclass
class Selection:
    records: list = field(default_factory=list)
    drop: tuple | None = None  # (reason, message) when the row writes nothing
    counts: Counter = field(default_factory=Counter)


def _argmax(scores: list[float]) -> int:
    return max(range(len(scores)), key=lambda i: (scores[i], -i))  # first index among equal maxima


def _pair(ex: PreferenceExample, rec: dict, i: int, j: int, si: float, sj: float, attributes: list | None) -> dict:
    row = {"example_id": ex.example_id, "prompt": rec["prompt"], "chosen": rec["responses"][i],
           "rejected": rec["responses"][j], "score_chosen": si, "score_rejected": sj, "margin": si - sj}
    if attributes is not None:  # attribute reward models: every attribute of both responses
        row.update(attributes_chosen=attributes[i], attributes_rejected=attributes[j])
    return row


def _no_pair_reason(ex: PreferenceExample, best: float, others: list[float], min_margin: float) -> tuple:
    if all(s == best for s in others):
        return "tie", f"{ex.example_id}: the deciding scores are equal ({best:.6g})"
    top = max(best - s for s in others)
    return "under_margin", f"{ex.example_id}: best margin {top:.4g} < relabel.min_margin {min_margin}"


def pairs_from_candidates(ex: PreferenceExample, scores: list[float], strategy: str, min_margin: float,
                          seed: int = 0, attributes: list | None = None) -> Selection:
    """DPO pairs from k scored candidates (input order), by ``best_vs_worst``/``best_vs_random``/``all_pairs``.

    ``attributes``: an attribute reward model's {name: value} per candidate, written beside the scores."""
    rec = ex.to_record()
    sel = Selection()
    k = len(scores)

    def ok(a: float, b: float) -> bool:
        return a > b and a - b >= min_margin

    if strategy == "all_pairs":
        for i in range(k):
            for j in range(i + 1, k):
                hi, lo = (i, j) if scores[i] >= scores[j] else (j, i)
                if ok(scores[hi], scores[lo]):
                    sel.records.append(_pair(ex, rec, hi, lo, scores[hi], scores[lo], attributes))
                else:
                    sel.counts["pairs_tied" if scores[hi] == scores[lo] else "pairs_under_margin"] += 1
        if not sel.records:
            sel.drop = _no_pair_reason(ex, max(scores), scores, min_margin)
        return sel
    best = _argmax(scores)
    others = [j for j in range(k) if j != best]
    if strategy == "best_vs_worst":
        worst = min(others, key=lambda j: (scores[j], j))
        candidates = [worst] if ok(scores[best], scores[worst]) else []
    elif strategy == "best_vs_random":  # a random one among the candidates that make a valid pair
        candidates = [j for j in others if ok(scores[best], scores[j])]
        candidates = [random.Random(f"{seed}:{ex.example_id}").choice(candidates)] if candidates else []
    else:
        raise ValueError(f"unknown pair strategy {strategy!r}")
    if candidates:
        j = candidates[0]
        sel.records.append(_pair(ex, rec, best, j, scores[best], scores[j], attributes))
    else:
        sel.drop = _no_pair_reason(ex, scores[best], [scores[j] for j in others], min_margin)
    return sel


def rejudge(ex: PreferenceExample, scores: list[float], policy: str, min_margin: float,
            attributes: list | None = None) -> Selection:
    """Scores for an existing (chosen, rejected) pair, whether the RM agrees, and the disagreement policy."""
    rec = ex.to_record()
    sc, sr = scores
    margin = sc - sr
    sel = Selection()
    sel.counts["agree" if margin > 0 else ("tied" if margin == 0 else "disagree")] += 1
    if min_margin > 0 and abs(margin) < min_margin:
        reason = "tie" if margin == 0 else "under_margin"
        sel.drop = (reason, f"{ex.example_id}: |margin| {abs(margin):.4g} < relabel.min_margin {min_margin}")
        return sel
    if margin == 0 and policy != "keep":
        sel.drop = ("tie", f"{ex.example_id}: chosen and rejected score the same ({sc:.6g})")
        return sel
    swapped = False
    if margin < 0 and policy == "drop":
        sel.drop = ("disagree", f"{ex.example_id}: rejected scores higher ({sr:.4g} > {sc:.4g})")
        return sel
    row = _pair(ex, rec, 0, 1, sc, sr, attributes)
    if margin < 0 and policy == "swap":
        row = _pair(ex, rec, 1, 0, sr, sc, attributes)
        swapped = True
        sel.counts["swapped"] += 1
    row.update(agree=margin > 0, swapped=swapped)
    sel.records.append(row)
    return sel


def best_of_n(ex: PreferenceExample, scores: list[float], attributes: list | None = None) -> Selection:
    """The top-scoring response (first among equals) with every candidate's score."""
    rec = ex.to_record()
    best = _argmax(scores)
    sel = Selection()
    if sum(s == scores[best] for s in scores) > 1:
        sel.counts["tied_at_top"] += 1
    sel.records.append({"example_id": ex.example_id, "prompt": rec["prompt"], "response": rec["responses"][best],
                        "score": scores[best], "best_index": best, "scores": list(scores),
                        "num_candidates": len(scores),
                        **({"attributes": attributes[best], "candidate_attributes": list(attributes)}
                           if attributes is not None else {})})
    return sel


def output_schema(mode: str, chat: bool, attribute_names: list | None = None) -> pa.Schema:
    """The fixed Parquet schema of a mode's part files (content is text, or role/content messages); an
    attribute reward model adds its attributes as structs {name: value} (``attribute_names``)."""
    content = MESSAGES if chat else pa.string()
    attrs = pa.struct([(n, pa.float64()) for n in attribute_names]) if attribute_names else None
    base = [("example_id", pa.string()), ("prompt", content)]
    if mode == "best-of-n":
        return pa.schema(base + [("response", content), ("score", pa.float64()), ("best_index", pa.int64()),
                                 ("scores", pa.list_(pa.float64())), ("num_candidates", pa.int64())]
                         + ([("attributes", attrs), ("candidate_attributes", pa.list_(attrs))] if attrs else []))
    pair = base + [("chosen", content), ("rejected", content), ("score_chosen", pa.float64()),
                   ("score_rejected", pa.float64()), ("margin", pa.float64())]
    if attrs:
        pair += [("attributes_chosen", attrs), ("attributes_rejected", attrs)]
    if mode == "rejudge":
        pair += [("agree", pa.bool_()), ("swapped", pa.bool_())]
    return pa.schema(pair)
