"""The GPU path: kernels, training over NCCL, export, serving and relabeling on CUDA.

Marked ``gpu``: skipped where CUDA is absent (CI included); ``pytest -m gpu`` runs them on a GPU machine,
and ``bench/gpu_check.sh`` runs them first. References are independent: fp32 SDPA for the bf16
kernels, the unshared layout for prompt sharing, the CPU fp32 path for CUDA scoring, the trained run's
own eval metrics for the exported checkpoint.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import HH_TEST
from ray_rm.config_schema import LoraConfig, ModelConfig
from ray_rm.data.packer import pack_groups
from ray_rm.model.batch import AttentionBlock
from ray_rm.model.attention import AttentionPlan, block_attention
from ray_rm.model.attention import REGISTRY
from ray_rm.model.attention import LayerOptions
from ray_rm.model.batch import collate_row
from ray_rm.model.build import build_reward_model
from test_model import packed_rewards, random_groups
from train_helpers import tiny_config

pytestmark = pytest.mark.gpu
BF16_REL = 1e-2  # ||bf16 - fp32|| / ||fp32|| for bf16 operands (2^-8 rounding, accumulated in fp32)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all()
    return float((a - b).norm() / b.norm())


def _blocks():
    """Plain causal sequences and prompt-shared groups ([prompt | chosen | rejected]) of uneven lengths."""
    blocks, pos = [], 0
    for plain in (37, 301, 5, 129):
        blocks.append(AttentionBlock(pos, plain))
        pos += plain
    for prompt, suffixes in ((200, (64, 90)), (17, (250, 3, 40))):
        start = pos
        blocks.append(AttentionBlock(pos, prompt))
        pos += prompt
        for n in suffixes:
            blocks.append(AttentionBlock(pos, n, start, prompt))
            pos += n
    return blocks, pos


@pytest.mark.parametrize("backend", ["torch_varlen", "flash_attn"])
@pytest.mark.parametrize("window", [None, 48])
def test_bf16_varlen_kernel_matches_fp32_sdpa_reference(backend, window):
    needs = {"window"} if window else set()
    reason = REGISTRY[backend].refusal("cuda", torch.bfloat16, needs)
    if reason:
        pytest.skip(f"{backend}: {reason}")
    torch.manual_seed(0)
    blocks, total = _blocks()
    heads, kv_heads, dim = 8, 2, 64
    q = torch.randn(1, heads, total, dim, device="cuda", requires_grad=True)
    k = torch.randn(1, kv_heads, total, dim, device="cuda", requires_grad=True)
    v = torch.randn(1, kv_heads, total, dim, device="cuda", requires_grad=True)
    grad = torch.randn(1, heads, total, dim, device="cuda")
    opts = LayerOptions(window=window)
    ref_plan = AttentionPlan.build(blocks, total, "cuda", backend="sdpa_blocks").for_layer(opts)
    ref = block_attention(ref_plan, q, k, v, dim ** -0.5)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
    qb, kb, vb = (t.detach().bfloat16().requires_grad_() for t in (q, k, v))
    plan = AttentionPlan.build(blocks, total, "cuda", backend=backend).for_layer(opts)
    assert plan.backend_for(torch.bfloat16) == backend  # the kernel itself ran, not the fallback
    out = block_attention(plan, qb, kb, vb, dim ** -0.5)
    grads = torch.autograd.grad(out, (qb, kb, vb), grad.bfloat16())
    assert rel_err(out, ref) < BF16_REL
    for g, r in zip(grads, ref_grads):
        assert rel_err(g, r) < 2 * BF16_REL


def rewards_by_sequence(model, rows, device) -> dict:
    got = {}
    for row in rows:
        rewards = model(collate_row(row).to(device)).rewards.tolist()
        ids = [(gid, j) for gid, size in zip(row.group_ids, row.group_sizes) for j in range(size)]
        got.update(zip(ids, rewards))
    return got


def test_prompt_shared_equals_unshared_and_cpu_fp32_on_gpu(tiny_decoder_dir):
    model = build_reward_model(ModelConfig(name_or_path=tiny_decoder_dir), device="cuda", seed=1).eval()
    assert model.attn_backend == "torch_varlen" and next(model.backbone.parameters()).dtype == torch.bfloat16
    cpu = build_reward_model(ModelConfig(name_or_path=tiny_decoder_dir), seed=1).eval()
    groups = random_groups(12, seed=21)
    with torch.no_grad():
        shared = rewards_by_sequence(model, pack_groups(groups, 1024, True, 64), "cuda")
        unshared = rewards_by_sequence(model, pack_groups(groups, 1024, False, 64), "cuda")
        ref = packed_rewards(cpu, list(pack_groups(groups, 1024, False, 64)))
    keys = sorted(ref)
    as_t = lambda d: torch.tensor([d[k] for k in keys])  # noqa: E731
    assert rel_err(as_t(shared), as_t(unshared)) < BF16_REL
    assert rel_err(as_t(shared), as_t(ref)) < 2 * BF16_REL


def _clean_eval_file(path: Path, n: int = 32) -> Path:
    """HH test pairs that no filter drops (short, distinct responses): training eval and scorer see the same set."""
    rows = []
    for line in HH_TEST.read_text().splitlines():
        row = json.loads(line)
        if len(row["chosen"]) < 900 and len(row["rejected"]) < 900 and row["chosen"] != row["rejected"]:
            rows.append(line)
        if len(rows) == n:
            break
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.slow
def test_deepspeed_nccl_train_checkpoint_export_and_exported_rewards_equal_training(ray_local, tiny_decoder_dir,
                                                                                    tmp_path):
    from ray_rm.data.formats import normalize_row
    from ray_rm.scoring.examples import score_examples
    from ray_rm.scoring import RewardScorer
    from ray_rm.train.driver import run_training

    eval_file = _clean_eval_file(tmp_path / "eval.jsonl")
    out = tmp_path / "run"
    summary = run_training(tiny_config(tiny_decoder_dir, out, **{
        "train.use_gpu": True, "train.num_workers": 1, "train.max_steps": 4, "train.checkpoint_every": 2,
        "train.eval_every": 2, "data.eval_files": str(eval_file), "data.limit": 64, "train.zero_stage": 2}))
    assert summary["steps"] == 4 and summary["skipped_micro_batches"] == 0
    assert list((out / "ray_storage").glob("*/step_0000002"))  # a mid-run checkpoint was written (params_finite)
    meta = json.loads((out / "hf" / "config.json").read_text())["ray_rm"]
    final = summary["final_metrics"]
    scorer = RewardScorer(str(out / "hf"), device="cuda", dtype="bfloat16")
    examples = [normalize_row(json.loads(line), "eval", i) for i, line in enumerate(eval_file.read_text().splitlines())]
    scored = score_examples(scorer, examples)
    assert all(hasattr(s, "scores") for s in scored)  # nothing dropped: the same pairs as the training eval
    chosen = [s.scores[0] for s in scored]
    rejected = [s.scores[1] for s in scored]
    everything = chosen + rejected
    mean = sum(everything) / len(everything)
    std = math.sqrt(sum((r - mean) ** 2 for r in everything) / len(everything))
    assert abs(sum(chosen) / len(chosen) - final["eval/rm/chosen_rewards"]) < 2e-2
    assert abs(sum(rejected) / len(rejected) - final["eval/rm/rejected_rewards"]) < 2e-2
    assert abs(mean - meta["reward_mean"]) < 2e-2 and abs(std - meta["reward_std"]) < 2e-2


@pytest.mark.slow
def test_fp16_trains_with_loss_scaling_over_nccl(ray_local, tiny_decoder_dir, tmp_path):
    from ray_rm.train.driver import run_training

    summary = run_training(tiny_config(tiny_decoder_dir, tmp_path / "fp16", **{
        "train.use_gpu": True, "train.num_workers": 1, "train.max_steps": 3, "model.dtype": "float16",
        "data.limit": 32}))
    assert summary["steps"] == 3 and math.isfinite(summary["final_metrics"]["train/rm/loss"])
    assert (tmp_path / "fp16" / "hf" / "model.safetensors").is_file()


def _serve_rewards(model_path: str, device: str, requests: list) -> list:
    import asyncio

    from ray_rm.serve.config import ServeConfig
    from ray_rm.serve.scoring_engine import ScoringEngine
    from ray_rm.serve.inputs import parse_score_request

    engine = ScoringEngine(ServeConfig(model_path=model_path, device=device, num_gpus=1 if device == "cuda" else 0))

    async def main():
        return await asyncio.gather(*(engine.score(parse_score_request(r, 64)) for r in requests))

    try:
        return [x for out in asyncio.run(main()) for x in out["rewards"]]
    finally:
        engine.close()


def test_serve_engine_and_relabel_scorer_on_cuda_equal_cpu(exported_tiny_rm):
    from ray_rm.data.formats import normalize_row
    from ray_rm.scoring.examples import score_examples
    from ray_rm.scoring.scorer import make_scorer

    lines = HH_TEST.read_text().splitlines()[:24]
    requests = [{"inputs": [{"text": json.loads(line)["chosen"]}, {"text": json.loads(line)["rejected"]}]}
                for line in lines]
    on_gpu = torch.tensor(_serve_rewards(exported_tiny_rm, "cuda", requests))
    on_cpu = torch.tensor(_serve_rewards(exported_tiny_rm, "cpu", requests))
    assert on_gpu.numel() == 48 and rel_err(on_gpu, on_cpu) < 2 * BF16_REL
    examples = [normalize_row(json.loads(line), "hh", i) for i, line in enumerate(lines)]
    relabel = {}
    for gpus in (1, 0):
        scorer = make_scorer(exported_tiny_rm, gpus=gpus, cpus=1, pack_tokens=4096, dtype="auto",
                             attn_implementation="auto")
        assert scorer.device.type == ("cuda" if gpus else "cpu")
        relabel[gpus] = torch.tensor([r for s in score_examples(scorer, examples) for r in s.scores])
    assert rel_err(relabel[1], relabel[0]) < 2 * BF16_REL


def test_qlora_step_on_gpu(tiny_decoder_dir):
    pytest.importorskip("bitsandbytes")
    from ray_rm.losses import LossSettings, compute_loss

    model = build_reward_model(ModelConfig(name_or_path=tiny_decoder_dir, dtype="bfloat16"),
                               LoraConfig(r=4, quantize_4bit=True), device="cuda", seed=1)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    batch = collate_row(next(iter(pack_groups(random_groups(6, seed=3), 1024, True, 64)))).to("cuda")
    losses = []
    for _ in range(2):
        res = compute_loss(model(batch), batch, LossSettings("bt"))
        loss = res.terms["bt"][0] / res.counts["pairs"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    assert all(math.isfinite(x) for x in losses) and losses[1] < losses[0]
    assert model.head.weight.dtype == torch.float32
