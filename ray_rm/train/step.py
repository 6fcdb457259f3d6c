"""One optimizer step and one evaluation pass, with exact global loss normalization.

Each loss term is a sum over its unit (pairs, sequences, ...). Before the first micro-batch, the
workers all-reduce how many units the whole step holds; each micro-batch then backpropagates
    sum_term * world_size * grad_accum / global_count
because DeepSpeed divides by grad_accum and averages over all ranks. The optimizer thus sees the
gradient of the exact mean over the step's pairs, however they were packed or spread. Under sequence
parallelism S ranks share a row, so counts are divided by S, and the S partial gradients of a group
add up (Ulysses, see model/sequence_parallel.py).

A non-finite loss or reward on any rank makes every rank replace that micro-batch by an empty one
(collectives stay in step); it is counted, or raises with ``nan_policy=raise``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ray_rm.losses import UNITS, LossSettings, compute_loss, make_pairs
from ray_rm.model.batch import collate_row
from ray_rm.train.data_feed import dummy_row

STAT_KEYS = ("pairs", "correct", "chosen_rewards", "rejected_rewards", "reward_margin")


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class StepContext:
    engine: object
    device: torch.device
    settings: LossSettings
    world_size: int
    sp: object  # SequenceParallelContext or None
    sp_size: int
    pad_token_id: int
    pack_tokens: int
    nan_policy: str = "skip"

    @property
    def needs_token_values(self) -> bool:
        return self.settings.name == "token_divergence"


def _allreduce(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _unit_counts(batch) -> dict:
    pairs = make_pairs(batch)
    return {"pairs": int(pairs.better.numel()), "sequences": batch.num_sequences,
            "scored": int(torch.isfinite(batch.seq_scores).sum()), "groups": batch.num_groups}


def _forward_loss(ctx: StepContext, batch, scale: dict | None):
    out = ctx.engine(batch.to(ctx.device), token_values=ctx.needs_token_values, sp=ctx.sp)
    res = compute_loss(out, batch, ctx.settings)
    loss = 0.0 * out.rewards.sum()  # keeps every parameter in the graph, also for empty rows
    for term, (value, unit) in res.terms.items():
        if scale is not None:
            loss = loss + value * scale[unit]
    finite = bool(torch.isfinite(out.rewards).all()) and all(bool(torch.isfinite(v)) for v, _ in res.terms.values())
    return loss, res, finite


def train_step(ctx: StepContext, rows: list) -> dict:
    """Run the micro-batches of one optimizer step; returns global metric sums for the step."""
    t0 = time.perf_counter()
    batches = [collate_row(r if r is not None else dummy_row(), ctx.sp_size, ctx.pad_token_id) for r in rows]
    real = [r is not None for r in rows]
    local = [sum(_unit_counts(b)[u] for b, ok in zip(batches, real) if ok) for u in UNITS]
    counts = dict(zip(UNITS, (c / ctx.sp_size for c in _allreduce(local, ctx.device))))
    gas = len(rows)
    scale = {u: (ctx.world_size * gas / counts[u]) if counts[u] else 0.0 for u in UNITS}
    sums = dict.fromkeys(("loss", *STAT_KEYS, "tokens", "rows", "skipped"), 0.0)
    ctx.engine.train()
    for batch, ok in zip(batches, real):
        loss, res, finite = _forward_loss(ctx, batch, scale if ok else None)
        all_finite = _allreduce([1.0 if finite else 0.0], ctx.device)[0] == ctx.world_size
        if not all_finite:
            if ctx.nan_policy == "raise":
                raise NonFiniteLossError("non-finite loss or reward in a training micro-batch (train.nan_policy=raise)"
                                         f"; pairs: {batch.group_ids[:5]}")
            sums["skipped"] += 1.0 / ctx.world_size  # every rank counts it once; summed below
            loss, res, _ = _forward_loss(ctx, collate_row(dummy_row(), ctx.sp_size, ctx.pad_token_id), None)
            ok = False
        ctx.engine.backward(loss)
        ctx.engine.step()
        if ok:
            for term, (value, unit) in res.terms.items():
                if counts[unit]:
                    sums["loss"] += float(value.detach()) / counts[unit]
            for k in STAT_KEYS:
                sums[k] += res.stats[k]
            sums["tokens"] += batch.num_real_tokens
            sums["rows"] += 1
    keys = list(sums)
    reduced = _allreduce([sums[k] for k in keys], ctx.device)
    out = {k: v / ctx.sp_size for k, v in zip(keys, reduced)}
    out["skipped"] = reduced[keys.index("skipped")]
    out["seconds"] = time.perf_counter() - t0
    out["peak_memory_gb"] = _max_across_ranks(peak_memory_gb(ctx.device), ctx.device)
    return out


def peak_memory_gb(device) -> float:
    """This worker's peak memory: GPU allocations on CUDA, process RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def _max_across_ranks(value: float, device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


@torch.no_grad()
def evaluate(ctx: StepContext, rows) -> dict:
    """Global eval metrics over this rank's eval rows (None = dummy) and reward moments for normalization."""
    ctx.engine.eval()
    sums = dict.fromkeys((*STAT_KEYS, "r_sum", "r_sq", "r_n", *[f"n_{u}" for u in UNITS]), 0.0)
    term_sums: dict = {}
    for row in rows:
        batch = collate_row(row if row is not None else dummy_row(), ctx.sp_size, ctx.pad_token_id)
        out = ctx.engine(batch.to(ctx.device), token_values=ctx.needs_token_values, sp=ctx.sp)
        if row is None:
            continue
        res = compute_loss(out, batch, ctx.settings)
        for term, (value, unit) in res.terms.items():
            term_sums[(term, unit)] = term_sums.get((term, unit), 0.0) + float(value)
        for k in STAT_KEYS:
            sums[k] += res.stats[k]
        r = out.rewards.double()
        sums["r_sum"] += float(r.sum())
        sums["r_sq"] += float((r * r).sum())
        sums["r_n"] += r.numel()
        for u in UNITS:
            sums[f"n_{u}"] += res.counts[u]
    names = sorted(term_sums)
    keys = list(sums)
    reduced = _allreduce([sums[k] for k in keys] + [term_sums[n] for n in names], ctx.device)
    tot = {k: v / ctx.sp_size for k, v in zip(keys, reduced)}
    loss = sum(v / ctx.sp_size / tot[f"n_{unit}"] for (term, unit), v in zip(names, reduced[len(keys):])
               if tot[f"n_{unit}"])
    pairs = tot["pairs"] or math.nan
    mean = tot["r_sum"] / tot["r_n"] if tot["r_n"] else 0.0
    var = tot["r_sq"] / tot["r_n"] - mean * mean if tot["r_n"] else 1.0
    return {"loss": loss, "accuracy": tot["correct"] / pairs, "chosen_rewards": tot["chosen_rewards"] / pairs,
            "rejected_rewards": tot["rejected_rewards"] / pairs, "reward_margin": tot["reward_margin"] / pairs,
            "pairs": tot["pairs"], "reward_mean": mean, "reward_std": math.sqrt(max(var, 1e-12))}
