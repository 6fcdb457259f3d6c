"""Driver of the relabel job: plan tasks, resume what a previous run finished, stream the rest, summarize.

It must not hold selection rules (``select.py``) or the per-task work (``task.py``).

``output_dir`` layout::

    data/part-NNNNN.parquet (.jsonl)   output rows, one file per input task
    _progress/job.json                 the settings and task plan this directory belongs to
    _progress/part-NNNNN.json          per-task row accounting; its presence means "task done"
    summary.json                       every input row: written or dropped by reason

Re-running with the same settings resumes; different settings are refused unless
``relabel.overwrite=true`` (mixing two runs' rows would silently corrupt the output).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

from ray_rm.data.quality import DropReport
from ray_rm.data.sources import ReadTask, plan_read_tasks
from ray_rm.errors import DataError, UserError
from ray_rm.progress import ProgressBar
from ray_rm.relabel.config import RelabelConfig, RelabelJobConfig
from ray_rm.scoring.pool import map_tasks, resolve_gpus
from ray_rm.scoring.scorer import make_scorer
from ray_rm.relabel.task import DATA_DIR, PROGRESS_DIR, marker_path, run_task
from ray_rm.validation import validate

log = logging.getLogger(__name__)

# Settings that change what is written; resuming under different ones is refused.
_OUTPUT_KEYS = ("model_path", "mode", "input_files", "pair_strategy", "min_margin", "disagree", "normalize", "seed",
                "on_error", "write_jsonl", "rows_per_task", "limit", "pack_tokens", "dtype", "attn_implementation")


class RelabelActor:
    """Ray Data actor: one model replica; relabels one task per call and writes its part files."""

    def __init__(self, cfg: RelabelConfig, out_dir: str, gpus: float):
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.scorer = make_scorer(cfg.model_path, gpus, cfg.cpus_per_actor, cfg.pack_tokens, cfg.dtype,
                                  cfg.attn_implementation)

    def __call__(self, batch: dict) -> dict:
        results, errors = [], []
        for task_json, index in zip(batch["task"], batch["task_index"]):
            try:
                marker = run_task(self.out_dir, int(index), ReadTask.from_dict(json.loads(task_json)), self.scorer,
                                  self.cfg)
                results.append(json.dumps(marker))
                errors.append("")
            except DataError as exc:  # strict mode: the driver stops with this one-line message
                results.append("")
                errors.append(str(exc))
        return {"task_index": batch["task_index"], "result": results, "error": errors}


def _fingerprint(cfg: RelabelConfig, tasks: list[ReadTask]) -> dict:
    plan = hashlib.sha256(json.dumps([t.to_dict() for t in tasks]).encode()).hexdigest()[:16]
    return {"settings": {k: getattr(cfg, k) for k in _OUTPUT_KEYS}, "num_tasks": len(tasks), "plan": plan}


def _prepare_output(out_dir: Path, fingerprint: dict, overwrite: bool) -> None:
    state = out_dir / PROGRESS_DIR / "job.json"
    if overwrite:
        for name in (DATA_DIR, PROGRESS_DIR, "summary.json"):
            path = out_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    elif state.is_file():
        previous = json.loads(state.read_text())
        if previous != fingerprint:
            changed = sorted(k for k in fingerprint["settings"]
                             if previous.get("settings", {}).get(k) != fingerprint["settings"][k])
            what = f"settings {', '.join(changed)}" if changed else "the input rows / task plan"
            raise UserError(f"{out_dir} holds a relabel run with different {what}; use a new output_dir or "
                            f"relabel.overwrite=true")
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps(fingerprint, indent=2))


def summarize(out_dir: Path, cfg: RelabelConfig, num_tasks: int) -> dict:
    """Merge every task's marker: the row accounting of the whole job (resumed tasks included)."""
    report, counts, files, output_rows, tokens, peak, busy = DropReport(), Counter(), [], 0, 0, 0.0, Counter()
    for i in range(num_tasks):
        m = json.loads(marker_path(out_dir, i).read_text())
        report.merge(DropReport.from_dict(m["report"]))
        counts.update(m["counts"])
        files.extend(m["files"])
        output_rows += m["output_rows"]
        tokens += m["tokens"]
        peak = max(peak, m.get("peak_rss_mb", 0.0))
        busy.update({k: m[k] for k in ("seconds", "score_seconds")})
    assert report.rows_read == report.rows_kept + report.rows_dropped, "row accounting is inconsistent"
    summary = {"mode": cfg.mode, "model_path": cfg.model_path, "input_files": cfg.input_files,
               **report.to_dict(), "rows_written": report.rows_kept, "output_rows": output_rows,
               "counts": dict(sorted(counts.items())), "num_tasks": num_tasks, "tokens_scored": tokens,
               "actor_peak_rss_mb": peak, "task_seconds": round(busy["seconds"], 3),
               "score_seconds": round(busy["score_seconds"], 3), "files": files}
    if cfg.mode == "pairs-from-candidates":
        summary["pair_strategy"], summary["min_margin"] = cfg.pair_strategy, cfg.min_margin
    if cfg.mode == "rejudge":
        summary["disagree"] = cfg.disagree
        scored = counts["agree"] + counts["disagree"] + counts["tied"]
        summary["agreement"] = counts["agree"] / scored if scored else None
    return summary


def run_relabel(job: RelabelJobConfig) -> dict:
    """Run (or resume) a relabel job; returns the summary also written to ``output_dir/summary.json``."""
    from ray_rm.ray_utils import init_ray

    validate(job)
    cfg = job.relabel
    out_dir = Path(job.output_dir)
    tasks = plan_read_tasks(cfg.input_files, cfg.rows_per_task, cfg.limit)
    _prepare_output(out_dir, _fingerprint(cfg, tasks), cfg.overwrite)
    done = [i for i in range(len(tasks)) if marker_path(out_dir, i).is_file()]
    pending = [i for i in range(len(tasks)) if i not in set(done)]
    if done:
        log.info("resuming: %d of %d tasks already done in %s", len(done), len(tasks), out_dir)
    rows_of = lambda i: tasks[i].stop - tasks[i].start  # noqa: E731
    progress = ProgressBar(sum(map(rows_of, range(len(tasks)))), sum(map(rows_of, done)), "relabel", cfg.progress)
    start = time.perf_counter()
    rows_this_run = 0
    if pending:
        init_ray(job.ray)
        gpus = resolve_gpus(cfg.gpus_per_actor)
        items = [{"task": json.dumps(tasks[i].to_dict()), "task_index": i} for i in pending]
        ctor = {"cfg": cfg, "out_dir": str(out_dir.resolve()), "gpus": gpus}
        for n, row in enumerate(map_tasks(items, RelabelActor, ctor, actors=cfg.actors,
                                          cpus_per_actor=cfg.cpus_per_actor, gpus_per_actor=gpus), start=1):
            if row["error"]:
                raise DataError(row["error"])
            rows_this_run += json.loads(row["result"])["report"]["rows_read"]
            progress.update(rows_of(int(row["task_index"])))
            if cfg.debug_kill_after_tasks and n >= cfg.debug_kill_after_tasks:
                log.warning("relabel.debug_kill_after_tasks=%d: killing the driver", n)
                os.kill(os.getpid(), signal.SIGKILL)
    progress.close()
    elapsed = time.perf_counter() - start
    summary = summarize(out_dir, cfg, len(tasks))
    summary.update(output_dir=str(out_dir), tasks_resumed=len(done), tasks_run=len(pending),
                   elapsed_s=round(elapsed, 3), rows_per_s=round(rows_this_run / elapsed, 3) if elapsed else None)
    tmp = out_dir / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out_dir / "summary.json")
    for stale in (out_dir / DATA_DIR).glob(".*.tmp-*"):  # leftovers of attempts killed mid-write
        stale.unlink(missing_ok=True)
    return summary
