"""Reward-serving throughput: ray_rm (Ray Serve, cross-request token batching) vs a per-request server.

Both servers get the same model (SmolLM2-135M-Instruct + a random value head, exported once as an HF
checkpoint), the same rollouts (HH-RLHF harmless test prompts, two responses each, as full texts), the
same number of torch threads, and the same OpenRLHF-style traffic: one ``{"query": [text]}`` POST
per rollout to ``/get_reward``, from 1, 8 and 64 concurrent clients. The baseline is written the way
OpenRLHF's ``serve_rm`` works: FastAPI, each request tokenized with padding and scored alone by
``AutoModelForSequenceClassification`` inside the request handler. Both servers stay up and, at each
concurrency, rounds of requests alternate between them (one idles while the other is measured), so load
from other processes on a shared machine hits both alike; the CPU that Ray's idle processes use during
baseline rounds is reported. Output: JSON on stdout and in bench/results/serve_throughput.json, a plot
in bench/results/serve_throughput.png.

    python bench/serve_throughput.py     # defaults: 3-4 min on an idle 2-core machine, longer on a busy one
    python bench/serve_throughput.py --requests 16,32,128 --threads 2 --replicas 2
"""
# (no `from __future__ import annotations`: FastAPI must see the real Request class in the baseline handler)

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from random_head_rm import random_head_rm  # bench/ is the script's own directory
from results_file import save_results

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hh-rlhf-harmless" / "test.jsonl"
RESULTS = REPO / "bench" / "results"


# ---------------------------------------------------------------------------------------- inputs
def load_rollouts(n: int) -> list[str]:
    """n full texts: each prompt's two responses back to back, as a PPO actor with 2 samples per prompt sends."""
    from ray_rm.data.formats import normalize_row

    texts = []
    with open(DATA) as f:
        for i, line in enumerate(f):
            ex = normalize_row(json.loads(line), "hh-test", i)
            texts.extend(ex.prompt + r for r in ex.responses)
            if len(texts) >= n:
                break
    return texts[:n]


# ---------------------------------------------------------------------------------------- baseline
def baseline_server(model: str, port: int, threads: int, max_len: int = 2048) -> None:
    """OpenRLHF serve_rm style: the model runs inside the async handler, one request at a time, padded."""
    import torch
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model)
    rm = AutoModelForSequenceClassification.from_pretrained(model).eval()
    app = FastAPI()

    def get_reward(queries: list[str]) -> list[float]:
        # OpenRLHF's handler shape (strip pad/eos, pad the batch, one forward per request). Its EOS append is
        # left out: a ray_rm checkpoint's reward is read at the text's own last token (plain tokenizer(text)),
        # so both servers compute the same reward and only the serving method differs
        queries = [_strip(q, tok.pad_token, tok.eos_token) for q in queries]
        batch = tok(queries, return_tensors="pt", max_length=max_len, padding=True, truncation=True)
        with torch.no_grad():
            return rm(**batch).logits[:, 0].tolist()

    @app.post("/get_reward")
    async def reward(request: Request):
        data = await request.json()
        rewards = get_reward(data.get("query"))
        return JSONResponse({"rewards": rewards, "scores": rewards})

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def sample_pairs(texts: list[str], n: int) -> list[str]:
    """n texts as n/2 prompt pairs spread evenly over the pool, so every level sees the same length mix."""
    pairs = len(texts) // 2
    want = max(1, n // 2)
    idx = [min(pairs - 1, (k * pairs) // want) for k in range(want)]
    return [t for i in idx for t in texts[2 * i:2 * i + 2]][:n]


def _strip(text: str, pad: str | None, eos: str) -> str:
    """OpenRLHF's strip_sequence: drop leading pads and trailing pad/EOS tokens (as text)."""
    while pad and text.startswith(pad):
        text = text[len(pad):]
    while (pad and text.endswith(pad)) or text.endswith(eos):
        text = text[:-len(pad if pad and text.endswith(pad) else eos)]
    return text


# ---------------------------------------------------------------------------------------- load
async def drive(url: str, texts: list[str], concurrency: int) -> dict:
    """Send one request per text from ``concurrency`` clients; latency per request, throughput overall."""
    import httpx

    queue = list(enumerate(texts))
    latencies, rewards = [], [None] * len(texts)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def worker():
            while queue:
                i, text = queue.pop(0)
                t0 = time.perf_counter()
                r = await client.post(f"{url}/get_reward", json={"query": [text], "prompts": [""], "labels": [""]})
                latencies.append(time.perf_counter() - t0)
                r.raise_for_status()
                rewards[i] = r.json()["rewards"][0]

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    lat = sorted(latencies)
    return {"concurrency": concurrency, "requests": len(texts), "wall_s": round(wall, 3),
            "requests_per_s": round(len(texts) / wall, 3), "p50_s": round(percentile(lat, 0.5), 3),
            "p99_s": round(percentile(lat, 0.99), 3), "_rewards": rewards, "_latencies": latencies}


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class PeakRSS:
    """Samples the resident memory of the server processes (baseline pid, or Serve replicas by title)."""

    def __init__(self, pid: int | None = None, title: str | None = None):
        self.pid, self.title, self.peak, self._stop = pid, title, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _procs(self):
        import psutil

        if self.pid:
            return [psutil.Process(self.pid)]
        return [p for p in psutil.process_iter(["cmdline"]) if self.title in " ".join(p.info["cmdline"] or [])]

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, sum(p.memory_info().rss for p in self._procs()))
            except Exception:  # noqa: BLE001 - a process may vanish between listing and reading
                pass
            self._stop.wait(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Servers:
    """Both servers up at once, so rounds can alternate between them (see ``measure``)."""

    def __init__(self, model: str, threads: int, batch_tokens: int, pack_tokens: int, replicas: int = 1):
        import ray

        from ray_rm.serve.app import deploy, url_of
        from ray_rm.serve.client import wait_until_healthy
        from ray_rm.serve.config import ServeConfig

        port = free_port()
        self.proc = subprocess.Popen([sys.executable, __file__, "--baseline-server", "--model", model, "--port",
                                      str(port), "--threads", str(threads)],
                                     env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        self.urls = {"baseline": f"http://127.0.0.1:{port}"}
        ray.init(num_cpus=max(4, threads + 2), include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
        per_replica = max(1, threads // replicas)  # the same cores in total as the baseline
        self.cfg = ServeConfig(model_path=model, port=free_port(), num_replicas=replicas, num_cpus=per_replica,
                               torch_threads=per_replica, batch_tokens=batch_tokens, pack_tokens=pack_tokens)
        deploy(self.cfg)
        self.urls["ray_rm"] = url_of(self.cfg)
        wait_until_healthy(self.urls["baseline"])

    def close(self) -> None:
        import ray
        from ray import serve

        self.proc.terminate()
        self.proc.wait(timeout=60)
        serve.shutdown()
        ray.shutdown()


def ray_cpu_seconds() -> float:
    """CPU time used so far by this machine's Ray processes (raylet, GCS, Serve controller/proxy/replicas)."""
    import psutil

    total = 0.0
    for p in psutil.process_iter(["cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        if "ray::" in line or ("/ray/" in line and "serve_throughput" not in line):
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
    return total


def batching_counts(url: str) -> dict:
    """ray_rm's ``GET /v1/stats`` (one replica: the bench's default), first ensemble member."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/v1/stats", timeout=30) as resp:
        return json.loads(resp.read())["members"][0]


def measure(servers: Servers, texts: list[str], levels) -> tuple[dict, dict]:
    """Per level, alternate rounds (baseline, ray_rm, baseline, ...) so load from other processes on the
    machine hits both sides alike; a round is ``concurrency`` requests (4 at concurrency 1)."""
    for url in servers.urls.values():
        asyncio.run(drive(url, texts[:4], 2))  # warm-up: first forwards, connections, allocator
    results = {name: [] for name in servers.urls}
    ray_idle_cpu = 0.0
    for concurrency, n in levels:
        size = max(concurrency, 4)
        acc = {name: {"wall": 0.0, "lat": [], "rewards": []} for name in servers.urls}
        level_texts = sample_pairs(texts, n)
        counts_before = batching_counts(servers.urls["ray_rm"])
        for start in range(0, n, size):
            chunk = level_texts[start:min(n, start + size)]
            for name, url in servers.urls.items():
                before = ray_cpu_seconds() if name == "baseline" else 0.0
                res = asyncio.run(drive(url, chunk, concurrency))
                if name == "baseline":
                    ray_idle_cpu += ray_cpu_seconds() - before
                acc[name]["wall"] += res["wall_s"]
                acc[name]["lat"] += res["_latencies"]
                acc[name]["rewards"] += res["_rewards"]
        counts = {k: v - counts_before[k] for k, v in batching_counts(servers.urls["ray_rm"]).items()
                  if k in counts_before and isinstance(v, int)}
        for name, a in acc.items():
            lat = sorted(a["lat"])
            row = {"concurrency": concurrency, "requests": n, "wall_s": round(a["wall"], 3),
                   "requests_per_s": round(n / a["wall"], 3), "p50_s": round(percentile(lat, 0.5), 3),
                   "p99_s": round(percentile(lat, 0.99), 3), "_rewards": a["rewards"]}
            if name == "ray_rm" and servers.cfg.num_replicas == 1:  # /v1/stats answers for one replica
                row["forwards"] = counts["batches"]
                row["requests_per_forward"] = round(counts["requests"] / max(1, counts["batches"]), 2)
            results[name].append(row)
            print(f"  {name:8s} c={concurrency:3d} n={n:4d}: {row['requests_per_s']:7.2f} req/s  "
                  f"p50 {row['p50_s']:.3f}s p99 {row['p99_s']:.3f}s", file=sys.stderr, flush=True)
    return results, {"ray_cpu_s_during_baseline_rounds": round(ray_idle_cpu, 2)}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, style in (("ray_rm", "o-"), ("baseline", "s--")):
        rows = report[name]["levels"]
        c = [r["concurrency"] for r in rows]
        ax1.plot(c, [r["requests_per_s"] for r in rows], style, label=name)
        for r in rows:
            if "requests_per_forward" in r:  # what cross-request batching merged at this level
                ax1.annotate(f"{r['requests_per_forward']} req/fwd", (r["concurrency"], r["requests_per_s"]),
                             textcoords="offset points", xytext=(4, 6), fontsize=7)
        ax2.plot(c, [r["p50_s"] for r in rows], style, label=f"{name} p50")
        ax2.plot(c, [r["p99_s"] for r in rows], style, alpha=0.5, label=f"{name} p99")
    for ax, label in ((ax1, "requests / s"), (ax2, "latency (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ratio = report["speedup_at_max_concurrency"]
    fig.suptitle(f"{report['model']}, {report['threads']} threads: ray_rm {ratio}x the per-request "
                 f"baseline at concurrency {report['levels'][-1][0]}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results-dir", default=str(RESULTS), help="where the JSON and PNG go")
    p.add_argument("--concurrency", default="1,8,64", help="client counts")
    p.add_argument("--requests", default="8,32,128", help="requests sent at each concurrency (prompt pairs "
                                                            "spread evenly over the rollout pool)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of each server")
    p.add_argument("--batch-tokens", type=int, default=8192, help="ray_rm serve.batch_tokens (config default)")
    p.add_argument("--replicas", type=int, default=1, help="ray_rm replicas sharing --threads cores")
    p.add_argument("--pack-tokens", type=int, default=4096, help="ray_rm serve.pack_tokens")
    p.add_argument("--reward-model", default="", help="an exported reward-model checkpoint to serve (default: "
                                                       "SmolLM2-135M with a random head; the smoke test uses a tiny one)")
    p.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.baseline_server:
        baseline_server(args.model, args.port, args.threads)
        return {}
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    levels = list(zip(map(int, args.concurrency.split(",")), map(int, args.requests.split(","))))
    model = args.reward_model or random_head_rm(max_length=2048)
    texts = load_rollouts(max(n for _, n in levels))
    started = time.time()
    load_before = os.getloadavg()
    servers = Servers(model, args.threads, args.batch_tokens, args.pack_tokens, args.replicas)
    try:
        with PeakRSS(pid=servers.proc.pid) as base_mem, PeakRSS(title="ServeReplica:ray_rm") as ours_mem:
            results, overhead = measure(servers, texts, levels)
    finally:
        with contextlib.redirect_stdout(sys.stderr):  # keep Ray's shutdown chatter out of the JSON on stdout
            servers.close()
            time.sleep(1.0)
    base, ours = results["baseline"], results["ray_rm"]
    diffs = [abs(a - b) for x, y in zip(base, ours) for a, b in zip(x["_rewards"], y["_rewards"])]
    for rows in (base, ours):
        for r in rows:
            r.pop("_rewards")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    lengths = [len(ids) for ids in tok(texts)["input_ids"]]
    report = {
        "model": "SmolLM2-135M-Instruct RM (random head)", "threads": args.threads, "levels": levels,
        "rollouts": {"source": "hh-rlhf-harmless test, 2 responses per prompt", "count": len(texts),
                     "mean_tokens": round(sum(lengths) / len(lengths), 1), "max_tokens": max(lengths)},
        "method": "both servers up; per level, rounds of `concurrency` requests alternate baseline / ray_rm",
        "ray_rm": {"levels": ours, "peak_rss_mb": round(ours_mem.peak / 2**20),
                   "replicas": args.replicas, "threads_per_replica": max(1, args.threads // args.replicas),
                   "batch_tokens": args.batch_tokens, "pack_tokens": args.pack_tokens},
        "baseline": {"levels": base, "peak_rss_mb": round(base_mem.peak / 2**20)},
        "speedup_at_max_concurrency": round(ours[-1]["requests_per_s"] / base[-1]["requests_per_s"], 2),
        "speedup_per_level": [round(o["requests_per_s"] / b["requests_per_s"], 2) for o, b in zip(ours, base)],
        "max_abs_reward_diff_vs_baseline": max(diffs),
        "machine": {"cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()], **overhead},
        "total_s": round(time.time() - started, 1),
    }
    save_results(report, args.results_dir, "serve_throughput", plot)
    if report["max_abs_reward_diff_vs_baseline"] > 1e-3:  # a speed ratio of servers computing different things
        raise SystemExit(f"the two servers' rewards differ by up to {report['max_abs_reward_diff_vs_baseline']:.3g}:"
                         " the throughput comparison is not valid (see the JSON)")
    return report


if __name__ == "__main__":
    main()
