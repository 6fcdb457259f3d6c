"""One relabel task end to end without Ray, and its atomically written part files.

It must not import Ray (the runner maps it over an actor pool) or hold selection rules (``select.py``).

A task is a row range of one input source (``ray_rm.data.sources.ReadTask``). Its output is a pure
function of (rows, model, settings), written as ``data/part-NNNNN.parquet`` (+ ``.jsonl``) and then a
``_progress/part-NNNNN.json`` marker holding the task's row accounting. Files are written to a
temporary name and renamed, and the marker comes last, so a task is either complete or absent:
resume re-runs exactly the tasks without a marker and never duplicates rows.
"""
from __future__ import annotations

import json
import os
import resource
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ray_rm.data.formats import PreferenceExample, normalize_candidates, normalize_row
from ray_rm.data.prepare import read_examples
from ray_rm.data.quality import DropReport
from ray_rm.data.sources import ReadTask
from ray_rm.errors import DataError, UserError
from ray_rm.relabel import select
from ray_rm.relabel.config import RelabelConfig
from ray_rm.scoring.examples import ResponseScores, group_tokens, score_examples

DATA_DIR, PROGRESS_DIR = "data", "_progress"


def part_name(task_index: int) -> str:
    return f"part-{task_index:05d}"


def marker_path(out_dir: Path, task_index: int) -> Path:
    return out_dir / PROGRESS_DIR / f"{part_name(task_index)}.json"


def parse_row(raw, source: str, rowno: int, mode: str) -> PreferenceExample:
    """The input row of a mode as a ``PreferenceExample`` (or ``DataError`` naming file/row/field)."""
    if isinstance(raw, DataError):
        raise raw
    if mode == "rejudge":
        ex = normalize_row(raw, source, rowno)
        if len(ex.responses) != 2:
            raise DataError("rejudge takes (chosen, rejected) pairs, got a k-way row", source, rowno, "responses")
        return ex
    return normalize_candidates(raw, source, rowno, min_responses=2 if mode == "pairs-from-candidates" else 1)


@dataclass
class TaskOutput:
    records: list = field(default_factory=list)
    report: DropReport = field(default_factory=DropReport)
    counts: Counter = field(default_factory=Counter)
    chat: bool = False
    tokens: int = 0
    timing: dict = field(default_factory=dict)
    attribute_names: list | None = None  # an attribute reward model's outputs, written with every score
    schema: pa.Schema | None = None  # set by modes with their own schema (process reward models)


def relabel_task(task: ReadTask, scorer, cfg: RelabelConfig) -> TaskOutput:
    """Read, parse, score and select one task's rows; every row read is kept or dropped with a reason."""
    out = TaskOutput()
    if scorer.model.head_kind.name == "prm":  # stepwise rows, step rewards (relabel/prm_task.py)
        from ray_rm.relabel.prm_task import prm_relabel_task

        prm_relabel_task(task, scorer, cfg, out)
        return out
    if cfg.mode == "step-filter":
        raise UserError("relabel.mode=step-filter cuts solutions by step rewards: it needs a process reward model "
                        "(a checkpoint trained with model.head=prm)")
    examples: list[PreferenceExample] = []
    parse = select.OneSchemaParser(lambda raw, source, rowno: parse_row(raw, source, rowno, cfg.mode), "rows",
                                   "responses")
    examples.extend(read_examples(task, out.report, cfg.on_error, parse))
    out.chat = bool(parse.chat)
    out.attribute_names = scorer.attribute_names
    scored = score_examples(scorer, examples, cfg.normalize, out.timing)
    out.tokens = group_tokens(scored)
    for ex, s in zip(examples, scored):
        if not isinstance(s, ResponseScores):
            out.report.drop(*s)
            continue
        if cfg.mode == "pairs-from-candidates":
            sel = select.pairs_from_candidates(ex, s.scores, cfg.pair_strategy, cfg.min_margin, cfg.seed,
                                               s.attributes)
        elif cfg.mode == "rejudge":
            sel = select.rejudge(ex, s.scores, cfg.disagree, cfg.min_margin, s.attributes)
        else:
            sel = select.best_of_n(ex, s.scores, s.attributes)
        out.counts.update(sel.counts)
        if sel.drop:
            out.report.drop(*sel.drop)
        else:
            out.report.rows_kept += 1
            out.records.extend(sel.records)
    return out


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    write(tmp)
    os.replace(tmp, path)


def write_task(out_dir: Path, task_index: int, task: ReadTask, out: TaskOutput, cfg: RelabelConfig,
               timing: dict) -> dict:
    """Write the part file(s), then the marker; returns the marker's content."""
    name = part_name(task_index)
    data_dir = out_dir / DATA_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / PROGRESS_DIR).mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(out.records,
                                 schema=out.schema or select.output_schema(cfg.mode, out.chat, out.attribute_names))
    files = [f"{DATA_DIR}/{name}.parquet"]
    _atomic_write(data_dir / f"{name}.parquet", lambda p: pq.write_table(table, p))
    if cfg.write_jsonl:
        files.append(f"{DATA_DIR}/{name}.jsonl")
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out.records)
        _atomic_write(data_dir / f"{name}.jsonl", lambda p: p.write_text(text, encoding="utf-8"))
    marker = {"task_index": task_index, "task": task.to_dict(), "report": out.report.to_dict(),
              "counts": dict(out.counts), "output_rows": len(out.records), "files": files,
              "tokens": out.tokens, **timing, "finished_at": time.time(),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    _atomic_write(marker_path(out_dir, task_index), lambda p: p.write_text(json.dumps(marker)))
    return marker


def run_task(out_dir: Path, task_index: int, task: ReadTask, scorer, cfg: RelabelConfig) -> dict:
    """Relabel one task unless its marker already exists (another attempt finished it)."""
    existing = marker_path(out_dir, task_index)
    if existing.is_file():
        return json.loads(existing.read_text())
    started_at, start, cpu = time.time(), time.perf_counter(), time.process_time()
    out = relabel_task(task, scorer, cfg)
    timing = {"started_at": started_at, "seconds": round(time.perf_counter() - start, 4),
              "cpu_seconds": round(time.process_time() - cpu, 4),
              "score_seconds": round(out.timing.get("score_seconds", 0.0), 4)}
    return write_task(out_dir, task_index, task, out, cfg, timing)
