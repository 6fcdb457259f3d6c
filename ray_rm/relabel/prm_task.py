"""Relabeling with a process reward model (``ray_rm.head == "prm"``): Best-of-N by aggregated step rewards,
and the step filter that cuts each solution at its first step below a threshold.

What this module is for: the PRM branch of ``task.relabel_task``. Rows are stepwise (any
``data/stepwise.py`` form; labels optional and ignored): one prompt with N solutions, each a list of
steps, scored as one prompt-shared group.
  * ``relabel.mode=best-of-n``: one record per row, the solution whose aggregate (``relabel.step_aggregate``:
    min | prod | last | mean of step probabilities) is highest (first among equals), with every
    candidate's aggregate and the chosen one's step scores.
  * ``relabel.mode=step-filter``: one record per solution, its steps up to (excluding) the first step whose
    probability is below ``relabel.step_threshold`` (``eval/prm_metrics.first_bad_step``); a solution cut
    at its first step keeps nothing and is counted (``cut_to_empty``), not written.
What it must not do: import Ray, or decide anything the metric functions in ``eval/prm_metrics.py`` decide.
"""
from __future__ import annotations

import pyarrow as pa

from ray_rm.data.formats import _content_to_json
from ray_rm.data.prepare import read_examples
from ray_rm.data.stepwise import normalize_step_row
from ray_rm.eval import prm_metrics as M
from ray_rm.relabel.select import OneSchemaParser

STEPS = pa.list_(pa.string())
FLOATS = pa.list_(pa.float64())


def output_schema(mode: str, chat: bool) -> pa.Schema:
    from ray_rm.relabel.select import MESSAGES

    base = [("example_id", pa.string()), ("prompt", MESSAGES if chat else pa.string())]
    if mode == "best-of-n":
        return pa.schema(base + [("steps", STEPS), ("score", pa.float64()), ("best_index", pa.int64()),
                                 ("scores", FLOATS), ("step_scores", FLOATS), ("num_candidates", pa.int64())])
    return pa.schema(base + [("solution_index", pa.int64()), ("steps", STEPS), ("num_steps", pa.int64()),
                             ("cut_at", pa.int64()), ("step_scores", FLOATS)])


def _records(ex, step_scores: list, cfg, counts) -> list[dict]:
    prompt = _content_to_json(ex.prompt)
    if cfg.mode == "best-of-n":
        aggregates = [M.aggregate(s, cfg.step_aggregate) for s in step_scores]
        best = M.best_of_n(step_scores, cfg.step_aggregate)
        if sum(a == aggregates[best] for a in aggregates) > 1:
            counts["tied_at_top"] += 1
        return [{"example_id": ex.example_id, "prompt": prompt, "steps": list(ex.solutions[best]),
                 "score": aggregates[best], "best_index": best, "scores": aggregates,
                 "step_scores": step_scores[best], "num_candidates": len(step_scores)}]
    out = []
    for i, (steps, scores) in enumerate(zip(ex.solutions, step_scores)):
        cut = M.first_bad_step(scores, cfg.step_threshold)
        kept = list(steps) if cut == -1 else list(steps[:cut])
        counts["cut" if cut != -1 else "kept_whole"] += 1
        if not kept:
            counts["cut_to_empty"] += 1
            continue
        out.append({"example_id": ex.example_id, "prompt": prompt, "solution_index": i, "steps": kept,
                    "num_steps": len(steps), "cut_at": cut, "step_scores": scores})
    return out


def prm_relabel_task(task, scorer, cfg, out) -> None:
    """Fill ``out`` (a ``task.TaskOutput``) from one task of stepwise rows."""
    from ray_rm.errors import UserError
    from ray_rm.scoring.steps import encode_steps, score_step_groups

    if cfg.mode not in ("best-of-n", "step-filter"):
        raise UserError(f"relabel.mode={cfg.mode} compares whole responses; a process reward model relabels with "
                        "mode best-of-n or step-filter")

    parse = OneSchemaParser(lambda raw, source, rowno: normalize_step_row(raw, source, rowno, require_labels=False),
                            "prompts", "prompt")
    examples, groups = [], []
    for ex in read_examples(task, out.report, cfg.on_error, parse):
        tokens = encode_steps(scorer, [(ex.prompt, steps) for steps in ex.solutions])
        longest = max(len(t.input_ids) for t in tokens)
        if longest > scorer.max_length:
            out.report.drop("over_length", f"{ex.example_id}: a solution has {longest} tokens > the scoring "
                                           f"limit {scorer.max_length}")
            continue
        examples.append(ex)
        groups.append(tokens)
    out.chat = bool(parse.chat)
    out.schema = output_schema(cfg.mode, out.chat)
    out.tokens = sum(len(t.input_ids) for g in groups for t in g)
    for ex, step_scores in zip(examples, score_step_groups(scorer, groups) if groups else []):
        records = _records(ex, step_scores, cfg, out.counts)
        if records:
            out.report.rows_kept += 1
            out.records.extend(records)
        else:
            out.report.drop("cut_to_empty", f"{ex.example_id}: every solution fails at its first step")
