"""One optimizer step and one evaluation pass over a worker's packed rows.

What this module is for: running the micro-batches of a step (forward, loss, backward, DeepSpeed step),
skipping non-finite ones on every rank alike, and summing metrics; and the eval pass. What it must not
do: decide loss scaling (``train/loss_scale.py`` is its one home), choose rows (``train/data_feed.py``),
or report to Ray Train (``train/loop.py``).

A non-finite loss or reward on any rank makes every rank replace that micro-batch by an empty one
(collectives stay in step); it is counted, or raises with ``nan_policy=raise``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ray_rm.losses import STAT_KEYS, UNITS, LossSettings, compute_loss, get_loss, loss_terms
from ray_rm.model.batch import collate_row
from ray_rm.packed import PackedRow
from ray_rm.train.collectives import all_reduce_floats, all_reduce_tensor
from ray_rm.train.loss_scale import mean_loss, scaled_loss, step_unit_counts, unit_factors


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


def _forward_loss(ctx: StepContext, batch, factors: dict | None):
    """(loss to backpropagate, sums vector); ``factors=None`` marks an empty row: zero loss, zero sums."""
    out = ctx.engine(batch.to(ctx.device), token_values=ctx.needs_token_values, sp=ctx.sp)
    res = compute_loss(out, batch, ctx.settings)
    zero = 0.0 * out.rewards.sum()  # keeps every parameter in the graph, also for empty rows
    vector = _sums_vector(ctx, res, out.rewards)
    if factors is None:
        return zero, torch.cat([vector[:1], torch.zeros_like(vector[1:])])
    return scaled_loss(res.terms, factors, zero), vector


def _collate(ctx: StepContext, row) -> object:
    return collate_row(row if row is not None else PackedRow.empty(), ctx.sp_size, ctx.pad_token_id)


def train_step(ctx: StepContext, rows: list) -> dict:
    """Run the micro-batches of one optimizer step (None = an empty row); returns global metric sums.

    Each micro-batch all-reduces one fixed-length vector (non-finite flag, loss terms, stats): the one
    host sync it needs, to decide on every rank alike whether to skip it."""
    t0 = time.perf_counter()
    batches = [_collate(ctx, r) for r in rows]
    real = [r is not None for r in rows]
    counts = step_unit_counts(batches, real, ctx.sp_size)
    factors = unit_factors(counts, ctx.world_size)
    layout = ctx.layout
    sums = dict.fromkeys(("loss", *STAT_KEYS), 0.0)
    skipped, tokens, n_rows = 0, 0, 0
    ctx.engine.train()
    for batch, ok in zip(batches, real):
        loss, vector = _forward_loss(ctx, batch, factors if ok else None)
        reduced = [v / ctx.sp_size for v in all_reduce_tensor(vector).tolist()]
        skip = reduced[0] > 0  # some rank saw a non-finite loss or reward: every rank drops this micro-batch
        if skip:
            if ctx.nan_policy == "raise":
                raise NonFiniteLossError("non-finite loss or reward in a training micro-batch (train.nan_policy=raise)"
                                         f"; pairs: {batch.group_ids[:5]}")
            skipped += 1
            loss, _ = _forward_loss(ctx, _collate(ctx, None), None)
        ctx.engine.backward(loss, scale_wrt_gas=False)  # loss_scale.py already made it the step's mean
        ctx.engine.step()
        if not skip:  # the reduced sums are global: count them on every rank, also one whose own row was empty
            sums["loss"] += mean_loss(layout, reduced[1:1 + len(layout)], counts)
            for k, value in zip(STAT_KEYS, reduced[1 + len(layout):]):
                sums[k] += value
            if ok:
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
        batch = _collate(ctx, row)
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
    loss = mean_loss(layout, terms, {u: tot[f"n_{u}"] for u in UNITS})
    pairs = tot["pairs"] or math.nan
    mean = tot["r_sum"] / tot["r_n"] if tot["r_n"] else 0.0
    var = tot["r_sq"] / tot["r_n"] - mean * mean if tot["r_n"] else 1.0
    return {"loss": loss, "accuracy": tot["correct"] / pairs, "chosen_rewards": tot["chosen_rewards"] / pairs,
            "rejected_rewards": tot["rejected_rewards"] / pairs, "reward_margin": tot["reward_margin"] / pairs,
            "pairs": tot["pairs"], "reward_mean": mean, "reward_std": math.sqrt(max(var, 1e-12))}
