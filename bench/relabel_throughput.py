"""Relabeling throughput vs a bare model forward over the same tokens (target: >= 0.85x).

Model: a reward model built from SmolLM2-135M-Instruct (random value head: throughput does not depend
on it), exported once into the ray_rm cache. Data: hh-rlhf harmless test pairs turned into
2-candidate rows ``{prompt, responses: [chosen, rejected]}``.

  * bare: the same packed rows the relabel job scores (same tasks, same packer, same budget), tokenized
    and collated in advance; only ``model(batch)`` under ``torch.no_grad`` is timed, in this process.
  * relabel: ``run_relabel`` (pairs-from-candidates) on a local Ray cluster, one actor with all cores:
    read, parse, tokenize, pack, score, select, write Parquet, mark progress. Reported as the pipeline
    rate (rows / (first task start -> last part written): the steady state of a long job, Ray
    scheduling between tasks included) and end to end (actor start and model load included).
  * Rounds alternate bare and relabel so both see the same background load; the best round of each
    is compared. On a shared machine wall times are noisy, so the job also reports the fraction of its
    pipeline time spent inside packed forward passes, measured in the same interval (load-robust).

  python bench/relabel_throughput.py [--rows 32] [--rows-per-task 8] [--repeats 3]
Prints JSON and writes bench/results/relabel_throughput.json and .png.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from random_head_rm import random_head_rm  # noqa: E402  (bench/ is the script's own directory)
from results_file import save_results  # noqa: E402
HH_TEST = REPO.parent / "shared" / "data" / "hh-rlhf-harmless" / "test.jsonl"
RESULTS = REPO / "bench" / "results"


def write_candidates(path: Path, rows: int) -> None:
    from ray_rm.data.formats import normalize_row

    lines = HH_TEST.read_text().splitlines()[:rows]
    with open(path, "w") as fh:
        for i, line in enumerate(lines):
            ex = normalize_row(json.loads(line), "hh", i + 1)
            fh.write(json.dumps({"prompt": ex.prompt, "responses": list(ex.responses)}) + "\n")


def build_batches(model_path: str, data: Path, rows_per_task: int, pack_tokens: int):
    """The exact packed rows the relabel job scores: same tasks, groups, packer and budget."""
    from ray_rm.data.formats import normalize_candidates
    from ray_rm.data.packer import pack_groups
    from ray_rm.data.sources import plan_read_tasks, read_task_rows
    from ray_rm.data.packer import TokenizedGroup
    from ray_rm.prefix import common_prefix_len
    from ray_rm.model.batch import collate_row
    from ray_rm.scoring import RewardScorer

    scorer = RewardScorer(model_path, pack_tokens=pack_tokens)
    batches, rows, tokens = [], 0, 0
    for task in plan_read_tasks([str(data)], rows_per_task):
        exs = [normalize_candidates(raw, task.source, n) for n, raw in read_task_rows(task)]
        ids = scorer.encode([(ex.prompt, r) for ex in exs for r in ex.responses])
        groups, k = [], 0
        for gi, ex in enumerate(exs):  # the groups RewardScorer.score_groups builds
            seqs = ids[k:k + len(ex.responses)]
            k += len(ex.responses)
            groups.append(TokenizedGroup(str(gi), seqs, [0] * len(seqs), common_prefix_len(seqs, keep_own=1),
                                         float("nan"), [float("nan")] * len(seqs)))
        budget = max(pack_tokens, max(g.num_tokens(scorer.share_prompt) for g in groups))
        for row in pack_groups(groups, budget, scorer.share_prompt, window=len(groups)):
            batches.append(collate_row(row, pad_token_id=scorer.pad_token_id))
            tokens += row.num_tokens
        rows += len(exs)
    return scorer, batches, rows, tokens


def bare_forward(scorer, batches: list, rows: int, tokens: int) -> dict:
    """Time only ``model(batch)`` over pre-collated rows (wall and process CPU time)."""
    import torch

    with torch.no_grad():
        start, cpu = time.perf_counter(), time.process_time()
        for b in batches:
            scorer.model(b)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "rows_per_s": rows / seconds,
            "tokens_per_s": tokens / seconds, "rows_per_cpu_s": rows / cpu_seconds}


def relabel(model_path: str, data: Path, out_dir: Path, rows_per_task: int, pack_tokens: int, cpus: int) -> dict:
    """One relabel job; end-to-end wall time, the pipeline window (first task start -> last part written),
    and the actor's CPU time per task."""
    from ray_rm.config import load_config
    from ray_rm.relabel.config import RelabelJobConfig
    from ray_rm.relabel.runner import run_relabel

    job = load_config(RelabelJobConfig, None, [
        f"relabel.model_path={model_path}", f"relabel.input_files={data}", f"output_dir={out_dir}",
        f"relabel.rows_per_task={rows_per_task}", f"relabel.pack_tokens={pack_tokens}", "relabel.actors=1",
        f"relabel.cpus_per_actor={cpus}", "relabel.overwrite=true", "relabel.progress=false"])
    start = time.perf_counter()
    summary = run_relabel(job)
    seconds = time.perf_counter() - start
    markers = [json.loads(p.read_text()) for p in sorted((out_dir / "_progress").glob("part-*.json"))]
    window = max(m["finished_at"] for m in markers) - min(m["started_at"] for m in markers)
    cpu = sum(m["cpu_seconds"] for m in markers)
    rows = summary["rows_read"]
    return {"seconds": seconds, "rows": rows, "rows_written": summary["rows_written"], "rows_per_s": rows / seconds,
            "pipeline_seconds": window, "pipeline_rows_per_s": rows / window, "actor_cpu_seconds": cpu,
            "rows_per_cpu_s": rows / cpu, "score_seconds": summary["score_seconds"],
            "scoring_fraction": summary["score_seconds"] / window, "actor_peak_rss_mb": summary["actor_peak_rss_mb"]}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best_bare, best_job = result["best"]["bare"], result["best"]["relabel"]
    labels = ["bare forward", "relabel job\n(pipeline)", "relabel job\n(end to end,\nincl. actor start)"]
    values = [best_bare["rows_per_s"], best_job["pipeline_rows_per_s"], best_job["rows_per_s"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bars = ax.bar(labels, values, color=["gray", "C0", "C1"])
    for bar, v in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.2f}\n({v / values[0]:.2f}x)", ha="center", va="bottom",
                fontsize=9)
    ax.axhline(0.85 * values[0], color="red", linestyle="--", label="target 0.85x bare")
    ax.set_ylabel("input rows / s (best of rounds)")
    ax.set_ylim(0, max(values) * 1.35)
    ax.set_title(f"Relabel vs bare forward: {result['model']}, {result['rows']} rows x 2 candidates,\n"
                 f"{result['threads']} CPU threads, best of {result['repeats']} rounds; time in forward passes "
                 f"{result['scoring_fraction']:.1%} of the pipeline (worst round)", fontsize=9)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", default=str(RESULTS), help="where the JSON and PNG go")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--rows-per-task", type=int, default=8)
    parser.add_argument("--pack-tokens", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved bare/relabel rounds; best is reported")
    parser.add_argument("--reward-model", default="", help="an exported reward-model checkpoint (default: "
                        "SmolLM2-135M with a random head; the smoke test uses a tiny one)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="torch threads / actor CPUs")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.cpus)
    model_path = args.reward_model or random_head_rm(max_length=1024)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "candidates.jsonl"
        write_candidates(data, args.rows)
        scorer, batches, rows, tokens = build_batches(model_path, data, args.rows_per_task, args.pack_tokens)
        with torch.no_grad():
            scorer.model(batches[-1])  # warm-up, not timed
        import ray

        ray.init(num_cpus=max(4, args.cpus), include_dashboard=False, log_to_driver=False)
        try:
            for _ in range(args.repeats):  # interleaved, so both sides see the same background load
                rounds.append({"bare": bare_forward(scorer, batches, rows, tokens),
                               "relabel": relabel(model_path, data, Path(tmp) / "out", args.rows_per_task,
                                                  args.pack_tokens, args.cpus)})
        finally:
            ray.shutdown()
    best = {side: {k: max(r[side][k] for r in rounds) for k in rounds[0][side] if k.endswith("_per_s")}
            for side in ("bare", "relabel")}
    result = {"model": args.reward_model or "SmolLM2-135M-Instruct RM, random head (fp32)", "device": "cpu", "threads": args.cpus,
              "rows": rows, "candidates_per_row": 2, "tokens_in_packed_rows": tokens, "packed_rows": len(batches),
              "rows_per_task": args.rows_per_task, "pack_tokens": args.pack_tokens, "repeats": args.repeats,
              "load_average": os.getloadavg(), "rounds": rounds, "best": best,
              "ratio_end_to_end": best["relabel"]["rows_per_s"] / best["bare"]["rows_per_s"],
              "ratio_pipeline": best["relabel"]["pipeline_rows_per_s"] / best["bare"]["rows_per_s"],
              "scoring_fraction": min(r["relabel"]["scoring_fraction"] for r in rounds), "target": 0.85,
              "bare_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "actor_peak_rss_mb": max(r["relabel"]["actor_peak_rss_mb"] for r in rounds)}
    result["meets_target"] = result["ratio_pipeline"] >= 0.85
    save_results(result, args.results_dir, "relabel_throughput", plot)


if __name__ == "__main__":
    main()
