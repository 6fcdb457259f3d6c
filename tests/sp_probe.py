"""One forward/backward of a fixed packed row on S gloo processes (torch.multiprocessing, no Ray).

Used by tests/test_sequence_parallel_heads.py and bench/sp_uneven_heads.py: each rank writes its
loss, rewards and gradients to ``out_dir/rank{r}.pt``; ``reference`` computes the same without SP.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from conftest import free_port

PROBED = ("head.weight", "backbone.layers.0.self_attn.q_proj.weight", "backbone.layers.1.self_attn.k_proj.weight")


def _forward_backward(model_dir: str, row, sp, pad_to: int) -> dict:
    from ray_rm.config_schema import ModelConfig
    from ray_rm.losses import LossSettings, compute_loss
    from ray_rm.model.batch import collate_row
    from ray_rm.model.build import build_reward_model

    model = build_reward_model(ModelConfig(name_or_path=model_dir), seed=11)
    if sp is not None:
        sp.check_model(model.config)
    batch = collate_row(row, pad_to_multiple=pad_to)
    out = model(batch, sp=sp)
    res = compute_loss(out, batch, LossSettings(name="bt"))
    loss = sum(v for v, _ in res.terms.values()) / res.counts["pairs"]
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if n in PROBED}
    return {"loss": float(loss.detach()), "rewards": out.rewards.detach().clone(), "grads": grads}


def _rank_main(rank: int, world: int, model_dir: str, row, out_dir: str, port: int) -> None:
    import torch.distributed as dist

    from ray_rm.model.sequence_parallel import SequenceParallelContext

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        sp = SequenceParallelContext.create_groups(world, world, rank)
        torch.save(_forward_backward(model_dir, row, sp, world), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_sp(model_dir: str, row, world: int, out_dir: Path) -> list[dict]:
    """Per-rank results of one SP forward/backward over ``world`` processes."""
    import torch.multiprocessing as mp

    out_dir.mkdir(parents=True, exist_ok=True)
    mp.spawn(_rank_main, args=(world, model_dir, row, str(out_dir), free_port()), nprocs=world, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(world)]


def reference(model_dir: str, row) -> dict:
    """The same step without sequence parallelism, in this process."""
    return _forward_backward(model_dir, row, None, 1)
