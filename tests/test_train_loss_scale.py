"""Loss scaling (ray_rm/train/loss_scale.py) with a real DeepSpeed engine on one gloo process: gradient
accumulation over rows A and B (train.micro_steps_per_update=2) gives the same gradients and weights as one
step over a row holding A and B; the first test of gradient accumulation."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp

from ray_rm.data.packer import pack_groups
from test_model import random_groups


def _one_step(model_dir: str, rows: list, micro_steps: int) -> dict:
    """Gradients seen by the optimizer and weights after one optimizer step over ``rows`` (one per micro-batch)."""
    from ray_rm.config import load_config
    from ray_rm.config_schema import TrainJobConfig
    from ray_rm.losses import LossSettings
    from ray_rm.model.build import build_reward_model
    from ray_rm.train.deepspeed_setup import initialize
    from ray_rm.train.step import StepContext, train_step

    cfg = load_config(TrainJobConfig, None, [f"model.name_or_path={model_dir}", "train.zero_stage=0", "train.lr=1e-3",
                                             "train.warmup_ratio=0", "train.clip_grad=0",  # unclipped: gradients keep their scale
                                             f"train.micro_steps_per_update={micro_steps}"])
    model = build_reward_model(cfg.model, cfg.train.lora, seed=7)
    engine, _ = initialize(model, cfg.train, 10, torch.float32, 1)
    grads = {}

    def snapshot(optimizer, args, kwargs):  # the gradients the optimizer step receives
        grads.update({n: p.grad.detach().clone() for n, p in engine.module.named_parameters() if p.grad is not None})

    engine.basic_optimizer.register_step_pre_hook(snapshot)
    settings = LossSettings("internlm2", center_rewards_coefficient=0.01)  # terms over pairs and sequences
    ctx = StepContext(engine=engine, device=torch.device("cpu"), settings=settings, world_size=1, sp=None, sp_size=1,
                      pad_token_id=0, pack_tokens=4096)
    sums = train_step(ctx, rows)
    return {"grads": grads, "weights": {n: p.detach().clone() for n, p in engine.module.named_parameters()},
            "loss": sums["loss"]}


def _worker(init_file: str, model_dir: str, row_a, row_b, row_ab, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")  # what Ray Train (or torchrun) sets for DeepSpeed
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=0, world_size=1)
    accumulated = _one_step(model_dir, [row_a, row_b], micro_steps=2)
    together = _one_step(model_dir, [row_ab], micro_steps=1)
    torch.save({"accumulated": accumulated, "together": together}, out)
    dist.destroy_process_group()


def test_two_micro_steps_equal_one_step_over_both_rows(tiny_decoder_dir, tmp_path):
    groups = random_groups(9, seed=21)
    (row_a,) = pack_groups(groups[:2], 4096, True)  # 2 groups vs 7: unequal pair and sequence counts, so a
    (row_b,) = pack_groups(groups[2:], 4096, True)  # per-micro-batch mean would weigh them wrongly
    (row_ab,) = pack_groups(groups, 4096, True)
    assert row_a.num_tokens != row_b.num_tokens and len(row_ab.group_ids) == 9
    out = str(tmp_path / "result.pt")
    proc = mp.get_context("spawn").Process(target=_worker, args=(tempfile.mktemp(dir=tmp_path), tiny_decoder_dir,
                                                                 row_a, row_b, row_ab, out))
    proc.start()
    proc.join(timeout=600)
    assert proc.exitcode == 0, proc.exitcode
    res = torch.load(Path(out), weights_only=False)
    acc, one = res["accumulated"], res["together"]
    assert acc["grads"].keys() == one["grads"].keys() and "head.weight" in acc["grads"]
    assert float(torch.stack([g.norm() for g in one["grads"].values()]).norm()) > 1e-3
    assert abs(acc["loss"] - one["loss"]) <= 1e-5 * abs(one["loss"])
    for name, g in one["grads"].items():
        assert torch.allclose(acc["grads"][name], g, rtol=1e-4, atol=1e-7), name
    # AdamW's first update is lr * g / (|g| + eps): where |g| is near eps it amplifies float noise, so the weights
    # are compared where the gradient decides the update
    for name, g in one["grads"].items():
        decided = g.abs() > 1e-5
        diff = (acc["weights"][name] - one["weights"][name])[decided].abs()
        assert decided.any() and float(diff.max()) < 1e-7, name
