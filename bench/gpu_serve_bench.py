"""Serving part of bench/gpu_bench.py: ray_rm's engine (cross-request token batching) against scoring one
request at a time, on the same rollouts, at several numbers of concurrent callers.

Each request carries one rollout as token ids (the full prompt + response sequence; the two responses
of an HH pair are two requests, as a PPO actor with two samples per prompt sends them). ``ray_rm`` is
``serve.scoring_engine.ScoringEngine`` (the replica's engine without HTTP); ``per_request`` runs each request
alone through ``AutoModelForSequenceClassification`` under one lock, the way a per-request server
(OpenRLHF's serve_rm) handles concurrent calls. Both load the same exported checkpoint in the same dtype.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def export_rm(model_dir: str, tokenizer: str, device, dtype, root: Path, max_len: int) -> str:
    from ray_rm.config_schema import ModelConfig
    from ray_rm.model.build import build_reward_model
    from ray_rm.model.export import export_hf

    model = build_reward_model(ModelConfig(name_or_path=model_dir, dtype=str(dtype).removeprefix("torch.")),
                               device=device, seed=0)
    out = root / "rm"
    export_hf(model, tokenizer, out, {"append_eos": True, "chat_template": "auto", "max_length": max_len,
                                      "reward_mean": 0.0, "reward_std": 1.0})
    del model
    return str(out)


async def drive(score, requests: list, concurrency: int, budget_s: float) -> dict:
    """Send ``requests`` from ``concurrency`` callers (each sends its next request when answered)."""
    queue = list(enumerate(requests))
    latencies, results = [], {}
    started = time.perf_counter()

    async def caller():
        while queue and time.perf_counter() - started < budget_s:
            i, ids = queue.pop(0)
            t0 = time.perf_counter()
            results[i] = await score(ids)
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    latencies.sort()
    return {"requests": len(latencies), "seconds": round(wall, 3), "requests_per_s": round(len(latencies) / wall, 1),
            "latency_p50_ms": round(1e3 * latencies[len(latencies) // 2], 2),
            "latency_p99_ms": round(1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2),
            "rewards": results}


class PerRequest:
    """Each request scored alone by the plain HF classifier, one at a time (a model in one request handler)."""

    def __init__(self, path: str, device, dtype):
        import torch
        from transformers import AutoModelForSequenceClassification

        self.torch, self.device = torch, device
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype,
                                                                        attn_implementation="sdpa").to(device).eval()
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.lock = asyncio.Lock()

    def _one(self, ids: list) -> float:
        with self.torch.no_grad():
            return float(self.model(input_ids=self.torch.tensor([ids], device=self.device)).logits[0, 0])

    async def score(self, ids: list) -> float:
        async with self.lock:
            return await asyncio.get_running_loop().run_in_executor(self.pool, self._one, ids)


class Engine:
    def __init__(self, path: str, device, args):
        from ray_rm.serve.config import ServeConfig
        from ray_rm.serve.scoring_engine import ScoringEngine

        self.engine = ScoringEngine(ServeConfig(model_path=path, device=device.type,
                                               num_gpus=1 if device.type == "cuda" else 0,
                                               batch_tokens=4 * args.pack_tokens, pack_tokens=args.pack_tokens,
                                               batch_wait_ms=2.0))

    async def score(self, ids: list) -> float:
        from ray_rm.serve.inputs import parse_score_request

        out = await self.engine.score(parse_score_request({"inputs": [{"input_ids": ids}]}, 8))
        return out["rewards"][0]


def run_serving(model_dir: str, tokenizer: str, groups: list, args, device, dtype, root: Path) -> dict:
    path = export_rm(model_dir, tokenizer, device, dtype, root, args.max_len)
    rollouts = [s for g in groups for s in g.sequences[:2]][:args.serve_requests]
    methods = {"ray_rm": Engine(path, device, args), "per_request": PerRequest(path, device, dtype)}
    levels = [int(c) for c in args.concurrency.split(",")]
    out: dict = {"rollouts": len(rollouts), "mean_tokens": round(sum(map(len, rollouts)) / len(rollouts), 1),
                 "levels": {}}

    async def main():
        for method in methods.values():  # warm-up: kernels, allocator, batcher thread
            await drive(method.score, rollouts[:8], 4, 60)
        first = {}
        for c in levels:
            level = {}
            for name, method in methods.items():
                res = await drive(method.score, rollouts, c, args.serve_budget_s)
                first[name] = res.pop("rewards")
                level[name] = res
            level["speedup"] = round(level["ray_rm"]["requests_per_s"] / level["per_request"]["requests_per_s"], 2)
            out["levels"][str(c)] = level
            print(f"[gpu_bench] serve c={c}: {level}", flush=True)
        common = sorted(set(first["ray_rm"]) & set(first["per_request"]))
        out["max_abs_reward_diff"] = round(max(abs(first["ray_rm"][i] - first["per_request"][i]) for i in common), 5)
        out["reward_scale"] = round(max(abs(first["per_request"][i]) for i in common), 5)

    try:
        asyncio.run(main())
    finally:
        methods["ray_rm"].engine.close()
    return out
