"""Reward-model losses, selected by name (``train.loss``).

Every loss returns *sums* with the unit they average over (pairs, sequences, scored sequences or
groups). The train loop divides each sum by that unit's count over the whole optimizer step (all
workers, all micro-batches), so the loss is the exact global mean however rows were packed.

Pairs come from each group's ranks: every (i, j) with rank_i < rank_j, i the better response.
  bt                -log σ(r_b - r_w)                                 (Bradley-Terry, InstructGPT)
  logexp            log(1 + exp(r_w - r_b))                           (Anthropic; equal to bt in value)
  margin            -log σ(r_b - r_w - m), m = the row's margin (0 when absent)   (Llama 2)
  internlm2         bt, or focal -(1-p)^γ log p with p = σ(r_b - r_w), plus a log-barrier keeping rewards
                    in (-5, 5): -log(5 - r) - log(5 + r) + 2 log 5 (0 at r = 0, linear past ±(5 - 1e-3))
  token_divergence  mean over the aligned tokens after the first differing token of -log σ(v_b[t] - v_w[t])
                    (DeepSpeed-Chat / trlx style), per pair
  ce2               2-class accept/reject cross-entropy with logits (0, r): -log σ(r) for the best response,
                    -log σ(-r) for the others (the reward is the accept-minus-reject logit)
  mse               (r - score)² on sequences that carry a score (score_chosen/score_rejected, k-way scores)
  listwise          Plackett-Luce negative log-likelihood of each group's ranking
``train.center_rewards_coefficient`` c adds c·(r_b + r_w)² per pair to any loss (TRL).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ray_rm.model.batch import ModelBatch
from ray_rm.model.reward_model import RewardOutput

BARRIER_BOUND = 5.0
BARRIER_EPS = 1e-3
UNITS = ("pairs", "sequences", "scored", "groups")


@dataclass
class LossSettings:
    name: str = "bt"
    center_rewards_coefficient: float = 0.0
    barrier_coefficient: float = 0.01
    focal_gamma: float = 0.0


@dataclass
class LossResult:
    terms: dict = field(default_factory=dict)  # term name -> (sum tensor, unit)
    counts: dict = field(default_factory=dict)  # unit -> local count in this micro-batch
    stats: dict = field(default_factory=dict)  # metric sums (pairs, correct, chosen/rejected reward sums)


@dataclass
class Pairs:
    better: torch.Tensor  # [P] sequence index of the better response
    worse: torch.Tensor
    margin: torch.Tensor  # [P] float (0 where none)


def make_pairs(batch: ModelBatch) -> Pairs:
    """All (better, worse) sequence pairs of every group, from ranks (ties form no pair)."""
    better, worse, margin = [], [], []
    ranks = batch.seq_ranks.tolist()
    scores = batch.seq_scores.tolist()
    margins = batch.group_margins.tolist()
    start = 0
    for g, size in enumerate(batch.group_sizes.tolist()):
        for i in range(start, start + size):
            for j in range(start, start + size):
                if ranks[i] < ranks[j]:
                    better.append(i)
                    worse.append(j)
                    m = margins[g] if size == 2 else scores[i] - scores[j]
                    margin.append(m if math.isfinite(m) else 0.0)
        start += size
    dev = batch.seq_ranks.device
    return Pairs(torch.tensor(better, dtype=torch.long, device=dev), torch.tensor(worse, dtype=torch.long, device=dev),
                 torch.tensor(margin, dtype=torch.float32, device=dev))


def log_barrier(r: torch.Tensor, bound: float = BARRIER_BOUND, eps: float = BARRIER_EPS) -> torch.Tensor:
    """-log(b - r) - log(b + r) + 2 log b (0 at r = 0), continued linearly past ±(b - eps) so it never turns NaN."""
    edge = bound - eps
    rc = r.clamp(-edge, edge)
    inside = -torch.log(bound - rc) - torch.log(bound + rc) + 2 * math.log(bound)
    slope = 2 * edge / (bound * bound - edge * edge)  # derivative of the barrier at the edge
    return inside + slope * (r - rc).abs()


def _ranking_term(diff: torch.Tensor, gamma: float) -> torch.Tensor:
    if gamma > 0:
        p = torch.sigmoid(diff)
        return -((1 - p) ** gamma) * F.logsigmoid(diff)
    return -F.logsigmoid(diff)


def _token_divergence(out: RewardOutput, batch: ModelBatch, pairs: Pairs) -> torch.Tensor:
    if out.token_values is None:
        raise ValueError("token_divergence needs token values: call the model with token_values=True")
    values = out.token_values
    total = values.new_zeros(())
    common = batch.group_common_lens[batch.seq_group]
    for b, w in zip(pairs.better.tolist(), pairs.worse.tolist()):
        n = int(min(batch.seq_full_lens[b], batch.seq_full_lens[w]) - common[b])
        idx_b = batch.own_start[b] + torch.arange(n, device=values.device)
        idx_w = batch.own_start[w] + torch.arange(n, device=values.device)
        total = total - F.logsigmoid(values[idx_b] - values[idx_w]).mean()
    return total


def _listwise(rewards: torch.Tensor, batch: ModelBatch) -> torch.Tensor:
    total = rewards.new_zeros(())
    start = 0
    for size in batch.group_sizes.tolist():
        r = rewards[start:start + size]
        order = torch.argsort(batch.seq_ranks[start:start + size], stable=True)
        r = r[order]
        # -log P(ranking) = sum_i [logsumexp(r_i..r_k) - r_i]
        tails = torch.flip(torch.logcumsumexp(torch.flip(r, [0]), 0), [0])
        total = total + (tails[:-1] - r[:-1]).sum()
        start += size
    return total


def compute_loss(out: RewardOutput, batch: ModelBatch, settings: LossSettings) -> LossResult:
    r = out.rewards
    pairs = make_pairs(batch)
    rb, rw = r[pairs.better], r[pairs.worse]
    diff = rb - rw
    scored = torch.isfinite(batch.seq_scores)
    res = LossResult(counts={"pairs": int(pairs.better.numel()), "sequences": int(r.numel()),
                             "scored": int(scored.sum()), "groups": batch.num_groups})
    name = settings.name
    if name == "bt":
        res.terms["bt"] = (-F.logsigmoid(diff).sum(), "pairs")
    elif name == "logexp":
        res.terms["logexp"] = (F.softplus(-diff).sum(), "pairs")
    elif name == "margin":
        res.terms["margin"] = (-F.logsigmoid(diff - pairs.margin).sum(), "pairs")
    elif name == "internlm2":
        res.terms["ranking"] = (_ranking_term(diff, settings.focal_gamma).sum(), "pairs")
        res.terms["barrier"] = (settings.barrier_coefficient * log_barrier(r).sum(), "sequences")
    elif name == "token_divergence":
        res.terms["token_divergence"] = (_token_divergence(out, batch, pairs), "pairs")
    elif name == "ce2":
        accept = batch.seq_ranks == 0
        res.terms["ce2"] = ((-F.logsigmoid(r[accept])).sum() + (-F.logsigmoid(-r[~accept])).sum(), "sequences")
    elif name == "mse":
        res.terms["mse"] = (((r[scored] - batch.seq_scores[scored]) ** 2).sum(), "scored")
    elif name == "listwise":
        res.terms["listwise"] = (_listwise(r, batch), "groups")
    else:
        raise ValueError(f"unknown loss '{name}'; choose one of {', '.join(LOSS_NAMES)}")
    if settings.center_rewards_coefficient:
        res.terms["center"] = (settings.center_rewards_coefficient * ((rb + rw) ** 2).sum(), "pairs")
    d = diff.detach()
    res.stats = {"pairs": float(d.numel()), "correct": float((d > 0).sum()), "chosen_rewards": float(rb.detach().sum()),
                 "rejected_rewards": float(rw.detach().sum()), "reward_margin": float(d.sum())}
    return res


LOSS_NAMES = ("bt", "logexp", "margin", "internlm2", "token_divergence", "ce2", "mse", "listwise")
