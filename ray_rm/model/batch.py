"""Tensors for one packed row: what the reward model and the losses consume.

One micro-batch is one packed row (batch dimension 1): the token budget, not a pair count, bounds
memory. Sequence parallelism pads the row to a multiple of its size with a separate, unread block.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ray_rm.data.packer import AttentionBlock, PackedRow, attention_blocks


@dataclass
class ModelBatch:
    input_ids: torch.Tensor  # [1, T]
    position_ids: torch.Tensor  # [1, T]
    blocks: list  # AttentionBlocks over [0, T)
    reward_index: torch.Tensor  # [N] row position of each sequence's reward token
    seq_start: torch.Tensor  # [N] row position of each sequence's first token laid out in the row
    own_start: torch.Tensor  # [N] row position of the first token after the group's common prefix
    seq_lens: torch.Tensor  # [N] tokens laid out per sequence
    seq_full_lens: torch.Tensor  # [N]
    seq_group: torch.Tensor  # [N]
    seq_ranks: torch.Tensor  # [N]
    seq_scores: torch.Tensor  # [N] float, NaN = none
    group_sizes: torch.Tensor  # [G]
    group_common_lens: torch.Tensor  # [G]
    group_margins: torch.Tensor  # [G] float, NaN = none
    group_ids: list  # [G] example ids
    num_real_tokens: int  # tokens before sequence-parallel padding

    @property
    def num_sequences(self) -> int:
        return int(self.reward_index.numel())

    @property
    def num_groups(self) -> int:
        return len(self.group_ids)

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
            pos += row.seq_lens[seq]
            seq += 1
    long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return ModelBatch(
        input_ids=long(input_ids)[None], position_ids=long(position_ids)[None], blocks=blocks,
        reward_index=long(row.reward_index), seq_start=long(seq_start), own_start=long(own_start),
        seq_lens=long(row.seq_lens), seq_full_lens=long(row.seq_full_lens), seq_group=long(row.seq_group),
        seq_ranks=long(row.seq_ranks), seq_scores=torch.tensor(row.seq_scores, dtype=torch.float32),
        group_sizes=long(row.group_sizes), group_common_lens=long(row.group_common_lens),
        group_margins=torch.tensor(row.group_margins, dtype=torch.float32), group_ids=list(row.group_ids),
        num_real_tokens=real,
    )
