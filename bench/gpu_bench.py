"""GPU benchmark: the training step's tokens/s and MFU, and the serve engine's cross-request batching gain.

Model: a Qwen2-0.5B-shaped decoder RM (hidden 896, 24 layers, 14 query / 2 kv heads of 64, MLP 4864,
vocab 151936) with random weights (no network on the GPU machine, and real weights are too big to carry;
speed does not depend on the values). Data: HH-RLHF train pairs tokenized with SmolLM2's tokenizer.

Training: ray_rm's real step (``train.step.train_step``: collate, forward, loss, the per-micro-batch
all-reduce, DeepSpeed backward + step; bf16, ZeRO-2 on one GPU over NCCL), one micro-batch per step:
  packed_shared    packed rows of --pack-tokens, [prompt | chosen | rejected] (torch's varlen flash kernel)
  packed_unshared  packed rows, every sequence laid out whole
  padded           the TRL way: AutoModelForSequenceClassification (SDPA) on right-padded batches of
                   --padded-pairs pairs with an attention mask, on the same DeepSpeed config
FLOPs count useful work only (padding is not work):
  FLOPs/step = 6 * N * T + 12 * L * H * d * P
  N non-embedding parameters (attention, MLP, norms, value head); T tokens computed (a shared prompt
  once); L layers, H query heads, d head dim; P attended (query, key) pairs per layer and head:
  sum over blocks of n (n + 1) / 2 + n * prefix (causal; a shared suffix also sees its prompt).
  MFU = FLOPs/step / step time / peak, against the datasheet peak (989 TFLOP/s dense bf16 for H100/H200
  SXM) and against a bf16 8192^3 matmul measured on the same GPU.

Serving: the same rollouts (each HH response as one request of token ids, OpenRLHF-style one query per
request) from 1, 8 and 64 concurrent callers, scored by
  ray_rm      ``serve.scoring_engine.ScoringEngine``: its token batcher packs concurrent requests into one forward
  per_request the per-request server's method: each request alone through AutoModelForSequenceClassification,
              one at a time (OpenRLHF's serve_rm)
Both in bf16 on the GPU; the first rewards of both are compared (bf16 tolerance).

    python bench/gpu_bench.py --results-dir RESULTS            # on a GPU (bench/gpu_check.sh runs it)
    python bench/gpu_bench.py --results-dir /tmp/x --cpu-smoke # tiny model on CPU: keeps the script honest
Writes RESULTS/gpu_bench.json and RESULTS/gpu_bench.png and prints the JSON.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from results_file import save_results  # noqa: E402
DATA = Path(os.environ.get("RAY_RM_TEST_DATA") or REPO.parent / "shared" / "data") / "hh-rlhf-harmless" / "train.jsonl"
SHAPES = {
    "qwen2-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                       rope_theta=1_000_000.0, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=49152, max_position_embeddings=4096, tie_word_embeddings=True),
}
DATASHEET_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def tokenizer_dir() -> str:
    from ray_rm.assets import resolve_model_path

    return os.environ.get("RAY_RM_TEST_TOKENIZER") or resolve_model_path("smollm2-135m-instruct")


def load_groups(pairs: int, max_len: int, pack_tokens: int):
    """The first ``pairs`` HH-RLHF train pairs that fit ``max_len`` tokens, tokenized like a training run."""
    from ray_rm.config_schema import DataConfig
    from ray_rm.data.prepare import make_encoder, process_task
    from ray_rm.data.sources import plan_read_tasks

    cfg = DataConfig(max_length=max_len, pack_tokens=pack_tokens, limit=pairs * 2)
    encoder = make_encoder(tokenizer_dir(), cfg)
    groups = []
    for task in plan_read_tasks([str(DATA)], 10_000, cfg.limit):
        groups += process_task(task, encoder, cfg, share_prompt=True)[0]
    return groups[:pairs]


def make_model_dir(shape: str, device, root: Path) -> str:
    """Random-initialized weights of ``shape`` (initialized on the device: seconds instead of a minute)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2Model

    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2Model(Qwen2Config(**SHAPES[shape], bos_token_id=1, eos_token_id=2, pad_token_id=0))
    path = root / shape
    model.to(torch.bfloat16 if device.type == "cuda" else torch.float32).save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir()).save_pretrained(path)
    del model
    return str(path)


def setup_distributed(device) -> None:
    """One-rank process group (NCCL on CUDA), as Ray Train gives each worker."""
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


# ------------------------------------------------------------------------------------------ FLOPs
def attended_pairs(lengths_and_prefixes) -> int:
    return sum(n * (n + 1) // 2 + n * prefix for n, prefix in lengths_and_prefixes)


def step_flops(shape: dict, n_params: int, tokens: int, pairs: int) -> float:
    d = shape["hidden_size"] // shape["num_attention_heads"]
    return 6.0 * n_params * tokens + 12.0 * shape["num_hidden_layers"] * shape["num_attention_heads"] * d * pairs


def non_embedding_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)


def measured_matmul_peak(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * 8192 ** 3 / sorted(times)[len(times) // 2]


# ------------------------------------------------------------------------------------------ training
def timed_loop(step, items, warmup: int, budget_s: float, max_steps: int) -> list[tuple]:
    """(seconds, item) for each timed step: ``warmup`` untimed steps, then until the budget or max_steps."""
    out, i, started = [], 0, time.perf_counter()
    while True:
        item = items[i % len(items)]
        t0 = time.perf_counter()
        step(item)
        if i >= warmup:
            out.append((time.perf_counter() - t0, item))
        i += 1
        if len(out) >= max_steps or (i > warmup and time.perf_counter() - started > budget_s):
            return out


def summarize(timed: list, shape: dict, n_params: int, peaks: dict, tokens, pairs, attn, seq_tokens) -> dict:
    total = sum(t for t, _ in timed)
    items = [item for _, item in timed]
    flops = sum(step_flops(shape, n_params, tokens(x), attn(x)) for x in items)
    out = {"steps": len(timed), "seconds": round(total, 3), "pairs_per_s": round(sum(map(pairs, items)) / total, 2),
           "tokens_per_s": round(sum(map(tokens, items)) / total, 1),
           "sequence_tokens_per_s": round(sum(map(seq_tokens, items)) / total, 1),
           "tflops_per_s": round(flops / total / 1e12, 2),
           "step_s_median": round(sorted(t for t, _ in timed)[len(timed) // 2], 4)}
    for name, peak in peaks.items():
        out[f"mfu_vs_{name}"] = round(flops / total / peak, 4) if peak else None
    return out


def bench_packed(model_dir, groups, share: bool, args, device, dtype, shape, peaks) -> dict:
    import torch

    from ray_rm.config_schema import ModelConfig, TrainConfig
    from ray_rm.data.packer import pack_groups
    from ray_rm.model.batch import attention_blocks
    from ray_rm.losses import LossSettings
    from ray_rm.model.build import build_reward_model
    from ray_rm.train.deepspeed_setup import initialize
    from ray_rm.train.step import StepContext, train_step

    model = build_reward_model(ModelConfig(name_or_path=model_dir, dtype=str(dtype).removeprefix("torch.")),
                               device=device, seed=0)
    n_params = non_embedding_params(model)
    engine, _ = initialize(model, TrainConfig(zero_stage=2, warmup_ratio=0.0), 10_000, dtype, 1)
    ctx = StepContext(engine=engine, device=device, settings=LossSettings("bt"), world_size=1, sp=None, sp_size=1,
                      pad_token_id=0, pack_tokens=args.pack_tokens)
    rows = list(pack_groups(groups, args.pack_tokens, share, window=len(groups)))
    torch.cuda.reset_peak_memory_stats() if device.type == "cuda" else None
    timed = timed_loop(lambda row: train_step(ctx, [row]), rows, args.warmup, args.variant_budget_s, args.max_steps)
    out = summarize(timed, SHAPES[shape], n_params, peaks, tokens=lambda r: r.num_tokens,
                    pairs=lambda r: len(r.group_ids),
                    attn=lambda r: attended_pairs((b.length, b.prefix_len) for b in attention_blocks(r)),
                    seq_tokens=lambda r: sum(r.seq_full_lens))
    out.update(attention=model.attn_backend, rows=len(rows), non_embedding_params=n_params,
               zero_stage=engine.zero_optimization_stage(), peak_memory_gb=_peak_gb(device))
    return out


def bench_padded(model_dir, groups, args, device, dtype, shape, peaks) -> dict:
    import deepspeed
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForSequenceClassification

    from ray_rm.config_schema import TrainConfig
    from ray_rm.train.deepspeed_setup import deepspeed_config, effective_zero_stage

    clf = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=dtype,
                                                             attn_implementation="sdpa").to(device)
    clf.config.pad_token_id = 0  # never a reward token here
    n_params = non_embedding_params(clf)
    tc = TrainConfig(zero_stage=2, warmup_ratio=0.0)
    stage = effective_zero_stage(tc, 1, dtype)
    engine, *_ = deepspeed.initialize(model=clf, optimizer=torch.optim.AdamW(clf.parameters(), lr=1e-5,
                                                                             betas=(0.9, 0.95)),
                                      config=deepspeed_config(replace(tc, zero_stage=stage), dtype),
                                      dist_init_required=False)
    batches = [groups[i:i + args.padded_pairs] for i in range(0, len(groups), args.padded_pairs)]

    def step(chunk):
        seqs = [s for g in chunk for s in g.sequences[:2]]
        longest = max(len(s) for s in seqs)
        ids = torch.tensor([s + [0] * (longest - len(s)) for s in seqs], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (longest - len(s)) for s in seqs], device=device)
        r = engine(input_ids=ids, attention_mask=mask).logits[:, 0].float()
        loss = -F.logsigmoid(r[0::2] - r[1::2]).mean()
        engine.backward(loss)
        engine.step()
        float(loss)  # like train_step, wait for the step (its loss is read)

    torch.cuda.reset_peak_memory_stats() if device.type == "cuda" else None
    timed = timed_loop(step, batches, args.warmup, args.variant_budget_s, args.max_steps)
    seq_tokens = lambda c: sum(len(s) for g in c for s in g.sequences[:2])  # noqa: E731
    out = summarize(timed, SHAPES[shape], n_params, peaks, tokens=seq_tokens, pairs=len,
                    attn=lambda c: attended_pairs((len(s), 0) for g in c for s in g.sequences[:2]),
                    seq_tokens=seq_tokens)
    padded = [2 * len(c) * max(len(s) for g in c for s in g.sequences[:2]) for _, c in timed]
    out.update(attention="sdpa (padded, masked)", pairs_per_batch=args.padded_pairs,
               real_token_fraction=round(sum(seq_tokens(c) for _, c in timed) / sum(padded), 3),
               non_embedding_params=n_params, peak_memory_gb=_peak_gb(device))
    return out


def _peak_gb(device) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2) if device.type == "cuda" else None


def run_training(model_dir, groups, args, device, dtype, shape) -> dict:
    import gc

    import torch

    peaks = {"datasheet": None, "measured_matmul": measured_matmul_peak(device)}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peaks["datasheet"] = next((v for k, v in DATASHEET_BF16.items() if k in name), None)
    out = {"peak_flops": peaks, "flops_formula": "6*N*T + 12*L*H*d*P (useful work; see the module docstring)"}
    for name, fn in (("packed_shared", lambda: bench_packed(model_dir, groups, True, args, device, dtype, shape, peaks)),
                     ("packed_unshared", lambda: bench_packed(model_dir, groups, False, args, device, dtype, shape,
                                                              peaks)),
                     ("padded", lambda: bench_padded(model_dir, groups, args, device, dtype, shape, peaks))):
        t0 = time.perf_counter()
        out[name] = fn()
        out[name]["wall_s"] = round(time.perf_counter() - t0, 1)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"[gpu_bench] train {name}: {json.dumps(out[name])}", flush=True)
    out["packed_shared_vs_padded_pairs_per_s"] = round(out["packed_shared"]["pairs_per_s"] / out["padded"]["pairs_per_s"], 2)
    out["packed_unshared_vs_padded_pairs_per_s"] = round(
        out["packed_unshared"]["pairs_per_s"] / out["padded"]["pairs_per_s"], 2)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results-dir", required=True)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny model on CPU, a few steps (tests run this)")
    p.add_argument("--sections", default="train,serve")
    p.add_argument("--pairs", type=int, default=1200)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--pack-tokens", type=int, default=16384)
    p.add_argument("--padded-pairs", type=int, default=16)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--variant-budget-s", type=float, default=25.0, help="timed seconds per training variant")
    p.add_argument("--concurrency", default="1,8,64")
    p.add_argument("--serve-requests", type=int, default=512, help="requests per concurrency level (at most)")
    p.add_argument("--serve-budget-s", type=float, default=20.0, help="seconds per method and level (at most)")
    args = p.parse_args(argv)
    import torch

    if args.cpu_smoke:
        args.pairs, args.max_len, args.pack_tokens, args.padded_pairs = 12, 256, 1024, 4
        args.warmup, args.max_steps, args.concurrency, args.serve_requests = 1, 2, "1,2", 6
    device = torch.device("cpu" if args.cpu_smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    shape = "tiny" if args.cpu_smoke else "qwen2-0.5b"
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    started = time.perf_counter()
    setup_distributed(device)
    groups = load_groups(args.pairs, args.max_len, args.pack_tokens)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "shape": shape, "shape_config": SHAPES[shape], "dtype": str(dtype),
              "pairs": len(groups), "max_len": args.max_len, "pack_tokens": args.pack_tokens}
    with tempfile.TemporaryDirectory(prefix="ray_rm_gpu_bench_") as tmp:
        model_dir = make_model_dir(shape, device, Path(tmp))
        if "train" in args.sections:
            report["train"] = run_training(model_dir, groups, args, device, dtype, shape)
        if "serve" in args.sections:
            from gpu_serve_bench import run_serving

            report["serve"] = run_serving(model_dir, tokenizer_dir(), groups, args, device, dtype, Path(tmp))
    report["wall_s"] = round(time.perf_counter() - started, 1)
    save_results(report, args.results_dir, "gpu_bench", plot)
    return report


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    train = report.get("train", {})
    names = [n for n in ("packed_shared", "packed_unshared", "padded") if n in train]
    if names:
        ax = axes[0]
        ax.bar(names, [train[n]["pairs_per_s"] for n in names], color=["tab:green", "tab:blue", "tab:gray"])
        for i, n in enumerate(names):
            mfu = train[n].get("mfu_vs_datasheet")
            ax.text(i, train[n]["pairs_per_s"], f"MFU {mfu:.0%}" if mfu else "", ha="center", va="bottom")
        ax.set_ylabel("pairs / s")
        ax.set_title(f"train step, {report['shape']} RM, {report['device']}")
    serve = report.get("serve", {}).get("levels", {})
    if serve:
        ax = axes[1]
        levels = sorted(serve, key=int)
        for key, label in (("ray_rm", "ray_rm engine (cross-request batching)"), ("per_request", "one request at a time")):
            ax.plot([int(c) for c in levels], [serve[c][key]["requests_per_s"] for c in levels], marker="o",
                    label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent callers")
        ax.set_ylabel("requests / s")
        ax.set_title("serving")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
