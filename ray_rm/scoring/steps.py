"""Per-step scores from a process reward model (``model.head=prm``): the step scorer behind serve, relabel,
eval and the export check.

What this module is for: tokenizing (prompt, steps) items by the training rule (``data/step_layout.py``,
with the separator the checkpoint records), packing each prompt's solutions as one group with the
training packer (prompt laid out once) and returning each solution's step scores (logits) in input
order. What it must not do: import Ray, aggregate steps into one reward (``eval/prm_metrics.aggregate``),
or batch across requests.
"""
from __future__ import annotations

import math

import torch

from ray_rm.data.packer import TokenizedGroup, pack_groups
from ray_rm.data.step_layout import StepTokens, step_end_token_positions
from ray_rm.model.batch import collate_row
from ray_rm.prefix import common_prefix_len


def checkpoint_head(path: str) -> str:
    """The head kind a checkpoint records (``config.json`` ``ray_rm.head``; "scalar" for any other RM)."""
    from transformers import AutoConfig

    from ray_rm.assets import resolve_model_path

    meta = getattr(AutoConfig.from_pretrained(resolve_model_path(str(path))), "ray_rm", None) or {}
    return meta.get("head", "scalar")


def step_separator(scorer) -> str:
    """The checkpoint's step separator; a scalar reward model has none and cannot score steps."""
    sep = scorer.model.step_separator
    if scorer.model.head_kind.name != "prm" or sep is None:
        raise ValueError(f"'{scorer.model_path}' is not a process reward model (model.head=prm): it has no step "
                         "separator and scores whole sequences")
    return sep


def encode_steps(scorer, items: list[tuple]) -> list[StepTokens]:
    """``StepTokens`` for (prompt, steps) items: prompt text or (role, content) tuples, steps a list of strings."""
    sep = step_separator(scorer)
    template = scorer.meta.get("chat_template", "auto")
    template = "always" if template == "always" else "auto"
    return [step_end_token_positions(scorer.tokenizer, prompt, list(steps), sep, chat_template=template)
            for prompt, steps in items]


def _group(gid: int, solutions: list[StepTokens]) -> TokenizedGroup:
    seqs = [t.input_ids for t in solutions]
    k = len(seqs)
    return TokenizedGroup(str(gid), seqs, [0] * k, common_prefix_len(seqs, keep_own=1) if k > 1 else 0,
                          math.nan, [math.nan] * k, step_ends=[t.step_ends for t in solutions],
                          step_labels=[[math.nan] * len(t.step_ends) for t in solutions])


@torch.no_grad()
def score_step_groups(scorer, groups: list[list[StepTokens]]) -> list[list[list[float]]]:
    """Step scores for groups of solutions (e.g. the N candidates of one prompt): [group][solution][step]."""
    tgroups = [_group(gi, g) for gi, g in enumerate(groups)]
    out: list = [None] * len(groups)
    budget = max(scorer.pack_tokens, max((g.num_tokens(scorer.share_prompt) for g in tgroups), default=1))
    for row in pack_groups(tgroups, budget, scorer.share_prompt, window=len(tgroups) or 1):
        scores = scorer.model(collate_row(row, pad_token_id=scorer.pad_token_id).to(scorer.device)).rewards.tolist()
        per_seq: list[list[float]] = [[] for _ in row.seq_group]
        for s, seq in zip(scores, row.step_seq):
            per_seq[seq].append(s)
        k = 0
        for gid, size in zip(row.group_ids, row.group_sizes):
            out[int(gid)] = per_seq[k:k + size]
            k += size
    return out


def score_steps(scorer, items: list[tuple]) -> list[list[float]]:
    """Step scores of (prompt, steps) items, each scored on its own (no grouping)."""
    return [g[0] for g in score_step_groups(scorer, [[t] for t in encode_steps(scorer, items)])]


@torch.no_grad()
def score_token_groups(scorer, groups: list[list[list[int]]]) -> list[list[list[float]]]:
    """The head's score at every token of every sequence: [group][sequence][position].

    What the serve batcher runs for a process reward model: a sequence's token scores depend on its ids
    alone, so identical sequences and shared prefixes from different requests are computed once (as for
    scalar rewards), and each request then reads its own step ends (``pick_steps``)."""
    tgroups = [TokenizedGroup(str(gi), [list(s) for s in seqs], [0] * len(seqs),
                              common_prefix_len(seqs, keep_own=1) if len(seqs) > 1 else 0, math.nan,
                              [math.nan] * len(seqs)) for gi, seqs in enumerate(groups)]
    out: list = [None] * len(groups)
    budget = max(scorer.pack_tokens, max((g.num_tokens(scorer.share_prompt) for g in tgroups), default=1))
    for row in pack_groups(tgroups, budget, scorer.share_prompt, window=len(tgroups) or 1):
        values = scorer.model(collate_row(row, pad_token_id=scorer.pad_token_id).to(scorer.device),
                              token_values=True).token_values.tolist()
        pos, seq = 0, 0
        for gid, size, prefix in zip(row.group_ids, row.group_sizes, row.group_prefix_lens):
            shared = values[pos:pos + prefix]
            pos += prefix
            per_seq = []
            for _ in range(size):
                n = row.seq_laid_out_lens[seq]
                per_seq.append(shared + values[pos:pos + n])
                pos += n
                seq += 1
            out[int(gid)] = per_seq
    return out


def pick_steps(token_scores: list[float], tokens: StepTokens) -> list[float]:
    """A solution's step scores from its per-token scores."""
    return [token_scores[e] for e in tokens.step_ends]
