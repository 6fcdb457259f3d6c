"""Tensors for one packed row: what the reward model and the losses consume, and the row's attention layout.

It must not run the model, compute a loss, or pack (the row arrives laid out by ``data/packer.py``).

One micro-batch is one packed row (batch dimension 1): the token budget, not a pair count, bounds
memory. Sequence parallelism pads the row to a multiple of its size with a separate, unread block.

Everything a loss needs to index with (the (better, worse) pairs of each group, and the aligned token
positions of the token-divergence loss) is computed here, on the CPU, while the row is collated: the
losses then only gather on the device and never wait for the host (no ``.tolist()`` per micro-batch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from ray_rm.packed import PackedRow


@dataclass(frozen=True)
class AttentionBlock:
    """Queries [start, start+length) attend causally to themselves and fully to [prefix_start, +prefix_len)."""

    start: int
    length: int
    prefix_start: int = 0
    prefix_len: int = 0


def attention_blocks(row: PackedRow) -> list[AttentionBlock]:
    """The row's attention layout: a shared prefix is its own block, each suffix a block that also sees it."""
    blocks = []
    pos, seq = 0, 0
    for size, prefix in zip(row.group_sizes, row.group_prefix_lens):
        prefix_start = pos
        if prefix:
            blocks.append(AttentionBlock(pos, prefix))
            pos += prefix
        for _ in range(size):
            n = row.seq_laid_out_lens[seq]
            blocks.append(AttentionBlock(pos, n, prefix_start if prefix else 0, prefix))
            pos += n
            seq += 1
    return blocks


@dataclass
class ModelBatch:
    input_ids: torch.Tensor  # [1, T]
    position_ids: torch.Tensor  # [1, T]
    blocks: list  # AttentionBlocks over [0, T)
    reward_index: torch.Tensor  # [N] row position of each sequence's reward token
    seq_start: torch.Tensor  # [N] row position of each sequence's first token laid out in the row
    own_start: torch.Tensor  # [N] row position of the first token after the group's common prefix
    seq_laid_out_lens: torch.Tensor  # [N] tokens laid out per sequence (its suffix when the prefix is shared)
    seq_full_lens: torch.Tensor  # [N]
    seq_group: torch.Tensor  # [N]
    seq_ranks: torch.Tensor  # [N]
    seq_scores: torch.Tensor  # [N] float, NaN = none
    group_sizes: torch.Tensor  # [G]
    group_common_lens: torch.Tensor  # [G]
    group_margins: torch.Tensor  # [G] float, NaN = none
    group_ids: list  # [G] example ids
    num_real_tokens: int  # tokens before sequence-parallel padding
    num_scored: int  # sequences that carry a score
    num_sequences: int  # N, and the counts below: host ints, so the losses' unit counts never read the device
    num_groups: int  # G
    num_pairs: int  # P
    group_size_list: list  # [G] group sizes on the host (loops over groups never read the device)
    pair_better: torch.Tensor  # [P] sequence index of the better response of each ranked pair
    pair_worse: torch.Tensor  # [P]
    pair_margin: torch.Tensor  # [P] float: the row's margin (pairs) / score difference (k-way), 0 when none
    token_better: torch.Tensor  # [A] row positions of the aligned tokens of the better responses
    token_worse: torch.Tensor  # [A] the same offsets in the worse responses
    token_pair: torch.Tensor  # [A] pair each aligned token belongs to
    token_count: torch.Tensor  # [P] aligned tokens per pair (after the first differing token)
    seq_attributes: torch.Tensor | None = None  # [N, k] float ratings, NaN = none (attribute head; else [N, 0])
    num_ratings: int = 0  # finite ratings in seq_attributes (the attribute loss's unit)
    # process reward models: one entry per step (empty for other heads)
    step_index: torch.Tensor | None = None  # [S] row position of each step's last token
    step_labels: torch.Tensor | None = None  # [S] float 1 / 0 / NaN (unlabelled)
    step_seq: torch.Tensor | None = None  # [S] sequence of each step
    num_labelled_steps: int = 0  # steps with a label (the "steps" unit of the step losses)

    def to(self, device) -> "ModelBatch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in moved.items():
            if isinstance(v, torch.Tensor):
                moved[k] = v.to(device, non_blocking=True)
        return ModelBatch(**moved)


def collate_row(row: PackedRow, pad_to_multiple: int = 1, pad_token_id: int = 0) -> ModelBatch:
    blocks = attention_blocks(row)
    input_ids = list(row.input_ids)
    position_ids = list(row.position_ids)
    real = len(input_ids)
    pad = (-real) % pad_to_multiple if pad_to_multiple > 1 else 0
    if pad:
        input_ids += [pad_token_id] * pad
        position_ids += list(range(pad))
        blocks = blocks + [AttentionBlock(real, pad)]
    seq_start, own_start = [], []
    pos, seq = 0, 0
    for g, (size, prefix) in enumerate(zip(row.group_sizes, row.group_prefix_lens)):
        common = row.group_common_lens[g]
        pos += prefix
        for _ in range(size):
            seq_start.append(pos)
            own_start.append(pos if prefix else pos + common)
            pos += row.seq_laid_out_lens[seq]
            seq += 1
    long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    better, worse, margin = ranked_pairs(row.seq_ranks, row.seq_scores, row.group_sizes, row.group_margins)
    aligned = aligned_tokens(better, worse, own_start, row.seq_full_lens,
                             [row.group_common_lens[g] for g in row.seq_group])
    return ModelBatch(
        input_ids=long(input_ids)[None], position_ids=long(position_ids)[None], blocks=blocks,
        reward_index=long(row.reward_index), seq_start=long(seq_start), own_start=long(own_start),
        seq_laid_out_lens=long(row.seq_laid_out_lens), seq_full_lens=long(row.seq_full_lens),
        seq_group=long(row.seq_group),
        seq_ranks=long(row.seq_ranks), seq_scores=torch.tensor(row.seq_scores, dtype=torch.float32),
        group_sizes=long(row.group_sizes), group_common_lens=long(row.group_common_lens),
        group_margins=torch.tensor(row.group_margins, dtype=torch.float32), group_ids=list(row.group_ids),
        num_real_tokens=real, num_scored=sum(1 for x in row.seq_scores if math.isfinite(x)),
        num_sequences=len(row.reward_index), num_groups=len(row.group_ids), num_pairs=len(better),
        group_size_list=list(row.group_sizes), pair_better=long(better), pair_worse=long(worse),
        pair_margin=torch.tensor(margin, dtype=torch.float32), **aligned, **_attribute_targets(row),
        step_index=long(row.step_index), step_labels=torch.tensor(row.step_labels, dtype=torch.float32),
        step_seq=long(row.step_seq), num_labelled_steps=sum(1 for x in row.step_labels if math.isfinite(x)),
    )


def _attribute_targets(row: PackedRow) -> dict:
    """The row's flattened ratings as [N, k] (k = 0 for rows without any), and how many are given."""
    n = len(row.reward_index)
    k = len(row.seq_attributes) // n if n else 0
    ratings = torch.tensor(row.seq_attributes, dtype=torch.float32).reshape(n, k)
    return {"seq_attributes": ratings, "num_ratings": int(torch.isfinite(ratings).sum())}


def ranked_pairs(ranks: list, scores: list, group_sizes: list, margins: list) -> tuple[list, list, list]:
    """All (better, worse) sequence pairs of every group, from ranks (ties form no pair), with margins."""
    better, worse, margin = [], [], []
    start = 0
    for g, size in enumerate(group_sizes):
        for i in range(start, start + size):
            for j in range(start, start + size):
                if ranks[i] < ranks[j]:
                    better.append(i)
                    worse.append(j)
                    m = margins[g] if size == 2 else scores[i] - scores[j]
                    margin.append(m if math.isfinite(m) else 0.0)
        start += size
    return better, worse, margin


def aligned_tokens(better: list, worse: list, own_start: list, full_lens: list, common_lens: list) -> dict:
    """Row positions of the token pairs the token-divergence loss compares.

    Pair p compares its responses token by token from the first differing token (the group's common
    prefix ends there) over the shorter response: ``min(len_b, len_w) - common`` offsets."""
    counts = [max(0, min(full_lens[b], full_lens[w]) - common_lens[b]) for b, w in zip(better, worse)]
    n = torch.tensor(counts, dtype=torch.long)
    pair = torch.repeat_interleave(torch.arange(len(counts)), n)
    offset = torch.arange(int(n.sum())) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
    starts = torch.tensor(own_start, dtype=torch.long)
    b_start = starts[torch.tensor(better, dtype=torch.long)] if better else starts[:0]
    w_start = starts[torch.tensor(worse, dtype=torch.long)] if worse else starts[:0]
    return {"token_better": b_start[pair] + offset, "token_worse": w_start[pair] + offset, "token_pair": pair,
            "token_count": n}
