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
    stats: dict = field(default_factory=dict)  # STAT_KEYS -> 0-d tensor sums on the rewards' device


@dataclass
class Pairs:
    better: torch.Tensor  # [P] sequence index of the better response
    worse: torch.Tensor
    margin: torch.Tensor  # [P] float (0 where none)


def make_pairs(batch: ModelBatch) -> Pairs:
    """All (better, worse) sequence pairs of every group, from ranks (ties form no pair).

    The indices were built on the CPU by ``collate_row``; here they are only wrapped, so a loss on the
    GPU never waits for the host."""
    return Pairs(batch.pair_better, batch.pair_worse, batch.pair_margin)


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


def _token_divergence(out: RewardOutput, batch: ModelBatch) -> torch.Tensor:
    """Sum over pairs of the mean over aligned tokens of -log σ(v_b[t] - v_w[t]), in one gather + scatter."""
    if out.token_values is None:
        raise ValueError("token_divergence needs token values: call the model with token_values=True")
    values = out.token_values
    per_token = -F.logsigmoid(values[batch.token_better] - values[batch.token_worse])
    per_pair = values.new_zeros(batch.num_pairs).index_add_(0, batch.token_pair, per_token)
    return (per_pair / batch.token_count.clamp(min=1).to(values.dtype)).sum()


def _listwise(rewards: torch.Tensor, batch: ModelBatch) -> torch.Tensor:
    total = rewards.new_zeros(())
    start = 0
    for size in batch.group_size_list:
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
    res = LossResult(counts=unit_counts(batch))
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
        res.terms["token_divergence"] = (_token_divergence(out, batch), "pairs")
    elif name == "ce2":
        # torch.where, not boolean indexing: indexing by a mask would wait for the device to count it
        res.terms["ce2"] = (torch.where(batch.seq_ranks == 0, -F.logsigmoid(r), -F.logsigmoid(-r)).sum(), "sequences")
    elif name == "mse":
        res.terms["mse"] = (torch.where(scored, r - batch.seq_scores, 0.0).square().sum(), "scored")
    elif name == "listwise":
        res.terms["listwise"] = (_listwise(r, batch), "groups")
    else:
        raise ValueError(f"unknown loss '{name}'; choose one of {', '.join(LOSS_NAMES)}")
    if settings.center_rewards_coefficient:
        res.terms["center"] = (settings.center_rewards_coefficient * ((rb + rw) ** 2).sum(), "pairs")
    d = diff.detach()
    res.stats = {"pairs": d.new_full((), float(d.numel())), "correct": (d > 0).sum().to(d.dtype),
                 "chosen_rewards": rb.detach().sum(), "rejected_rewards": rw.detach().sum(), "reward_margin": d.sum()}
    return res


def unit_counts(batch: ModelBatch) -> dict:
    """How many of each loss unit a row holds, from host-side data (no device sync)."""
    return {"pairs": batch.num_pairs, "sequences": batch.num_sequences, "scored": batch.num_scored,
            "groups": batch.num_groups}


def loss_terms(settings: LossSettings) -> tuple[tuple[str, str], ...]:
    """(term, unit) of every term ``compute_loss`` returns for these settings, in a fixed order.

    Collectives over loss sums use this layout, so every rank reduces the same shape whether or not
    it had data (a rank with no eval rows computes no terms, but still reduces zeros)."""
    terms = {"bt": [("bt", "pairs")], "logexp": [("logexp", "pairs")], "margin": [("margin", "pairs")],
             "internlm2": [("ranking", "pairs"), ("barrier", "sequences")],
             "token_divergence": [("token_divergence", "pairs")], "ce2": [("ce2", "sequences")],
             "mse": [("mse", "scored")], "listwise": [("listwise", "groups")]}
    if settings.name not in terms:
        raise ValueError(f"unknown loss '{settings.name}'; choose one of {', '.join(LOSS_NAMES)}")
    extra = [("center", "pairs")] if settings.center_rewards_coefficient else []
    return tuple(terms[settings.name] + extra)


STAT_KEYS = ("pairs", "correct", "chosen_rewards", "rejected_rewards", "reward_margin")


LOSS_NAMES = ("bt", "logexp", "margin", "internlm2", "token_divergence", "ce2", "mse", "listwise")
