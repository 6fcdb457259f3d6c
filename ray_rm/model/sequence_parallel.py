"""Ulysses sequence parallelism: S workers share one packed row, each holding T/S of its tokens.

Embeddings, MLPs and norms run on the local tokens. Around attention, an all-to-all turns
sequence-sharded q/k/v ``[1, H, T/S, D]`` into head-sharded ``[1, h_r, T, D]`` so each rank attends
over the whole row (with the same block plan) for its heads, then a second all-to-all turns the
output back. Any head count works (``HeadSplit``): when S does not divide H, ranks get
``ceil(H/S)`` or ``floor(H/S)`` query heads (all_to_all with uneven split sizes; SmolLM2's 9 heads at
S=2 -> 5 + 4), and each rank receives exactly the kv heads its query heads read (GQA), expanded
locally only when its query heads do not map onto whole kv groups. The cost of an uneven split is
the busiest rank's extra head: bench/sp_uneven_heads.py measures it.

Rewards live on the rank that holds their token: each rank computes the value head for its own reward
positions, and an all-reduce (identity in backward, since every rank computes the same loss) gives all
ranks all rewards. Param gradients on each rank are then partial sums over its tokens; the train loop
scales the loss so DeepSpeed's average over all W ranks equals the full gradient (see train/step.py).
This module must not know about packing or losses: it only moves tensors between the ranks of a group.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


class _AllToAllV(torch.autograd.Function):
    """Dim-0 all-to-all with per-rank split sizes; backward is the same exchange with sizes swapped."""

    @staticmethod
    def forward(ctx, x, send: tuple, recv: tuple, group):
        ctx.send, ctx.recv, ctx.group = send, recv, group
        out = x.new_empty((sum(recv),) + tuple(x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), output_split_sizes=list(recv), input_split_sizes=list(send),
                               group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        back = grad.new_empty((sum(ctx.send),) + tuple(grad.shape[1:]))
        dist.all_to_all_single(back, grad.contiguous(), output_split_sizes=list(ctx.send),
                               input_split_sizes=list(ctx.recv), group=ctx.group)
        return back, None, None, None


@dataclass(frozen=True)
class HeadSplit:
    """Which query heads and kv heads each of the S ranks attends for (contiguous, balanced blocks)."""

    heads: int
    kv_heads: int
    size: int

    @property
    def counts(self) -> list[int]:
        base, extra = divmod(self.heads, self.size)
        return [base + (r < extra) for r in range(self.size)]

    def q_range(self, rank: int) -> tuple[int, int]:
        lo = sum(self.counts[:rank])
        return lo, lo + self.counts[rank]

    def kv_range(self, rank: int) -> tuple[int, int]:
        """The kv heads read by this rank's query heads (GQA: query head h reads kv head h // group)."""
        group = self.heads // self.kv_heads
        lo, hi = self.q_range(rank)
        return lo // group, (hi - 1) // group + 1

    def kv_index(self, rank: int) -> torch.Tensor | None:
        """Local kv head of each local query head, or None when SDPA's GQA grouping already matches."""
        group = self.heads // self.kv_heads
        lo, hi = self.q_range(rank)
        kv_lo, kv_hi = self.kv_range(rank)
        index = torch.arange(lo, hi) // group - kv_lo
        n_kv = kv_hi - kv_lo
        if (hi - lo) % n_kv == 0 and torch.equal(index, torch.arange(n_kv).repeat_interleave((hi - lo) // n_kv)):
            return None
        return index


def check_heads(num_heads: int, num_kv_heads: int, sp_size: int) -> None:
    """Raise ValueError when ``sp_size`` ranks cannot share attention heads (more ranks than heads)."""
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise ValueError(f"num_attention_heads ({num_heads}) must be a multiple of num_key_value_heads "
                         f"({num_kv_heads})")
    if sp_size > num_heads:
        raise ValueError(f"train.sequence_parallel_size ({sp_size}) is larger than the model's "
                         f"num_attention_heads ({num_heads}): every rank needs at least one head")


def model_heads(config) -> tuple[int, int]:
    heads = int(config.num_attention_heads)
    return heads, int(getattr(config, "num_key_value_heads", None) or heads)


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
        """Every rank must call this (new_group is collective); ranks [g*S, (g+1)*S) form group g
        (``world_size`` is a multiple of ``sp_size``: ray_rm/validation.py)."""
        mine = None
        for g in range(world_size // sp_size):
            ranks = list(range(g * sp_size, (g + 1) * sp_size))
            group = dist.new_group(ranks)
            if world_rank in ranks:
                mine = group
        return SequenceParallelContext(mine, sp_size, world_rank % sp_size)

    def check_model(self, config) -> None:
        check_heads(*model_heads(config), self.size)

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
        """q ``[1, H, T/S, D]``, k/v ``[1, Hkv, T/S, D]`` (this rank's tokens, all heads) -> the same layout
        as q after attending over the whole row for this rank's heads."""
        from ray_rm.model.attention import block_attention

        split = HeadSplit(q.shape[1], k.shape[1], self.size)
        qh = self._to_heads(q, [split.q_range(r) for r in range(self.size)])
        kv_ranges = [split.kv_range(r) for r in range(self.size)]
        kh, vh = self._to_heads(k, kv_ranges), self._to_heads(v, kv_ranges)
        index = split.kv_index(self.rank)
        if index is not None:  # query heads straddle kv groups: give each query head its own kv copy
            index = index.to(kh.device)
            kh, vh = kh.index_select(1, index), vh.index_select(1, index)
        out = block_attention(plan, qh, kh, vh, scaling)
        return self._to_tokens(out, split.counts)

    def _to_heads(self, x: torch.Tensor, ranges: list[tuple[int, int]]) -> torch.Tensor:
        """[b, H, Tl, D] local tokens of all heads -> [b, h_mine, S*Tl, D] all tokens of my heads."""
        b, _, tl, d = x.shape
        chunks = [x[:, lo:hi] for lo, hi in ranges]  # ranges may overlap (kv heads shared by two ranks)
        send = torch.cat(chunks, dim=1).permute(1, 0, 2, 3)  # [sum h_r, b, Tl, D], rank r's block r-th
        mine = ranges[self.rank][1] - ranges[self.rank][0]
        out = _AllToAllV.apply(send, tuple(hi - lo for lo, hi in ranges), (mine,) * self.size, self.group)
        return out.reshape(self.size, mine, b, tl, d).permute(2, 1, 0, 3, 4).reshape(b, mine, self.size * tl, d)

    def _to_tokens(self, y: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """[b, h_mine, T, D] -> [b, H, T/S, D]: the inverse of ``_to_heads`` for query-shaped tensors."""
        b, mine, t, d = y.shape
        tl = t // self.size
        send = y.reshape(b, mine, self.size, tl, d).permute(2, 1, 0, 3, 4).reshape(self.size * mine, b, tl, d)
        out = _AllToAllV.apply(send, (mine,) * self.size, tuple(counts), self.group)  # [H, b, Tl, D]
        return out.permute(1, 0, 2, 3)

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
