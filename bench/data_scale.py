"""Data-feed cost as the data grows: time to the first optimizer step, peak object-store bytes, rows each
worker read, end-to-end pairs/s and driver RSS, for each feed design at each data size (issue 14).

Data: synthetic pairs with hh-rlhf's joint length distribution (bench/synthetic_pairs.py), tokenized with
SmolLM2's tokenizer and packed by ray_rm's pipeline. Training: ``--workers`` Ray Train workers running a
tiny real step (bench/scale_probes.py ``TinyStep``: an all-reduced EmbeddingBag step, or ``--step noop``:
only the all-reduce), so the data feed's cost dominates. Each (design, size) runs in a fresh child process
with its own local Ray cluster, so peaks and RSS are not inherited from the previous run. The clock starts
before ``ray.init`` (job start); data generation is not timed.

Designs (``DESIGNS``: name -> runner(files, opts) returning per-rank counters):
  baseline   today's feed: the driver runs the whole pipeline and materializes it in the object store, then
             TorchTrainer with ``DataConfig(datasets_to_split=[])``: every worker iterates every row and keeps
             row k when k % dp == rank (ray_rm/train/data_feed.py's arithmetic).
  stream     ray_rm's streaming feed (ray_rm/train/feed_plan.py + data_feed.py): the driver plans read tasks
             and estimates the epoch from a sample; each worker streams its own tasks through a windowed
             Ray Data pipeline while it steps (the default of the train job).

  python bench/data_scale.py [--sizes 10000,40000] [--designs baseline] [--results-dir bench/results]
Prints JSON and writes RESULTS/data_scale.json and data_scale.png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path[:0] = [str(REPO), str(BENCH)]
RESULTS = BENCH / "results"

from scale_probes import ObjectStoreSampler, RankCounters, TinyStep, report_counters  # noqa: E402
from results_file import save_results  # noqa: E402


def library():
    """Every ray_rm name this bench uses, in one place: re-point here when the library moves them."""
    from ray_rm.config_schema import DataConfig
    from ray_rm.data.packer import PackedRow
    from ray_rm.data.pipeline import PackSettings, packed_dataset

    return DataConfig, PackSettings, packed_dataset, PackedRow


@dataclass(frozen=True)
class BenchOptions:
    workers: int = 2
    tokenize_actors: int = 2
    rows_per_task: int = 2000
    pack_tokens: int = 4096
    step: str = "tiny"  # tiny | noop
    seed: int = 42
    tokenizer: str = "smollm2-135m-instruct"
    num_cpus: int = 4
    window_mb: int = 64  # stream design: object-store window per rank
    max_steps: int = 0  # stop every worker after this many steps (0 = one full epoch)


def pipeline_config(files: list[str], opts: BenchOptions):
    """(DataConfig, PackSettings) of the pipeline every design feeds from."""
    DataConfig, PackSettings, _, _ = library()
    cfg = DataConfig(train_files=list(files), pack_tokens=opts.pack_tokens, rows_per_read_task=opts.rows_per_task,
                     tokenize_actors=opts.tokenize_actors)
    return cfg, PackSettings(tokenizer_path=opts.tokenizer, share_prompt=True, seed=opts.seed)


def make_trainer(loop, loop_config: dict, opts: BenchOptions, storage: str, **kwargs):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(loop, train_loop_config=loop_config,
                        scaling_config=ScalingConfig(num_workers=opts.workers, resources_per_worker={"CPU": 1}),
                        run_config=RunConfig(name="data_scale", storage_path=storage),
                        torch_config=TorchConfig(backend="gloo"), **kwargs)


# ---------------------------------------------------------------- baseline: today's materializing feed
def run_baseline(files: list[str], opts: BenchOptions) -> dict:
    from ray.data.expressions import col
    from ray.train import DataConfig as TrainDataConfig

    _, _, packed_dataset, _ = library()
    cfg, settings = pipeline_config(files, opts)
    t0 = time.time()
    ds = packed_dataset(files, cfg, settings).materialize()
    reports = [json.loads(r["report_json"]) for r in
               ds.filter(expr=col("kind") == "report").select_columns(["report_json"]).take_all()]
    packed = ds.filter(expr=col("kind") == "packed").materialize()
    num_rows = packed.count()
    packed_s = time.time() - t0
    steps = math.ceil(num_rows / opts.workers)
    loop_config = {"steps": min(steps, opts.max_steps) if opts.max_steps else steps, "noop": opts.step == "noop"}
    with tempfile.TemporaryDirectory(prefix="data_scale_") as storage:
        result = make_trainer(baseline_loop, loop_config, opts, storage, datasets={"train": packed},
                              dataset_config=TrainDataConfig(datasets_to_split=[])).fit()
    return {"ranks": json.loads(result.metrics["ranks_json"]), "rows_total": num_rows,
            "pairs_total": sum(r["rows_kept"] for r in reports), "pairs_read": sum(r["rows_read"] for r in reports),
            "phases": {"materialize_s": round(packed_s, 2)}}


def baseline_loop(config: dict) -> None:
    import ray.train
    import torch

    PackedRow = library()[3]
    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    dp, dp_rank = ctx.get_world_size(), ctx.get_world_rank()
    counters, step = RankCounters(), TinyStep(noop=config["noop"])
    shard = ray.train.get_dataset_shard("train")

    def own_rows():
        for k, rec in enumerate(shard.iter_rows()):
            counters.saw_row()
            if k % dp == dp_rank:
                yield PackedRow.from_record(rec)

    rows = own_rows()
    for _ in range(config["steps"]):
        row = next(rows, None)
        step([row])
        counters.stepped([row])
    report_counters(counters)


# ---------------------------------------------------------------- stream: the library's streaming feed
def run_stream(files: list[str], opts: BenchOptions) -> dict:
    """ray_rm's feed as the train job runs it: plan on the driver (train/feed_plan.py), stream per rank."""
    from dataclasses import replace

    from ray_rm.data.pipeline import make_encoder
    from ray_rm.data.prepare import resolve_max_length
    from ray_rm.train.feed_plan import FeedPlan, balanced_tasks, estimate_steps_per_epoch

    cfg, settings = pipeline_config(files, opts)
    t0 = time.time()
    cfg = resolve_max_length(cfg, settings.tokenizer_path)
    tasks = balanced_tasks(files, cfg, settings.seed, opts.workers)
    estimate = estimate_steps_per_epoch(tasks, make_encoder(settings.tokenizer_path, cfg), cfg, settings,
                                        opts.workers, 1)
    plan = FeedPlan(tasks, [], cfg, settings, replace(settings, seed=None),
                    actors_per_rank=max(1, math.ceil(opts.tokenize_actors / opts.workers)), actor_cpus=1.0,
                    window_bytes=opts.window_mb * 2 ** 20, estimated_steps_per_epoch=estimate)
    plan_s = time.time() - t0
    with tempfile.TemporaryDirectory(prefix="data_scale_") as storage:
        result = make_trainer(stream_loop, {"plan": plan, "noop": opts.step == "noop", "seed": opts.seed,
                                            "max_steps": opts.max_steps}, opts, storage).fit()
    ranks = json.loads(result.metrics["ranks_json"])
    data = ranks[0]["data_summary"]["train"]
    return {"ranks": ranks, "rows_total": data["rows"], "pairs_total": data["report"]["rows_kept"],
            "pairs_read": data["report"]["rows_read"],
            "phases": {"plan_s": round(plan_s, 2), "tasks": len(tasks), "estimated_steps": estimate,
                       "steps": ranks[0]["steps"], "window_mb": opts.window_mb}}


def stream_loop(config: dict) -> None:
    import ray.train
    import torch

    from ray_rm.train.data_feed import WorkerFeed, direct_source, ray_data_source

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    plan = config["plan"]
    counters, step = RankCounters(), TinyStep(noop=config["noop"])
    stream = ray_data_source(plan)

    def counted(tasks):
        for rec in stream(tasks):
            if rec["kind"] == "packed":
                counters.saw_row()
            yield rec

    feed = WorkerFeed(plan, ctx.get_world_size(), ctx.get_world_rank(), 1, config["seed"], 1024, counted,
                      direct_source(plan))
    for step_in_epoch, rows, _ in feed.steps(0):
        step(rows)
        counters.stepped(rows)
        if step_in_epoch + 1 == config["max_steps"]:  # the same step on every rank (they step in lock-step)
            break
    report_counters(counters, {"data_summary": feed.data_summary()})


DESIGNS = {"baseline": run_baseline, "stream": run_stream}


# ---------------------------------------------------------------- harness
def run_child(design: str, files: list[str], opts: BenchOptions) -> dict:
    """One (design, size) in this process: start Ray, sample, run, derive the metrics, stop Ray."""
    import ray

    t_job = time.time()
    ray.init(num_cpus=opts.num_cpus, include_dashboard=False, log_to_driver=bool(os.environ.get("BENCH_VERBOSE")),
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
                                       "PYTHONPATH": os.pathsep.join([str(REPO), str(BENCH)])}})
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    ray_init_s = time.time() - t_job
    sampler = ObjectStoreSampler().start()
    try:
        out = DESIGNS[design](files, opts)
    finally:
        store = sampler.stop()
        ray.shutdown()
    ranks = out.pop("ranks")
    first = max(r["first_step_time"] for r in ranks)
    last = max(r["last_step_time"] for r in ranks)
    pairs = sum(r["pairs"] for r in ranks)
    return {
        "design": design, **out, "ray_init_s": round(ray_init_s, 2),
        "time_to_first_step_s": round(first - t_job, 2), "end_to_end_s": round(last - t_job, 2),
        "pairs_trained": pairs, "pairs_per_s": round(pairs / (last - t_job), 1),
        # after the first step: the pipeline's rate once it runs (the tiny step costs ~nothing), start-up excluded
        "steady_pairs_per_s": round((pairs - sum(r["first_step_pairs"] for r in ranks)) / max(1e-9, last - first), 1),
        "rows_read_per_worker": [r["rows_read"] for r in ranks],
        "rows_trained_per_worker": [r["rows_trained"] for r in ranks],
        "dummy_rows_per_worker": [r["dummy_rows"] for r in ranks],
        "steps_per_worker": [r["steps"] for r in ranks],
        "first_row_s_per_worker": [round(r["first_row_time"] - t_job, 2) for r in ranks],
        **store, "driver_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def run_isolated(design: str, size: int, files: list[str], opts: BenchOptions) -> dict:
    """Run one (design, size) in a child process; its peak RSS is the driver's."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, __file__, "--child", design, "--child-out", out.name,
               "--child-files", json.dumps(files), "--options", json.dumps(asdict(opts))]
        t0 = time.time()
        proc = subprocess.run(cmd, text=True, capture_output=True)
        if proc.returncode:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
            return {"design": design, "size": size, "error": proc.stderr.strip().splitlines()[-1:]}
        result = json.loads(Path(out.name).read_text())
    result.update(size=size, child_wall_s=round(time.time() - t0, 1))
    return result


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("time_to_first_step_s", "time to first step (s)", 1), ("peak_object_store_bytes",
              "peak object store (MiB)", 2 ** 20), ("peak_driver_rss_bytes", "peak driver RSS (MiB)", 2 ** 20),
              ("pairs_per_s", "end-to-end pairs/s", 1), ("read_amplification", "rows read / rows trained", 1)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (key, title, scale) in zip(axes, panels):
        for design in dict.fromkeys(r["design"] for r in runs):
            pts = sorted((r["size"], r[key] / scale) for r in runs if r["design"] == design and key in r)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=design)
        ax.set_xscale("log")
        ax.set_xlabel("pairs")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def ratios(runs: list[dict]) -> dict:
    """Per design, largest over smallest size measured: the growth the issue's targets bound."""
    out = {}
    for design in dict.fromkeys(r["design"] for r in runs if "error" not in r):
        mine = sorted((r for r in runs if r["design"] == design and "error" not in r), key=lambda r: r["size"])
        if len(mine) < 2:
            continue
        lo, hi = mine[0], mine[-1]
        out[design] = {"sizes": [lo["size"], hi["size"]],
                       **{f"{k}_growth": round(hi[k] / lo[k], 3) for k in
                          ("time_to_first_step_s", "peak_object_store_bytes", "peak_driver_rss_bytes") if lo.get(k)}}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,40000", help="comma-separated pair counts")
    p.add_argument("--designs", default="baseline,stream", help=f"comma-separated, from {', '.join(DESIGNS)}")
    p.add_argument("--baseline-max-pairs", type=int, default=160_000,
                   help="run the materializing baseline only up to this size (its packing time grows linearly)")
    p.add_argument("--results-dir", default=str(RESULTS), help="where the JSON and PNG go")
    p.add_argument("--data-dir", default="", help="synthetic shards (default: RESULTS/synthetic_pairs)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--append", action="store_true",
                   help="keep the runs already in RESULTS/data_scale.json (a new run of the same design and size "
                        "replaces the old one): split the full bench over several commands")
    for field, default in asdict(BenchOptions()).items():
        p.add_argument(f"--{field.replace('_', '-')}", type=type(default), default=default)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("--child-files", help=argparse.SUPPRESS)
    p.add_argument("--options", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        opts = BenchOptions(**json.loads(args.options))
        Path(args.child_out).write_text(json.dumps(run_child(args.child, json.loads(args.child_files), opts)))
        return
    opts = BenchOptions(**{f: getattr(args, f) for f in asdict(BenchOptions())})
    designs = [d for d in args.designs.split(",") if d]
    unknown = [d for d in designs if d not in DESIGNS]
    if unknown:
        p.error(f"unknown design(s) {unknown}; choose from {', '.join(DESIGNS)}")
    results = Path(args.results_dir)
    data_root = Path(args.data_dir) if args.data_dir else results / "synthetic_pairs"
    from synthetic_pairs import ensure_pairs

    runs = []
    previous = results / "data_scale.json"
    if args.append and previous.is_file():
        runs = json.loads(previous.read_text())["runs"]
    for size in (int(s) for s in args.sizes.split(",")):
        files, manifest = ensure_pairs(data_root / f"pairs-{size}-seed{args.data_seed}", size, args.data_seed)
        for design in designs:
            if design == "baseline" and size > args.baseline_max_pairs:
                continue
            run = run_isolated(design, size, files, opts)
            if "rows_total" in run:
                run["read_amplification"] = round(sum(run["rows_read_per_worker"]) / max(1, run["rows_total"]), 3)
            run["data_bytes"] = manifest["bytes"]
            run["max_steps"] = opts.max_steps  # 0: one full epoch
            runs = [r for r in runs if (r["design"], r["size"]) != (design, size)] + [run]
            print(json.dumps({k: v for k, v in run.items() if k != "object_store_timeline"}), flush=True)
    out = {"options": asdict(opts), "machine": {"cpus": os.cpu_count()}, "runs": runs, "ratios": ratios(runs)}
    save_results(out, results, "data_scale", lambda res, png: plot([r for r in res["runs"] if "error" not in r], png),
                 printed={"results": str(results / "data_scale.json"), "plot": str(results / "data_scale.png")},
                 indent=1)


if __name__ == "__main__":
    main()
