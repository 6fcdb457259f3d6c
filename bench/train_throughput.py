"""Training throughput: padded vs packed vs packed + shared prompt, and ray_rm's overhead over bare torch.

Model SmolLM2-135M-Instruct (fp32, CPU), data ../shared/data/hh-rlhf-harmless/train.jsonl, bt loss,
AdamW. All variants run in one process invocation on the same pairs:

  Same pairs per step (``--pairs-per-step``, default 8), in-process, 2 threads:
    padded     the TRL / open-instruct way: AutoModelForSequenceClassification on right-padded batches
               with an attention mask, reward at the last non-pad token
    packed     ray_rm's model on one packed row holding the step's pairs (varlen attention)
    shared     the same, prompt-shared layout [prompt | chosen | rejected]
  Same packed rows (token budget ``--pack-tokens``), identical to what the job streams, so all three train
  exactly the same pairs in each step:
    padded     each of the job's rows as one right-padded batch of its pairs (as above)
    bare       a plain torch loop: collate -> forward -> loss -> backward -> clip -> AdamW (the machine's limit)
    ray_rm     the real job: Ray Data -> Ray Train TorchTrainer (1 worker, all cores) -> DeepSpeed (ZeRO-2
               configured; one worker without offload runs stage 0, see ray_rm/train/deepspeed_setup.py);
               pairs/s and tokens/s from its per-step metrics (same rows, same order)
  The issue-14 targets read from this section: ray_rm >= 0.90x bare (tokens/s) and >= 2.5x padded (pairs/s).
  ``cpu_while_training`` says where the cores went in the job's steady phase: to its train worker, or to the
  driver and Ray's processes beside it (``bench/ray_idle_floor.py`` measures what those cost a bare loop).

  python bench/train_throughput.py [--pairs 96] [--max-len 384] [--steps 6] [--job-steps 10] [--job-warmup 3]
Prints JSON and writes bench/results/train_throughput.json and .png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from cpu_sampler import CpuSampler, busiest_window, cpu_split, find_pid  # noqa: E402
from results_file import save_results  # noqa: E402
HH_TRAIN = REPO.parent / "shared" / "data" / "hh-rlhf-harmless" / "train.jsonl"
RESULTS = REPO / "bench" / "results"
MODEL = "smollm2-135m-instruct"  # --model replaces it (the smoke test uses a tiny random model)
NAN = math.nan


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def load_groups(pairs: int, max_len: int):
    """The first ``pairs`` hh-rlhf pairs whose sequences fit ``max_len`` tokens (file order)."""
    from ray_rm.config_schema import DataConfig
    from ray_rm.data.prepare import make_encoder, process_task
    from ray_rm.data.sources import plan_read_tasks

    cfg = DataConfig(max_length=max_len, pack_tokens=4 * max_len, limit=pairs * 2)
    encoder = make_encoder(MODEL, cfg)
    groups = []
    for task in plan_read_tasks([str(HH_TRAIN)], 10_000, cfg.limit):
        groups += process_task(task, encoder, cfg, share_prompt=True)[0]
    return groups[:pairs]


def timed_steps(step_fn, batches, warmup: int):
    """Run warmup steps, then time the rest; returns the per-step seconds of the timed ones."""
    times = []
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        step_fn(b)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def rate(times, pairs_per_step, tokens_per_step):
    total = sum(times)
    return {"steps": len(times), "pairs": sum(pairs_per_step), "seconds": round(total, 2), "pairs_per_s": round(sum(pairs_per_step) / total, 3),
            "tokens_per_s": round(sum(tokens_per_step) / total, 1),
            "step_s_median": round(statistics.median(times), 3)}


def run_padded(chunks, warmup):
    import torch
    from transformers import AutoModelForSequenceClassification

    from ray_rm.assets import resolve_model_path

    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(MODEL),
                                                               num_labels=1, attn_implementation="sdpa")
    model.config.pad_token_id = 0  # <|endoftext|>, never a reward token here
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(chunk):
        seqs = [s for g in chunk for s in g.sequences]
        longest = max(len(s) for s in seqs)
        ids = torch.tensor([s + [0] * (longest - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (longest - len(s)) for s in seqs])
        r = model(input_ids=ids, attention_mask=mask).logits[:, 0]
        loss = -torch.nn.functional.logsigmoid(r[0::2] - r[1::2]).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()

    times = timed_steps(step, chunks, warmup)
    timed = chunks[warmup:]
    padded_tokens = [len(c) * 2 * max(len(s) for g in c for s in g.sequences) for c in timed]
    out = rate(times, [len(c) for c in timed], [sum(len(s) for g in c for s in g.sequences) for c in timed])
    out["padded_tokens_per_step"] = round(statistics.mean(padded_tokens))
    return out


def ray_rm_step_fn(share_prompt: bool):
    import torch

    from ray_rm.config_schema import ModelConfig
    from ray_rm.losses import LossSettings, compute_loss
    from ray_rm.model.batch import collate_row
    from ray_rm.model.build import build_reward_model

    model = build_reward_model(ModelConfig(name_or_path=MODEL), seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(row):
        batch = collate_row(row)
        res = compute_loss(model(batch), batch, LossSettings("bt"))
        (res.terms["bt"][0] / res.counts["pairs"]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the job clips too (train.clip_grad=1.0)
        opt.step()
        opt.zero_grad()

    return step


def run_packed(chunks, share_prompt, warmup):
    from ray_rm.data.packer import append_group
    from ray_rm.packed import PackedRow

    rows = []
    for chunk in chunks:  # one row per step holding exactly that step's pairs
        row = PackedRow()
        for g in chunk:
            append_group(row, g, share_prompt)
        rows.append(row)
    times = timed_steps(ray_rm_step_fn(share_prompt), rows, warmup)
    timed = rows[warmup:]
    return rate(times, [len(r.group_ids) for r in timed], [r.num_tokens for r in timed])


def job_rows(data_file: Path, pack_tokens: int, max_len: int):
    """The packed rows a one-worker job trains, in its epoch-0 order (the streaming feed's plan, packed here),
    and each row's pairs as tokenized groups (the padded baseline's batches)."""
    from ray_rm.config_schema import DataConfig
    from ray_rm.data.pipeline import PackSettings, direct_task_records, make_encoder
    from ray_rm.data.prepare import task_groups
    from ray_rm.data.sources import ReadTask
    from ray_rm.packed import PackedRow
    from ray_rm.train.feed_plan import balanced_tasks, rank_tasks

    cfg = DataConfig(max_length=max_len, pack_tokens=pack_tokens)
    settings = PackSettings(MODEL, True, 42)
    tasks = rank_tasks(balanced_tasks([str(data_file)], cfg, 42, dp_size=1), 0, 42, 1, 0)
    encoder = make_encoder(settings.tokenizer_path, cfg)
    records = direct_task_records(tasks, encoder, cfg, settings)
    rows = [PackedRow.from_record(r) for r in records if r["kind"] == "packed"]
    by_id = {g.example_id: g for _, t in tasks for g in task_groups(ReadTask.from_dict(t), encoder, cfg, settings)[0]}
    return rows, [[by_id[i] for i in row.group_ids] for row in rows]


def run_bare(rows, warmup):
    step = ray_rm_step_fn(True)
    for row in rows[:warmup]:
        step(row)
    timed = rows[warmup:]
    cpu0 = time.process_time()  # all of this process's threads: the cores the loop got, next to the job's
    times = timed_steps(step, timed, 0)
    out = rate(times, [len(r.group_ids) for r in timed], [r.num_tokens for r in timed])
    out["process_cores"] = round((time.process_time() - cpu0) / sum(times), 3)
    return out


def run_job(data_file: Path, pack_tokens: int, max_len: int, steps: int, warmup: int, workdir: Path):
    from ray_rm.config import load_config
    from ray_rm.config_schema import TrainJobConfig
    from ray_rm.ray_utils import shutdown_ray
    from ray_rm.train.driver import run_training

    out = workdir / "job"
    cfg = load_config(TrainJobConfig, None, [
        f"output_dir={out}", f"model.name_or_path={MODEL}", f"data.train_files={data_file}",
        "data.eval_files=", f"data.max_length={max_len}", f"data.pack_tokens={pack_tokens}",
        "train.num_workers=1", f"train.cpus_per_worker={os.cpu_count()}", "train.zero_stage=2",
        "train.lora.r=0", "train.lr=1e-5", f"train.max_steps={steps}", "train.checkpoint_every=0",
        "train.eval_every=0", "train.tensorboard=false", "train.warmup_ratio=0"])
    try:
        with CpuSampler() as sampler:
            summary = run_training(cfg)
    finally:
        shutdown_ray()  # stop the local cluster, so the in-process variants run on an otherwise idle machine
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [m for m in metrics if m["global_step"] > warmup]
    seconds = sum(m["train/rm/step_seconds"] for m in timed)
    tokens = sum(m["train/rm/tokens_per_s"] * m["train/rm/step_seconds"] for m in timed)
    pairs = sum(m["train/rm/pairs_per_s"] * m["train/rm/step_seconds"] for m in timed)
    return {"steps": len(timed), "pairs": round(pairs), "seconds": round(seconds, 2),
            "pairs_per_s": round(pairs / seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1),
            "step_s_median": round(statistics.median(m["train/rm/step_seconds"] for m in timed), 3),
            "peak_memory_gb_per_worker": round(max(m["train/rm/peak_memory_gb"] for m in metrics), 2),
            "wall_time_s_incl_startup": summary["wall_time_s"],
            "cpu_while_training": cpu_while_training(sampler.snaps)}


def cpu_while_training(snaps: list) -> dict:
    """Cores the train worker got in its steady phase, and what every other process (driver, Ray) took."""
    worker = find_pid(snaps, "RayTrainWorker")
    if worker is None:
        return {}
    return cpu_split(snaps, worker, *busiest_window(snaps, worker))


def measure_layouts(chunks, warmup: int) -> dict:
    """Same pairs per step, in this process: padded vs packed vs packed with the prompt shared."""
    same = {"padded": run_padded(chunks, warmup)}
    same["padded"]["peak_rss_gb_so_far"] = round(peak_rss_gb(), 2)
    same["packed"] = run_packed(chunks, False, warmup)
    same["shared"] = run_packed(chunks, True, warmup)
    padded = same["padded"]["pairs_per_s"]
    return {"same_pairs_per_step": same,
            "shared_vs_padded_pairs_per_s": round(same["shared"]["pairs_per_s"] / padded, 2),
            "packed_vs_padded_pairs_per_s": round(same["packed"]["pairs_per_s"] / padded, 2)}


def measure_overhead(args) -> dict:
    """Same packed rows: the real job first (its local cluster stopped after it), then padded and bare here."""
    with tempfile.TemporaryDirectory() as tmp:
        data_file = Path(tmp) / "pairs.jsonl"
        lines = HH_TRAIN.read_text().splitlines()
        data_file.write_text("\n".join(lines[: args.pairs * 2]))
        rows, row_groups = job_rows(data_file, args.pack_tokens, args.max_len)
        job_order = rows[: args.job_steps]  # the job's first-epoch order
        job = run_job(data_file, args.pack_tokens, args.max_len, args.job_steps, args.job_warmup, Path(tmp))
        padded = run_padded(row_groups[: args.job_steps], args.job_warmup)
        bare = run_bare(job_order, args.job_warmup)
        bare["peak_rss_gb_process"] = round(peak_rss_gb(), 2)
    out = {"same_packed_rows": {"padded": padded, "bare": bare, "ray_rm": job},
           "ray_rm_vs_bare": round(job["tokens_per_s"] / bare["tokens_per_s"], 3),
           "ray_rm_vs_padded_pairs_per_s": round(job["pairs_per_s"] / padded["pairs_per_s"], 2)}
    worker_cores = job["cpu_while_training"].get("process_cores")
    if worker_cores:  # job/bare = (cores the worker got / cores bare got) x (tokens per core-second, job / bare)
        cores = worker_cores / bare["process_cores"]
        out["ray_rm_vs_bare_split"] = {"cores": round(cores, 3),
                                       "tokens_per_core_second": round(out["ray_rm_vs_bare"] / cores, 3)}
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    same = result.get("same_pairs_per_step")
    names = ["padded", "packed", "shared"]
    if same:  # absent after --only overhead with no earlier layouts result
        axes[0].bar(names, [same[n]["pairs_per_s"] for n in names], color=["#999", "#48c", "#2a6"])
        axes[0].set_title(f"pairs/s, {result['config']['pairs_per_step']} pairs per step")
        for i, n in enumerate(names):
            ratio = same[n]["pairs_per_s"] / same["padded"]["pairs_per_s"]
            axes[0].text(i, same[n]["pairs_per_s"], f"{ratio:.2f}x", ha="center", va="bottom")
    rows = result.get("same_packed_rows")
    if not rows:
        axes[1].set_visible(False)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        return
    names = ["padded", "bare", "ray_rm"]
    axes[1].bar(["padded", "bare torch", "ray_rm job"], [rows[n]["pairs_per_s"] for n in names],
                color=["#999", "#48c", "#2a6"])
    for i, n in enumerate(names):
        axes[1].text(i, rows[n]["pairs_per_s"], f"{rows[n]['pairs_per_s'] / rows['padded']['pairs_per_s']:.2f}x",
                     ha="center", va="bottom")
    axes[1].set_title(f"pairs/s, the job's rows (job/bare tokens/s {result['ray_rm_vs_bare']:.2f}x)")
    cpu = rows["ray_rm"].get("cpu_while_training")
    if cpu:
        axes[1].set_xlabel(f"cores while training: job's worker {cpu['process_cores']:.2f}, bare loop "
                           f"{rows['bare'].get('process_cores', NAN):.2f};\nthe driver + {cpu['ray_worker_processes_beside']}"
                           f" Ray processes (+ GCS, raylet, dashboard) {cpu['other_cores']:.2f}")
    fig.suptitle(f"{Path(MODEL).name} fwd+bwd, fp32, {result['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    global MODEL
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", default=str(RESULTS), help="where the JSON and PNG go")
    parser.add_argument("--pairs", type=int, default=96, help="hh-rlhf pairs used (first ones that fit)")
    parser.add_argument("--max-len", type=int, default=384, help="max tokens per sequence")
    parser.add_argument("--pairs-per-step", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="steps per in-process variant (first is warmup)")
    parser.add_argument("--pack-tokens", type=int, default=2048, help="row budget for the bare vs job comparison")
    parser.add_argument("--job-steps", type=int, default=10, help="steps of the real job (and of padded and bare "
                                                                   "on the same rows)")
    parser.add_argument("--job-warmup", type=int, default=3,
                        help="first steps left out of the same-rows timing, for all three variants alike: the "
                             "job's first steps overlap its pack actors starting (a one-time cost, reported as "
                             "wall_time_s_incl_startup)")
    parser.add_argument("--only", choices=["all", "layouts", "overhead"], default="all",
                        help="run only the padded/packed/shared comparison or only bare vs ray_rm")
    parser.add_argument("--model", default=MODEL, help="model name or path (figures use SmolLM2-135M)")
    args = parser.parse_args()
    MODEL = args.model

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    warmup = 1
    out_file = Path(args.results_dir) / "train_throughput.json"
    result = json.loads(out_file.read_text()) if args.only != "all" and out_file.exists() else {}
    result.update({"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, torch "
                   f"{torch.__version__}", "config": vars(args) | {"warmup_steps": warmup}})
    # The job runs first, while this process is still small: after the in-process variants it holds ~10 GB of
    # freed-but-kept allocator memory next to the job's worker on a 24 GB machine.
    if args.only in ("all", "overhead"):
        if args.job_steps <= args.job_warmup:
            parser.error(f"--job-steps {args.job_steps} leaves no timed step after --job-warmup {args.job_warmup}")
        result.update(measure_overhead(args))
    if args.only in ("all", "layouts"):
        groups = load_groups(args.pairs, args.max_len)
        k = args.pairs_per_step
        chunks = [groups[i:i + k] for i in range(0, len(groups) - k + 1, k)][:args.steps]
        if len(chunks) <= warmup:
            parser.error(f"only {len(groups)} pairs fit in --max-len {args.max_len}: {len(chunks)} step(s) of "
                         f"{k} pairs, need more than {warmup} warmup step; raise --pairs or --max-len")
        result.update(measure_layouts(chunks, warmup))
    save_results(result, args.results_dir, "train_throughput", plot)


if __name__ == "__main__":
    main()
