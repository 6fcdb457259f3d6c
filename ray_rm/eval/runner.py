"""Driver of the eval job: score preference rows on a Ray Data actor pool, then compute and report metrics.

It must not compute metrics itself (``metrics.py``) or score outside ``ray_rm.scoring``.

Actors return one small row per read task (every example's rewards, gold ranks, token lengths and the
task's drop report); the driver gathers them, so metrics need no second pass over the data.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from ray_rm.data.formats import normalize_row
from ray_rm.data.prepare import read_examples
from ray_rm.data.rated_groups import attribute_row_parser
from ray_rm.data.ratings import RatedExample
from ray_rm.data.quality import DropReport, usage_line
from ray_rm.data.sources import ReadTask, plan_read_tasks
from ray_rm.errors import DataError, UserError
from ray_rm.eval.attribute_eval import RatedScore, attribute_section, score_rated
from ray_rm.eval.config import EvalConfig, EvalJobConfig
from ray_rm.eval.metrics import ScoredExample, compute_metrics
from ray_rm.eval.report import write_report
from ray_rm.eval.rewardbench2 import rewardbench2_scores
from ray_rm.progress import ProgressBar
from ray_rm.scoring.examples import ResponseScores, score_examples
from ray_rm.scoring.pool import map_tasks, resolve_gpus
from ray_rm.scoring.scorer import make_scorer
from ray_rm.validation import validate

log = logging.getLogger(__name__)


def score_task(task: ReadTask, scorer, on_error: str, truncate: bool = True,
               rated: list | None = None) -> tuple[list[ScoredExample], DropReport]:
    """Read, normalize and score one task's rows; malformed and unusable rows are counted, not scored;
    over-length ones are left-truncated (flagged) or, with ``truncate=False``, dropped (counted).
    An attribute model also reads rated rows: their ``RatedScore``s are appended to ``rated``."""
    report, examples, rated_examples = DropReport(), [], []
    names = scorer.attribute_names
    parse = attribute_row_parser(tuple(names)) if names else normalize_row
    for ex in read_examples(task, report, on_error, parse):
        if isinstance(ex, RatedExample):
            rated_examples.append(ex)
            continue
        if len(set(ex.ranks)) == 1:
            report.drop("no_preference", f"{ex.example_id}: all {len(ex.ranks)} responses are tied")
            continue
        examples.append(ex)
    out = []
    for ex, s in zip(examples, score_examples(scorer, examples, truncate=truncate)):
        if isinstance(s, ResponseScores):
            out.append(ScoredExample(ex.example_id, s.scores, list(ex.ranks), s.lengths, ex.subset, ex.row_id,
                                     s.truncated))
        else:
            report.drop(*s)
    scores, drops = score_rated(scorer, rated_examples, truncate) if rated_examples else ([], [])
    for d in drops:
        report.drop(*d)
    if rated is not None:
        rated.extend(scores)
    report.rows_kept = len(out) + len(scores)
    return out, report


class EvalActor:
    """Ray Data actor: one model replica; scores one read task per call."""

    def __init__(self, cfg: EvalConfig, on_error: str, gpus: float):
        self.on_error, self.truncate = on_error, cfg.overlength == "truncate_left"
        self.scorer = make_scorer(cfg.model_path, gpus, cfg.cpus_per_actor, cfg.pack_tokens, cfg.dtype,
                                  cfg.attn_implementation)

    def score_one(self, task: ReadTask) -> dict:
        """One task's JSON-ready result (``prm_runner.StepEvalActor`` scores stepwise rows instead)."""
        rated: list = []
        examples, report = score_task(task, self.scorer, self.on_error, self.truncate, rated)
        return {"examples": [vars(e) for e in examples], "report": report.to_dict(),
                "rated": [vars(r) for r in rated], "attribute_names": self.scorer.attribute_names}

    def __call__(self, batch: dict) -> dict:
        results, errors = [], []
        for task_json in batch["task"]:
            try:
                results.append(json.dumps(self.score_one(ReadTask.from_dict(json.loads(task_json)))))
                errors.append("")
            except DataError as exc:
                results.append("")
                errors.append(str(exc))
        return {"task_index": batch["task_index"], "result": results, "error": errors}


def score_dataset(job: EvalJobConfig, rated: dict | None = None) -> tuple[list[ScoredExample], DropReport]:
    """Scored examples in input order, and the drop report, for ``data.eval_files``; an attribute model's
    rated rows land in ``rated`` ({"names": [...], "scores": [RatedScore, ...]})."""
    from ray_rm.ray_utils import init_ray

    cfg, data = job.eval, job.data
    tasks = plan_read_tasks(data.eval_files, data.rows_per_read_task, data.limit, data.builtin_size)
    init_ray(job.ray)
    gpus = resolve_gpus(cfg.gpus_per_actor)
    items = [{"task": json.dumps(t.to_dict()), "task_index": i} for i, t in enumerate(tasks)]
    progress = ProgressBar(sum(t.stop - t.start for t in tasks), 0, "eval", cfg.progress)
    by_task: dict[int, list] = {}
    report = DropReport()
    ctor = {"cfg": cfg, "on_error": data.on_error, "gpus": gpus}
    for row in map_tasks(items, EvalActor, ctor, actors=cfg.actors, cpus_per_actor=cfg.cpus_per_actor,
                         gpus_per_actor=gpus):
        if row["error"]:
            raise DataError(row["error"])
        result = json.loads(row["result"])
        i = int(row["task_index"])
        by_task[i] = [ScoredExample(**e) for e in result["examples"]]
        if rated is not None and result.get("attribute_names"):
            rated["names"] = result["attribute_names"]
            rated.setdefault("by_task", {})[i] = [RatedScore(**r) for r in result["rated"]]
        report.merge(DropReport.from_dict(result["report"]))
        progress.update(tasks[i].stop - tasks[i].start)
    progress.close()
    return [ex for i in sorted(by_task) for ex in by_task[i]], report


def write_scores(path: Path, examples: list[ScoredExample]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([vars(e) for e in examples]), path)


def run_eval(job: EvalJobConfig) -> dict:
    """Evaluate ``eval.model_path`` on ``data.eval_files``; writes report.json/html and returns the report."""
    validate(job)
    cfg = job.eval
    from ray_rm.scoring.steps import checkpoint_head

    if checkpoint_head(cfg.model_path) == "prm":  # step-level metrics (eval/prm_runner.py)
        from ray_rm.eval.prm_runner import run_prm_eval

        return run_prm_eval(job)
    start = time.perf_counter()
    rated: dict = {}
    examples, drops = score_dataset(job, rated)
    rated_scores = [r for i in sorted(rated.get("by_task", {})) for r in rated["by_task"][i]]
    if not examples and not rated_scores:
        raise UserError(f"no evaluable rows in {', '.join(job.data.eval_files)}:\n{drops.format()}")
    scored_s = time.perf_counter() - start
    metrics = compute_metrics(examples, cfg.num_bins, cfg.length_buckets)
    out_dir = Path(job.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.write_scores:
        write_scores(out_dir / "scores.parquet", examples)
    truncated = [e.example_id for e in examples if e.truncated]
    report = {"model_path": cfg.model_path, "data_files": list(job.data.eval_files),
              "accuracy": metrics["accuracy"], "rewardbench2": rewardbench2_scores(examples),
              "metrics": metrics, "drops": drops.to_dict(),
              "truncated": {"examples": len(truncated), "fraction": len(truncated) / len(examples),
                            "example_ids": truncated[:5]},
              "scoring_seconds": round(scored_s, 3)}
    if rated_scores:  # an attribute model on rated rows: per-attribute RMSE / Pearson / Spearman
        report["attributes"] = attribute_section(rated_scores, rated["names"])
    print(usage_line("eval data", drops, len(truncated)), flush=True)
    chosen = np.asarray([e.rewards[0] for e in examples])
    rejected = np.asarray([e.rewards[-1] for e in examples])
    write_report(out_dir, report, chosen, rejected)
    return json.loads((out_dir / "report.json").read_text())
