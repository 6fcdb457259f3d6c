"""Ulysses sequence parallelism: S workers share one packed row, each holding T/S of its tokens.

Embeddings, MLPs and norms run on the local tokens. Around attention, an all-to-all turns
sequence-sharded q/k/v ``[1, H, T/S, D]`` into head-sharded ``[1, H/S, T, D]`` so each rank attends
over the whole row (with the same block plan) for its heads, then a second all-to-all turns the
output back. With fewer kv heads than S (GQA), kv heads are replicated up to S first.

Rewards live on the rank that holds their token: each rank computes the value head for its own reward
positions, and an all-reduce (identity in backward, since every rank computes the same loss) gives all
ranks all rewards. Param gradients on each rank are then partial sums over its tokens; the train loop
scales the loss so DeepSpeed's average over all W ranks equals the full gradient (see train/step.py).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class _AllToAll(torch.autograd.Function):
    """Forward: seq->head (or head->seq) exchange; backward: the inverse exchange."""

    @staticmethod
    def forward(ctx, x, group, size, to_heads: bool):
        ctx.group, ctx.size, ctx.to_heads = group, size, to_heads
        return _seq_to_head(x, group, size) if to_heads else _head_to_seq(x, group, size)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        back = _head_to_seq(grad, ctx.group, ctx.size) if ctx.to_heads else _seq_to_head(grad, ctx.group, ctx.size)
        return back, None, None, None


def _seq_to_head(x: torch.Tensor, group, size: int) -> torch.Tensor:
    b, h, tl, d = x.shape
    chunks = x.reshape(b, size, h // size, tl, d).permute(1, 0, 2, 3, 4).contiguous()  # [S, b, H/S, Tl, D]
    out = torch.empty_like(chunks)
    dist.all_to_all_single(out, chunks, group=group)  # out[j]: my heads of rank j's token shard
    return out.permute(1, 2, 0, 3, 4).reshape(b, h // size, size * tl, d)


def _head_to_seq(y: torch.Tensor, group, size: int) -> torch.Tensor:
    b, hs, t, d = y.shape
    tl = t // size
    chunks = y.reshape(b, hs, size, tl, d).permute(2, 0, 1, 3, 4).contiguous()  # [S, b, H/S, Tl, D]
    out = torch.empty_like(chunks)
    dist.all_to_all_single(out, chunks, group=group)  # out[j]: rank j's heads of my token shard
    return out.permute(1, 0, 2, 3, 4).reshape(b, size * hs, tl, d)


class _SumAcrossRanks(torch.autograd.Function):
    """All-reduce sum forward; identity backward (each rank backprops the same loss into its own part)."""

    @staticmethod
    def forward(ctx, x, group):
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _GatherTokens(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, size, rank):
        ctx.rank, ctx.local = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        return grad[ctx.rank * ctx.local:(ctx.rank + 1) * ctx.local], None, None, None


class SequenceParallelContext:
    """One worker's view of its SP group: shards rows, wraps attention, gathers rewards."""

    def __init__(self, group, size: int, rank: int):
        self.group, self.size, self.rank = group, size, rank
        self.total = 0

    @staticmethod
    def create_groups(world_size: int, sp_size: int, world_rank: int) -> "SequenceParallelContext":
        """Every rank must call this (new_group is collective); ranks [g*S, (g+1)*S) form group g."""
        if world_size % sp_size:
            raise ValueError(f"train.num_workers ({world_size}) must be a multiple of "
                             f"train.sequence_parallel_size ({sp_size})")
        mine = None
        for g in range(world_size // sp_size):
            ranks = list(range(g * sp_size, (g + 1) * sp_size))
            group = dist.new_group(ranks)
            if world_rank in ranks:
                mine = group
        return SequenceParallelContext(mine, sp_size, world_rank % sp_size)

    def check_model(self, config) -> None:
        heads = config.num_attention_heads
        kv = getattr(config, "num_key_value_heads", heads) or heads
        if heads % self.size:
            raise ValueError(f"sequence parallelism needs num_attention_heads ({heads}) divisible by "
                             f"train.sequence_parallel_size ({self.size})")
        if kv % self.size and self.size % kv:
            raise ValueError(f"num_key_value_heads ({kv}) and train.sequence_parallel_size ({self.size}) must "
                             "divide one another")

    def bounds(self) -> tuple[int, int]:
        local = self.total // self.size
        return self.rank * local, (self.rank + 1) * local

    def shard(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a [1, T] tensor (T must be a multiple of S: the collate pads it)."""
        self.total = t.shape[1]
        if self.total % self.size:
            raise ValueError(f"row length {self.total} is not a multiple of the SP size {self.size}")
        lo, hi = self.bounds()
        return t[:, lo:hi]

    def attention(self, plan, q, k, v, scaling):
        from ray_rm.model.attention import block_attention

        kv = k.shape[1]
        if kv % self.size:
            k = k.repeat_interleave(self.size // kv, dim=1)
            v = v.repeat_interleave(self.size // kv, dim=1)
        qh = _AllToAll.apply(q.contiguous(), self.group, self.size, True)
        kh = _AllToAll.apply(k.contiguous(), self.group, self.size, True)
        vh = _AllToAll.apply(v.contiguous(), self.group, self.size, True)
        out = block_attention(plan, qh, kh, vh, scaling)
        return _AllToAll.apply(out.contiguous(), self.group, self.size, False)

    def gather_rewards(self, head_fn, index: torch.Tensor) -> torch.Tensor:
        """All rewards on every rank; ``head_fn(local positions)`` computes those whose token is local."""
        lo, hi = self.bounds()
        mine = (index >= lo) & (index < hi)
        local = head_fn(index[mine] - lo)
        full = torch.zeros(index.shape[0], dtype=local.dtype, device=local.device)
        full = full.index_put((mine.nonzero(as_tuple=True)[0],), local)
        return _SumAcrossRanks.apply(full, self.group)

    def gather_tokens(self, values: torch.Tensor) -> torch.Tensor:
        return _GatherTokens.apply(values, self.group, self.size, self.rank)
