"""The eval job for a process reward model (``ray_rm.head == "prm"`` in the checkpoint): step-level metrics.

What this module is for: scoring stepwise rows (any ``data/stepwise.py`` form, with labels) on a Ray Data
actor pool, each prompt's solutions as one prompt-shared group, then reporting step accuracy,
ProcessBench first-error identification (F1 of the earliest wrong step over erroneous and correct
solutions), Best-of-N accuracy (rows with several solutions, at least one fully correct: does the
aggregate pick one of them), and a reliability plot per step position (``prm_reliability.png``).
What it must not do: compute the metric math (``eval/prm_metrics.py``) or train.
Rows whose labels leave the first error unknown (an unlabelled step before any wrong one) are kept
for step accuracy and skipped (counted) for first-error identification.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from ray_rm.data.prepare import read_examples
from ray_rm.data.quality import DropReport
from ray_rm.data.sources import ReadTask, plan_read_tasks
from ray_rm.data.stepwise import normalize_step_row
from ray_rm.errors import DataError, UserError
from ray_rm.eval import prm_metrics as M
from ray_rm.eval.runner import EvalActor
from ray_rm.plotting import png_figure


def score_step_task(task: ReadTask, scorer, on_error: str) -> tuple[list[dict], DropReport]:
    """Every row of one task as {"id", "subset", "scores": [[...] per solution], "labels": [[...]]}."""
    from ray_rm.scoring.steps import encode_steps, score_step_groups

    report, examples = DropReport(), []
    for ex in read_examples(task, report, on_error, parse=normalize_step_row):
        tokens = encode_steps(scorer, [(ex.prompt, steps) for steps in ex.solutions])
        longest = max(len(t.input_ids) for t in tokens)
        if longest > scorer.max_length:
            report.drop("over_length", f"{ex.example_id}: a solution has {longest} tokens > the scoring limit "
                                       f"{scorer.max_length}")
            continue
        examples.append((ex, tokens))
    scores = score_step_groups(scorer, [t for _, t in examples]) if examples else []
    out = [{"id": ex.example_id, "subset": ex.subset or "", "scores": s, "labels": [list(x) for x in ex.labels]}
           for (ex, _), s in zip(examples, scores)]
    report.rows_kept = len(out)
    return out, report


class StepEvalActor(EvalActor):
    """Ray Data actor: one model replica; scores one read task of stepwise rows per call."""

    def score_one(self, task: ReadTask) -> dict:
        rows, report = score_step_task(task, self.scorer, self.on_error)
        return {"rows": rows, "report": report.to_dict()}


def score_step_dataset(job) -> tuple[list[dict], DropReport]:
    from ray_rm.ray_utils import init_ray
    from ray_rm.scoring.pool import map_tasks, resolve_gpus

    cfg, data = job.eval, job.data
    tasks = plan_read_tasks(data.eval_files, data.rows_per_read_task, data.limit, data.builtin_size)
    init_ray(job.ray)
    gpus = resolve_gpus(cfg.gpus_per_actor)
    items = [{"task": json.dumps(t.to_dict()), "task_index": i} for i, t in enumerate(tasks)]
    by_task, report = {}, DropReport()
    for row in map_tasks(items, StepEvalActor, {"cfg": cfg, "on_error": data.on_error, "gpus": gpus},
                         actors=cfg.actors, cpus_per_actor=cfg.cpus_per_actor, gpus_per_actor=gpus):
        if row["error"]:
            raise DataError(row["error"])
        result = json.loads(row["result"])
        by_task[int(row["task_index"])] = result["rows"]
        report.merge(DropReport.from_dict(result["report"]))
    return [r for i in sorted(by_task) for r in by_task[i]], report


def _first_error_known(labels: list) -> bool:
    """No unlabelled step before the first wrong one (or anywhere, when no step is wrong)."""
    for x in labels:
        if x is None:
            return False
        if x is False:
            return True
    return True


def prm_metrics(rows: list[dict], threshold: float = 0.5, aggregation: str = "min") -> dict:
    """Step accuracy, ProcessBench first-error F1, Best-of-N accuracy and the per-position reliability table."""
    scores = [s for r in rows for s in r["scores"]]
    labels = [lab for r in rows for lab in r["labels"]]
    known = [(s, lab) for s, lab in zip(scores, labels) if _first_error_known(lab)]
    bench = M.processbench([s for s, _ in known], [lab for _, lab in known], threshold)
    bon_rows = [r for r in rows if len(r["scores"]) > 1 and any(all(x is True for x in lab) for lab in r["labels"])]
    picks = [all(x is True for x in r["labels"][M.best_of_n(r["scores"], aggregation)]) for r in bon_rows]
    return {"step_accuracy": M.step_accuracy(scores, labels, threshold),
            "step_accuracy_through_first_error": M.step_accuracy(scores, labels, threshold, through_first_error=True),
            "processbench": bench, "first_error_f1": bench["f1"],
            "best_of_n": {"aggregation": aggregation, "rows": len(bon_rows),
                          "accuracy": sum(picks) / len(picks) if picks else math.nan},
            "solutions": len(scores), "steps": sum(len(s) for s in scores),
            "first_error_unknown": len(scores) - len(known), "threshold": threshold,
            "reliability_by_position": M.reliability_by_position(scores, labels)}


def plot_step_reliability(table: list[dict], path: Path) -> None:
    """Mean predicted probability vs share labelled correct, per step position (a calibrated PRM: equal)."""
    with png_figure(path, (5.5, 4.2)) as fig:
        ax = fig.subplots()
        rows = [b for b in table if b["count"]]
        xs = [b["position"] + 1 for b in rows]
        ax.plot(xs, [b["label_rate"] for b in rows], "o-", label="share labelled correct")
        ax.plot(xs, [b["mean_probability"] for b in rows], "s--", label="mean predicted P(correct)")
        ax.set_xticks(xs, [f"{x}+" if b["open_ended"] else str(x) for x, b in zip(xs, rows)])
        ax.set_xlabel("step position")
        ax.set_ylim(0, 1)
        ax.set_title("PRM reliability per step position")
        ax.legend(loc="lower left")


def run_prm_eval(job) -> dict:
    """Evaluate a PRM checkpoint on ``data.eval_files``; writes report.json and prm_reliability.png."""
    rows, drops = score_step_dataset(job)
    if not rows:
        raise UserError(f"no evaluable stepwise rows in {', '.join(job.data.eval_files)}:\n{drops.format()}")
    metrics = prm_metrics(rows)
    out_dir = Path(job.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_step_reliability(metrics["reliability_by_position"], out_dir / "prm_reliability.png")
    report = {"model_path": job.eval.model_path, "data_files": list(job.data.eval_files), "head": "prm",
              **metrics, "drops": drops.to_dict(), "plots": ["prm_reliability.png"]}
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report
