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

from ray_rm.losses import STAT_KEYS, UNITS, LossSettings, compute_loss, get_loss, loss_terms, unit_counts
from ray_rm.model.batch import collate_row
from ray_rm.packed import PackedRow
from ray_rm.train.collectives import all_reduce_floats, all_reduce_tensor


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
        return get_loss(self.settings.name).needs_token_values

    @property
    def layout(self) -> tuple:
        return loss_terms(self.settings)


def _sums_vector(ctx: StepContext, res, rewards: torch.Tensor) -> torch.Tensor:
    """[non-finite count, each loss term in layout order, each STAT_KEY]: one float64 vector on the device."""
    terms = [res.terms[t][0].detach() for t, _ in ctx.layout]
    bad = (~torch.isfinite(rewards.detach())).sum() + sum((~torch.isfinite(v)).sum() for v in terms)
    return torch.stack([bad.double(), *[v.double() for v in terms], *[res.stats[k].double() for k in STAT_KEYS]])


def _forward_loss(ctx: StepContext, batch, scale: dict | None):
    """(loss to backpropagate, sums vector); ``scale=None`` marks a dummy row: zero loss, zero sums."""
    out = ctx.engine(batch.to(ctx.device), token_values=ctx.needs_token_values, sp=ctx.sp)
    res = compute_loss(out, batch, ctx.settings)
    loss = 0.0 * out.rewards.sum()  # keeps every parameter in the graph, also for empty rows
    vector = _sums_vector(ctx, res, out.rewards)
    if scale is None:
        return loss, torch.cat([vector[:1], torch.zeros_like(vector[1:])])
    for term, (value, unit) in res.terms.items():
        loss = loss + value * scale[unit]
    return loss, vector


def train_step(ctx: StepContext, rows: list) -> dict:
    """Run the micro-batches of one optimizer step; returns global metric sums for the step.

    Each micro-batch all-reduces one fixed-length vector (non-finite flag, loss terms, stats): the one
    host sync it needs, to decide on every rank alike whether to skip it."""
    t0 = time.perf_counter()
    batches = [collate_row(r if r is not None else PackedRow.empty(), ctx.sp_size, ctx.pad_token_id) for r in rows]
    real = [r is not None for r in rows]
    local = [sum(unit_counts(b)[u] for b, ok in zip(batches, real) if ok) for u in UNITS]
    counts = dict(zip(UNITS, (c / ctx.sp_size for c in all_reduce_floats(local))))
    gas = len(rows)
    scale = {u: (ctx.world_size * gas / counts[u]) if counts[u] else 0.0 for u in UNITS}
    layout = ctx.layout
    sums = dict.fromkeys(("loss", *STAT_KEYS), 0.0)
    skipped, tokens, n_rows = 0, 0, 0
    ctx.engine.train()
    for batch, ok in zip(batches, real):
        loss, vector = _forward_loss(ctx, batch, scale if ok else None)
        reduced = [v / ctx.sp_size for v in all_reduce_tensor(vector).tolist()]
        if reduced[0] > 0:  # some rank saw a non-finite loss or reward: every rank drops this micro-batch
            if ctx.nan_policy == "raise":
                raise NonFiniteLossError("non-finite loss or reward in a training micro-batch (train.nan_policy=raise)"
                                         f"; pairs: {batch.group_ids[:5]}")
            skipped += 1
            loss, _ = _forward_loss(ctx, collate_row(PackedRow.empty(), ctx.sp_size, ctx.pad_token_id), None)
            ok = False
        ctx.engine.backward(loss)
        ctx.engine.step()
        if ok:
            for (term, unit), value in zip(layout, reduced[1:]):
                if counts[unit]:
                    sums["loss"] += value / counts[unit]
            for k, value in zip(STAT_KEYS, reduced[1 + len(layout):]):
                sums[k] += value
            tokens += batch.num_real_tokens
            n_rows += 1
    tokens_all, rows_all = all_reduce_floats([tokens, n_rows])
    sums.update(tokens=tokens_all / ctx.sp_size, rows=rows_all / ctx.sp_size, skipped=float(skipped),
                seconds=time.perf_counter() - t0)
    sums["peak_memory_gb"] = all_reduce_floats([peak_memory_gb(ctx.device)], op="max")[0]
    return sums


def peak_memory_gb(device) -> float:
    """This worker's peak memory: GPU allocations on CUDA, process RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


EVAL_MOMENTS = ("r_sum", "r_sq")


@torch.no_grad()
def evaluate(ctx: StepContext, rows) -> dict:
    """Global eval metrics over this rank's eval rows (None = dummy) and reward moments for normalization.

    Sums accumulate on the device in a fixed layout (loss terms, STAT_KEYS, reward moments) and host
    counts beside them, so every rank reduces the same shape even with no rows of its own."""
    ctx.engine.eval()
    layout = ctx.layout
    acc = torch.zeros(len(layout) + len(STAT_KEYS) + len(EVAL_MOMENTS), dtype=torch.float64, device=ctx.device)
    host = dict.fromkeys(("r_n", *[f"n_{u}" for u in UNITS]), 0.0)
    for row in rows:
        batch = collate_row(row if row is not None else PackedRow.empty(), ctx.sp_size, ctx.pad_token_id)
        out = ctx.engine(batch.to(ctx.device), token_values=ctx.needs_token_values, sp=ctx.sp)
        if row is None:
            continue
        res = compute_loss(out, batch, ctx.settings)
        r = out.rewards.detach().double()
        acc += torch.stack([*[res.terms[t][0].detach().double() for t, _ in layout],
                            *[res.stats[k].double() for k in STAT_KEYS], r.sum(), (r * r).sum()])
        host["r_n"] += r.numel()
        for u in UNITS:
            host[f"n_{u}"] += res.counts[u]
    local = torch.cat([acc.cpu(), torch.tensor(list(host.values()), dtype=torch.float64)])
    reduced = [v / ctx.sp_size for v in all_reduce_tensor(local).tolist()]
    terms, rest = reduced[:len(layout)], reduced[len(layout):]
    tot = dict(zip((*STAT_KEYS, *EVAL_MOMENTS, *host), rest))
    loss = sum(v / tot[f"n_{unit}"] for (_, unit), v in zip(layout, terms) if tot[f"n_{unit}"])
    pairs = tot["pairs"] or math.nan
    mean = tot["r_sum"] / tot["r_n"] if tot["r_n"] else 0.0
    var = tot["r_sq"] / tot["r_n"] - mean * mean if tot["r_n"] else 1.0
    return {"loss": loss, "accuracy": tot["correct"] / pairs, "chosen_rewards": tot["chosen_rewards"] / pairs,
            "rejected_rewards": tot["rejected_rewards"] / pairs, "reward_margin": tot["reward_margin"] / pairs,
            "pairs": tot["pairs"], "reward_mean": mean, "reward_std": math.sqrt(max(var, 1e-12))}
