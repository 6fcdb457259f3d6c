"""Reward-model losses: a registry of named losses (``train.loss``), each one small function.

What this module is for: the loss math and the units each loss averages over. What it must not do:
decide how sums become a mean over an optimizer step (``train/loss_scale.py`` does, in one place),
read device values on the host (no ``.tolist()``/``float()``: the index data is built on the CPU by
``model/batch.py``), or import Ray or DeepSpeed.

Every loss returns *sums*, each with the unit it averages over (pairs, sequences, scored sequences or
groups); ``train/loss_scale.py`` divides each sum by that unit's count over the whole optimizer step
(all workers, all micro-batches), so the loss is the exact global mean however rows were packed.
Adding a loss is one function plus its ``@register_loss(name, terms)`` line; a head (``model/heads.py``)
lists the losses it accepts.

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
  attribute_mse     attribute head: ((a_j - y_j) / std_j)² over the given ratings only (unit: ratings)
  attribute_mse_bt  attribute_mse + bt on the combined reward w . a (rated rows and pairs in one run)
  step_bce          (model.head=prm) binary cross-entropy of each labelled step's score (a logit) against its
                    label, summed over labelled steps (unit "steps"; unlabelled steps, NaN, are masked out);
                    ``train.prm_pos_weight`` w weighs the correct-step term (w < 1: wrong steps count more)
``train.center_rewards_coefficient`` c adds c·(r_b + r_w)² per pair to any loss (TRL).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ray_rm.errors import lookup
from ray_rm.model.batch import ModelBatch
from ray_rm.model.reward_model import RewardOutput

BARRIER_BOUND = 5.0
BARRIER_EPS = 1e-3
UNITS = ("pairs", "sequences", "scored", "groups", "ratings", "steps")


@dataclass
class LossSettings:
    name: str = "bt"
    center_rewards_coefficient: float = 0.0
    barrier_coefficient: float = 0.01
    focal_gamma: float = 0.0
    prm_pos_weight: float = 1.0  # step_bce: weight of the correct-step term (torch's pos_weight)

    def __post_init__(self):
        get_loss(self.name)  # an unknown name fails where the settings are made, not at the first micro-batch

    @classmethod
    def from_train_config(cls, tc) -> "LossSettings":
        """The settings a ``train`` config section (``config_schema.TrainConfig``) asks for."""
        return cls(tc.loss, tc.center_rewards_coefficient, tc.barrier_coefficient, tc.focal_gamma, tc.prm_pos_weight)


@dataclass
class LossResult:
    terms: dict = field(default_factory=dict)  # term name -> (sum tensor, unit)
    counts: dict = field(default_factory=dict)  # unit -> local count in this micro-batch
    stats: dict = field(default_factory=dict)  # STAT_KEYS -> 0-d tensor sums on the rewards' device


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


@dataclass(frozen=True)
class Loss:
    """A registered loss: its function and the (term, unit) of every sum it returns, in a fixed order."""

    name: str
    fn: Callable[[RewardOutput, ModelBatch, LossSettings], dict]  # -> {term: sum tensor}
    terms: tuple
    needs_token_values: bool = False  # the model must also return the value head at every token


LOSSES: dict[str, Loss] = {}


def register_loss(name: str, terms: tuple, needs_token_values: bool = False):
    """Decorator: ``@register_loss("bt", (("bt", "pairs"),))`` above a function returning {term: sum}."""
    def add(fn):
        LOSSES[name] = Loss(name, fn, tuple(terms), needs_token_values)
        return fn
    return add


def get_loss(name: str) -> Loss:
    return lookup(LOSSES, name, "train.loss")


def _pair_diff(out: RewardOutput, batch: ModelBatch) -> torch.Tensor:
    """r_better - r_worse for every ranked pair (index data built on the CPU by ``collate_row``)."""
    return out.rewards[batch.pair_better] - out.rewards[batch.pair_worse]


@register_loss("bt", (("bt", "pairs"),))
def bradley_terry(out, batch, settings):
    return {"bt": -F.logsigmoid(_pair_diff(out, batch)).sum()}


@register_loss("logexp", (("logexp", "pairs"),))
def log_exp(out, batch, settings):
    return {"logexp": F.softplus(-_pair_diff(out, batch)).sum()}


@register_loss("margin", (("margin", "pairs"),))
def margin_bt(out, batch, settings):
    return {"margin": -F.logsigmoid(_pair_diff(out, batch) - batch.pair_margin).sum()}


@register_loss("internlm2", (("ranking", "pairs"), ("barrier", "sequences")))
def internlm2(out, batch, settings):
    return {"ranking": _ranking_term(_pair_diff(out, batch), settings.focal_gamma).sum(),
            "barrier": settings.barrier_coefficient * log_barrier(out.rewards).sum()}


@register_loss("token_divergence", (("token_divergence", "pairs"),), needs_token_values=True)
def token_divergence(out, batch, settings):
    """Sum over pairs of the mean over aligned tokens of -log σ(v_b[t] - v_w[t]), in one gather + scatter."""
    if out.token_values is None:
        raise ValueError("token_divergence needs token values: call the model with token_values=True")
    values = out.token_values
    per_token = -F.logsigmoid(values[batch.token_better] - values[batch.token_worse])
    per_pair = values.new_zeros(batch.num_pairs).index_add_(0, batch.token_pair, per_token)
    return {"token_divergence": (per_pair / batch.token_count.clamp(min=1).to(values.dtype)).sum()}


@register_loss("ce2", (("ce2", "sequences"),))
def accept_reject_ce(out, batch, settings):
    r = out.rewards
    # torch.where, not boolean indexing: indexing by a mask would wait for the device to count it
    return {"ce2": torch.where(batch.seq_ranks == 0, -F.logsigmoid(r), -F.logsigmoid(-r)).sum()}


@register_loss("mse", (("mse", "scored"),))
def score_regression(out, batch, settings):
    scored = torch.isfinite(batch.seq_scores)
    return {"mse": torch.where(scored, out.rewards - batch.seq_scores, 0.0).square().sum()}


@register_loss("listwise", (("listwise", "groups"),))
def plackett_luce(out, batch, settings):
    """-log P(ranking) = sum_i [logsumexp(r_i..r_k) - r_i] per group, groups looped on the host's sizes."""
    total = out.rewards.new_zeros(())
    start = 0
    for size in batch.group_size_list:
        order = torch.argsort(batch.seq_ranks[start:start + size], stable=True)
        r = out.rewards[start:start + size][order]
        tails = torch.flip(torch.logcumsumexp(torch.flip(r, [0]), 0), [0])
        total = total + (tails[:-1] - r[:-1]).sum()
        start += size
    return {"listwise": total}


# ---------------------------------------------------------------------------------------------- attributes
def _masked_attribute_sse(out, batch) -> torch.Tensor:
    """sum over given ratings of ((a - y) / std)²: the regression in the head's normalised units; a missing
    rating (NaN) is masked out, never read as 0. Rows without ratings (pairs only, empty rows) give 0."""
    targets = batch.seq_attributes
    if out.attributes is None or targets is None or targets.shape[-1] == 0:
        return out.rewards.sum() * 0.0
    given = torch.isfinite(targets)
    diff = (out.attributes - torch.where(given, targets, 0.0)) / out.attribute_stds
    return torch.where(given, diff, 0.0).square().sum()


@register_loss("attribute_mse", (("attribute_mse", "ratings"),))
def attribute_mse(out, batch, settings):
    return {"attribute_mse": _masked_attribute_sse(out, batch)}


@register_loss("attribute_mse_bt", (("attribute_mse", "ratings"), ("bt", "pairs")))
def attribute_mse_bt(out, batch, settings):
    """Mixed runs: MSE on the rated rows' attributes + Bradley-Terry on the pairs' combined reward w . a."""
    return {"attribute_mse": _masked_attribute_sse(out, batch), "bt": -F.logsigmoid(_pair_diff(out, batch)).sum()}

# ------------------------------------------------------------------ process reward models (model.head=prm)
@register_loss("step_bce", (("step_bce", "steps"),))
def step_bce(out, batch, settings):
    """Sum over labelled steps of BCE(score, label); ``out.rewards`` holds one score per step (the prm head).

    ``settings.prm_pos_weight`` w scales the correct-step term: -(w y log p + (1 - y) log(1 - p)). The sum is
    still averaged over labelled steps (not over weights), so w = 1 is the plain BCE."""
    labels = batch.step_labels
    known = torch.isfinite(labels)
    pos_weight = out.rewards.new_tensor(settings.prm_pos_weight) if settings.prm_pos_weight != 1.0 else None
    per_step = F.binary_cross_entropy_with_logits(out.rewards, torch.where(known, labels, 0.0), reduction="none",
                                                  pos_weight=pos_weight)
    return {"step_bce": torch.where(known, per_step, 0.0).sum()}


def compute_loss(out: RewardOutput, batch: ModelBatch, settings: LossSettings) -> LossResult:
    """The registered loss's sums (with units), the optional centering term, and the pairwise statistics."""
    loss = LOSSES[settings.name]  # checked when the settings were made
    sums = loss.fn(out, batch, settings)
    res = LossResult(terms={term: (sums[term], unit) for term, unit in loss.terms}, counts=unit_counts(batch))
    rb, rw = out.rewards[batch.pair_better], out.rewards[batch.pair_worse]
    if settings.center_rewards_coefficient:
        res.terms["center"] = (settings.center_rewards_coefficient * ((rb + rw) ** 2).sum(), "pairs")
    d = (rb - rw).detach()
    res.stats = {"pairs": d.new_full((), float(d.numel())), "correct": (d > 0).sum().to(d.dtype),
                 "chosen_rewards": rb.detach().sum(), "rejected_rewards": rw.detach().sum(), "reward_margin": d.sum()}
    return res


def unit_counts(batch: ModelBatch) -> dict:
    """How many of each loss unit a row holds, from host-side data (no device sync)."""
    return {"pairs": batch.num_pairs, "sequences": batch.num_sequences, "scored": batch.num_scored,
            "groups": batch.num_groups, "ratings": batch.num_ratings, "steps": batch.num_labelled_steps}


def loss_terms(settings: LossSettings) -> tuple[tuple[str, str], ...]:
    """(term, unit) of every term ``compute_loss`` returns for these settings, in a fixed order.

    Collectives over loss sums use this layout, so every rank reduces the same shape whether or not
    it had data (a rank with no eval rows computes no terms, but still reduces zeros)."""
    extra = (("center", "pairs"),) if settings.center_rewards_coefficient else ()
    return LOSSES[settings.name].terms + extra


STAT_KEYS = ("pairs", "correct", "chosen_rewards", "rejected_rewards", "reward_margin")
