"""What an idle Ray cluster costs a training loop on this machine: the ceiling for any Ray job here.

A ray_rm job trains beside Ray's own processes: GCS, raylet, dashboard, log monitor, and ~10 idle actors that
Ray Train and Ray Data start (controller, synchronization actor, placement-group cleaner, dataset manager,
stats actor, ...). Each idle actor's main thread wakes every 10 ms to check for signals (a period hard-coded
in Ray's core worker), so on 2 cores each one preempts the training threads ~100 times a second.

This bench measures that cost without any Ray code in the training process. The same bare torch loop as
``train_throughput.py`` (SmolLM2-135M, fp32, the job's packed rows) runs in this process, once with no Ray
anywhere, then beside a local Ray cluster (started in a child process) holding 0, 4, 8, ... idle actors.
No Ray runs first and last (the baseline is their mean). It reports tokens/s relative to no Ray, the cores this process got, the cores everything else took, and
the context switches per second of one idle actor.

  python bench/ray_idle_floor.py [--actors 0,4,8,12,16] [--steps 7] [--warmup 1]
Prints JSON and writes bench/results/ray_idle_floor.json and .png.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from results_file import save_results  # noqa: E402
RESULTS = REPO / "bench" / "results"


def background_cluster(actors: int) -> None:
    """Child-process mode: a local Ray cluster with ``actors`` idle actors, until stdin closes."""
    import ray

    ray.init(num_cpus=max(4, actors), log_to_driver=False)

    @ray.remote(num_cpus=0.01)
    class IdleActor:
        def pid(self) -> int:
            return os.getpid()

    handles = [IdleActor.remote() for _ in range(actors)]
    print("\n" + json.dumps({"pids": ray.get([h.pid.remote() for h in handles])}), flush=True)
    sys.stdin.read()
    ray.shutdown()


def context_switches(pid: int) -> int:
    total = 0
    for status in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            for line in Path(status).read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def measure(step, rows, warmup: int) -> dict:
    """Time the bare loop's steps after ``warmup``, with the CPU split of that window."""
    from cpu_sampler import cpu_split, snapshot

    for row in rows[:warmup]:
        step(row)
    tokens = sum(r.num_tokens for r in rows[warmup:])
    before = snapshot()
    t0 = time.perf_counter()
    for row in rows[warmup:]:
        step(row)
    seconds = time.perf_counter() - t0
    split = cpu_split([before, snapshot()], os.getpid())
    return {"tokens_per_s": round(tokens / seconds, 1), "seconds": round(seconds, 2),
            "this_process_cores": split["process_cores"], "other_cores": split["other_cores"],
            "ray_processes_beside": split["ray_worker_processes_beside"],
            "ray_processes_by_name": split["ray_worker_processes_by_name"],
            "busiest_others": split["busiest_others"]}


def beside_cluster(actors: int, step, rows, warmup: int) -> dict:
    child = subprocess.Popen([sys.executable, __file__, "--background", str(actors)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    try:
        pids = None
        for line in child.stdout:  # Ray may print its own lines first
            if line.startswith('{"pids"'):
                pids = json.loads(line)["pids"]
                break
        if pids is None:
            raise RuntimeError(f"the background Ray cluster with {actors} idle actors did not start "
                               f"(exit code {child.poll()}; its log is above)")
        time.sleep(5)  # let the cluster's start-up work finish
        wakeups = None
        if pids:  # one idle actor's context switches over 5 s, before the loop runs
            before, t0 = context_switches(pids[0]), time.time()
            time.sleep(5)
            wakeups = round((context_switches(pids[0]) - before) / (time.time() - t0))
        return {**measure(step, rows, warmup), "idle_actor_context_switches_per_s": wakeups}
    finally:
        child.stdin.close()
        child.wait(timeout=120)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = result["beside_ray_cluster"]
    xs = [p["idle_actors"] for p in points]
    base = result["no_ray"]["tokens_per_s"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, [p["tokens_per_s"] / base for p in points], "o-", color="#2a6", label="tokens/s vs no Ray")
    ax.plot(xs, [p["this_process_cores"] / result["no_ray"]["this_process_cores"] for p in points], "s--",
            color="#48c", label="cores the loop got vs no Ray")
    ax.axhline(0.9, color="#c44", lw=0.8, ls=":", label="0.90")
    ax.set_xlabel("idle Ray actors beside the loop (plus GCS, raylet, dashboard)")
    ax.set_ylim(0.6, 1.05)
    ax.legend(loc="lower left")
    ax.set_title(f"bare SmolLM2-135M training loop, {result['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--actors", default="0,4,8,12,16", help="idle actor counts to run beside the loop")
    parser.add_argument("--steps", type=int, default=7, help="bare-loop steps per point (the first --warmup untimed)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=96, help="hh-rlhf pairs packed into the job's rows")
    parser.add_argument("--pack-tokens", type=int, default=2048, help="row token budget (train_throughput's default)")
    parser.add_argument("--model", default=None, help="model (default SmolLM2-135M-Instruct; the smoke uses a tiny one)")
    parser.add_argument("--results-dir", default=str(RESULTS))
    parser.add_argument("--background", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.background is not None:
        return background_cluster(args.background)

    import torch

    import train_throughput as tt

    if args.model:
        tt.MODEL = args.model
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        data.write_text("\n".join(tt.HH_TRAIN.read_text().splitlines()[: args.pairs * 2]))
        rows, _ = tt.job_rows(data, args.pack_tokens, 384)
    rows = rows[: args.steps]
    if len(rows) <= args.warmup:
        parser.error(f"{args.pairs} pairs pack into {len(rows)} row(s) of {args.pack_tokens} tokens: no timed step "
                     f"after --warmup {args.warmup}; raise --pairs or lower --pack-tokens")
    step = tt.ray_rm_step_fn(True)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}",
              "config": vars(args), "no_ray_first": measure(step, rows, args.warmup), "beside_ray_cluster": []}
    for n in [int(x) for x in args.actors.split(",")]:
        point = {"idle_actors": n, **beside_cluster(n, step, rows, args.warmup)}
        result["beside_ray_cluster"].append(point)
        print(json.dumps(point), flush=True)
    # No Ray again at the end: the baseline is the mean of both, so a drift of the machine's speed during the
    # run shows as a difference between them instead of as a cost of Ray
    result["no_ray_last"] = measure(step, rows, args.warmup)
    first, last = result["no_ray_first"], result["no_ray_last"]
    result["no_ray"] = {k: round((first[k] + last[k]) / 2, 3) for k in ("tokens_per_s", "this_process_cores")}
    for point in result["beside_ray_cluster"]:
        point["vs_no_ray"] = round(point["tokens_per_s"] / result["no_ray"]["tokens_per_s"], 3)
    save_results(result, args.results_dir, "ray_idle_floor", plot)


if __name__ == "__main__":
    main()
