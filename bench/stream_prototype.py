"""Experiment (not the library's feed): per-rank streaming, design C of SCALE_DESIGN.md, to verify its claims
on Ray 2.60 before the real feed is written.

The driver plans read tasks once (ray_rm's planning: JSONL byte offsets, seeded task order) and deals them
to data-parallel ranks by arithmetic (task position p -> rank p % dp). Inside the train loop each rank builds
its own Ray Data pipeline over its tasks (``from_items`` -> ``PrepareAndPack`` on an actor pool of its own,
``preserve_order``) starting at a cursor (task position, rows of that task already consumed), and iterates
it while training. Each step all-reduces "do I have a row", so ranks whose shard ran out step on dummy rows
until every rank is done. The executor's object-store budget is capped per rank
(``ExecutionOptions.resource_limits.object_store_memory``): the window.

Standalone, it checks what the design note claims (40k pairs by default):
  python bench/stream_prototype.py [--pairs 40000] [--window-mb 32] [--step-sleep-ms 0]
    run 1 and run 2: the same rows per rank in the same order (digest), each row read by exactly one rank;
    run 3: resumed at the middle of each rank's stream, it yields exactly the rest of run 1's rows;
    time to first row / first step and peak object-store bytes for each run.
``bench/data_scale.py --designs prototype`` runs it next to the baseline.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from scale_probes import ObjectStoreSampler, RankCounters, TinyStep, report_counters  # noqa: E402


def library():
    """The ray_rm names the prototype uses (re-point here when the library moves them)."""
    from ray_rm.data.packer import PackedRow
    from ray_rm.data.pipeline import PrepareAndPack, ordered_tasks
    from ray_rm.data.prepare import resolve_max_length

    return ordered_tasks, PrepareAndPack, PackedRow, resolve_max_length


def plan(files: list[str], opts) -> tuple[list[dict], object, object]:
    """(task dicts in epoch-0 order, resolved DataConfig, PackSettings), computed once on the driver."""
    from data_scale import pipeline_config

    ordered_tasks, _, _, resolve_max_length = library()
    cfg, settings = pipeline_config(files, opts)
    cfg = resolve_max_length(cfg, settings.tokenizer_path)
    return [t.to_dict() for t in ordered_tasks(files, cfg, settings.seed)], cfg, settings


def rank_task_positions(num_tasks: int, dp: int, dp_rank: int) -> list[int]:
    """Epoch-0 task positions of one data-parallel rank: p % dp == rank."""
    return list(range(dp_rank, num_tasks, dp))


def rank_dataset(tasks: list[dict], positions: list[int], cfg, settings, actors: int, window_bytes: int):
    """The rank's own lazy pipeline; executing it (iterating) runs a streaming executor in this process."""
    import ray
    from ray.data import ActorPoolStrategy, ExecutionOptions, ExecutionResources

    _, PrepareAndPack, _, _ = library()
    items = [{"task": json.dumps(tasks[p]), "task_index": p} for p in positions]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(PrepareAndPack, fn_constructor_kwargs={"data_cfg": cfg, "settings": settings},
                        batch_size=1, batch_format="numpy", num_cpus=1,
                        compute=ActorPoolStrategy(size=max(1, min(actors, len(items)))))
    ds.context.execution_options = ExecutionOptions(
        preserve_order=True, resource_limits=ExecutionResources(cpu=actors, object_store_memory=window_bytes))
    return ds


def packed_records(ds, skip_rows: int, counters: RankCounters, reports: list):
    """Packed-row records in stream order; report rows go to ``reports``. The first ``skip_rows`` rows of the
    first task are skipped (resume inside a task: its packing is recomputed, deterministically)."""
    for rec in ds.iter_rows():
        if skip_rows and rec["row_in_task"] < skip_rows:
            continue
        skip_rows = 0
        counters.saw_row()
        if rec["kind"] == "packed":
            yield rec
        else:
            reports.append(json.loads(rec["report_json"]))


def stream_loop(config: dict) -> None:
    import ray.train
    import torch
    import torch.distributed as dist
    from ray.data import DataContext

    _, _, PackedRow, _ = library()
    torch.set_num_threads(1)
    DataContext.get_current().enable_progress_bars = False
    ctx = ray.train.get_context()
    dp, rank = ctx.get_world_size(), ctx.get_world_rank()
    positions = rank_task_positions(len(config["tasks"]), dp, rank)
    start_task, skip_rows = config.get("cursors", {}).get(str(rank), (0, 0))
    ds = rank_dataset(config["tasks"], positions[start_task:], config["cfg"], config["settings"],
                      config["actors_per_rank"], config["window_bytes"])
    counters, step = RankCounters(), TinyStep(noop=config["noop"])
    keys, reports, digest = [], [], hashlib.sha256()
    packed = packed_records(ds, skip_rows, counters, reports)
    while True:
        rec = next(packed, None)
        flag = torch.tensor([0.0 if rec is None else 1.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() == 0:
            break
        row = None if rec is None else PackedRow.from_record(rec)
        if row is not None:
            keys.append((int(rec["task_index"]), int(rec["row_in_task"])))
            digest.update(json.dumps(row.group_ids).encode())
        step([row])
        if config["step_sleep_s"]:
            time.sleep(config["step_sleep_s"])
        counters.stepped([row])
    report_counters(counters, {"digest": digest.hexdigest(), "keys": keys,
                               "pairs_read": sum(r["rows_read"] for r in reports),
                               "pairs_kept": sum(r["rows_kept"] for r in reports), "report_rows": len(reports)})


def run(files: list[str], opts, cursors: dict | None = None, window_mb: int = 32, step_sleep_ms: int = 0) -> dict:
    """The data_scale runner: plan on the driver, stream on the workers; returns per-rank counters."""
    t0 = time.time()
    tasks, cfg, settings = plan(files, opts)
    plan_s = time.time() - t0
    from data_scale import make_trainer

    loop_config = {"tasks": tasks, "cfg": cfg, "settings": settings, "noop": opts.step == "noop",
                   "actors_per_rank": max(1, opts.tokenize_actors // opts.workers), "cursors": cursors or {},
                   "window_bytes": window_mb * 2 ** 20, "step_sleep_s": step_sleep_ms / 1000}
    with tempfile.TemporaryDirectory(prefix="stream_proto_") as storage:
        result = make_trainer(stream_loop, loop_config, opts, storage).fit()
    ranks = json.loads(result.metrics["ranks_json"])
    return {"ranks": ranks, "rows_total": sum(r["rows_trained"] for r in ranks),
            "pairs_total": sum(r["pairs_kept"] for r in ranks), "pairs_read": sum(r["pairs_read"] for r in ranks),
            "phases": {"plan_s": round(plan_s, 2), "tasks": len(tasks)}}


def measured(files, opts, **kwargs) -> dict:
    """One run on a fresh local cluster, with the object-store sampler around it."""
    import ray

    t_job = time.time()
    ray.init(num_cpus=opts.num_cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
                                       "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "bench")])}})
    sampler = ObjectStoreSampler().start()
    try:
        out = run(files, opts, **kwargs)
    finally:
        store = sampler.stop()
        ray.shutdown()
    ranks = out["ranks"]
    return {**out, "time_to_first_row_s": [round(r["first_row_time"] - t_job, 2) for r in ranks],
            "time_to_first_step_s": round(max(r["first_step_time"] for r in ranks) - t_job, 2),
            "end_to_end_s": round(max(r["last_step_time"] for r in ranks) - t_job, 2),
            **{k: v for k, v in store.items() if k != "object_store_timeline"}}


def main() -> None:
    from data_scale import RESULTS, BenchOptions
    from synthetic_pairs import ensure_pairs

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=40_000)
    p.add_argument("--window-mb", type=int, default=32)
    p.add_argument("--step-sleep-ms", type=int, default=0, help="a slow consumer: the window must still hold")
    p.add_argument("--results-dir", default=str(RESULTS))
    args = p.parse_args()
    results = Path(args.results_dir)
    files, _ = ensure_pairs(results / "synthetic_pairs" / f"pairs-{args.pairs}-seed0", args.pairs, 0)
    opts = BenchOptions()
    knobs = {"window_mb": args.window_mb, "step_sleep_ms": args.step_sleep_ms}
    first, second = measured(files, opts, **knobs), measured(files, opts, **knobs)
    # resume each rank at the middle of its run-1 stream: (task position in the rank's list, rows consumed)
    cursors, expected = {}, {}
    for r in first["ranks"]:
        keys = r["keys"]
        mid = keys[len(keys) // 2]
        positions = rank_task_positions(first["phases"]["tasks"], len(first["ranks"]), r["rank"])
        cursors[str(r["rank"])] = (positions.index(mid[0]), mid[1])
        expected[r["rank"]] = keys[len(keys) // 2:]
    resumed = measured(files, opts, cursors=cursors, **knobs)
    all_keys = [tuple(k) for r in first["ranks"] for k in r["keys"]]
    verdict = {
        "rows_per_rank": [len(r["keys"]) for r in first["ranks"]],
        "dummy_rows_per_rank": [r["dummy_rows"] for r in first["ranks"]],
        "each_row_once": len(all_keys) == len(set(all_keys)) == first["rows_total"],
        "pairs_accounted": first["pairs_read"] == args.pairs,
        "same_order_two_runs": [r["digest"] for r in first["ranks"]] == [r["digest"] for r in second["ranks"]],
        "resume_yields_rest": all(r["keys"] == [list(k) for k in expected[r["rank"]]] for r in resumed["ranks"]),
    }
    slim = [{k: v for k, v in run.items() if k != "ranks"} for run in (first, second, resumed)]
    out = {"pairs": args.pairs, "knobs": knobs, "verdict": verdict, "runs": slim}
    results.mkdir(parents=True, exist_ok=True)
    (results / "stream_prototype.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
