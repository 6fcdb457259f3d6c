"""Variable-length attention over packed rows, registered with transformers' ``AttentionInterface``.

A packed row is a list of ``AttentionBlock``s (see ``ray_rm.data.packer``): each block's queries
attend causally to themselves and, for prompt-shared suffixes, fully to their group's prompt span.
Attention cost then grows with each block's length instead of the whole row's (GUIDE §2 measures the
whole-row masked form losing 26-45% of throughput on CPU).

Backends, chosen in one place (``AttentionPlan.backend``):
  * ``flash``: CUDA + flash-attn: one ``flash_attn_varlen_func`` call; prompt-shared suffixes get
    their prompt's keys gathered in front and flash-attn's bottom-right causal alignment.
  * ``sdpa_blocks``: everything else: blocks bucketed by similar length, one SDPA call per bucket
    (right-padding is harmless under causal masking; prefix blocks carry an explicit mask).
The dense ``[1, 1, T, T]`` mask of ``dense_block_mask`` is the reference used with plain SDPA/eager.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ray_rm.data.packer import AttentionBlock

ATTN_NAME = "ray_rm_varlen"
_BUCKET_SLACK = 1.15  # a bucket may cost up to 15% more attention work than its blocks alone


def flash_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class _Bucket:
    q_index: torch.Tensor  # [n, Lq] row positions of queries (padded with a valid position)
    kv_index: torch.Tensor  # [n, Lk]
    valid: torch.Tensor  # [n, Lq] real queries
    mask: torch.Tensor | None  # [n, 1, Lq, Lk] bool, None = plain causal (or no mask for encoders)


@dataclass
class AttentionPlan:
    """Index tensors for one packed row, built once per micro-batch and reused by every layer."""

    blocks: list
    total: int
    causal: bool = True
    backend: str = "sdpa_blocks"
    buckets: list = field(default_factory=list)
    flash: dict = field(default_factory=dict)
    sp: object = None  # a SequenceParallelContext when Ulysses SP is on

    @classmethod
    def build(cls, blocks: list[AttentionBlock], total: int, device, causal: bool = True,
              backend: str = "auto") -> "AttentionPlan":
        if backend == "auto":
            backend = "flash" if (device.type == "cuda" and flash_available()) else "sdpa_blocks"
        plan = cls(blocks, total, causal, backend)
        if backend == "flash":
            plan.flash = _flash_indices(blocks, device)
        else:
            plan.buckets = _make_buckets(blocks, total, causal, device)
        return plan


def _bucketize(blocks: list[AttentionBlock]) -> list[list[AttentionBlock]]:
    """Group blocks of similar size so that padding adds at most ~15% attention work."""
    ordered = sorted(blocks, key=lambda b: -(b.length + b.prefix_len))
    buckets, current, cost = [], [], 0
    for b in ordered:
        span = b.prefix_len + b.length
        trial = current + [b]
        lq = max(x.length for x in trial)
        lk = max(x.prefix_len for x in trial) + lq
        if current and len(trial) * lq * lk > _BUCKET_SLACK * (cost + b.length * span) + 64 * 64:
            buckets.append(current)
            current, cost = [b], b.length * span
        else:
            current, cost = trial, cost + b.length * span
    if current:
        buckets.append(current)
    return buckets


def _make_buckets(blocks, total, causal, device) -> list[_Bucket]:
    out = []
    plain = [b for b in blocks if b.prefix_len == 0]
    prefixed = [b for b in blocks if b.prefix_len > 0]
    for group, has_prefix in ((plain, False), (prefixed, True)):
        for bucket in _bucketize(group):
            lq = max(b.length for b in bucket)
            lp = max(b.prefix_len for b in bucket)
            q_index = torch.zeros(len(bucket), lq, dtype=torch.long)
            kv_index = torch.zeros(len(bucket), lp + lq, dtype=torch.long)
            valid = torch.zeros(len(bucket), lq, dtype=torch.bool)
            key_ok = torch.zeros(len(bucket), lp + lq, dtype=torch.bool)
            for i, b in enumerate(bucket):
                own = torch.arange(b.start, b.start + b.length)
                q_index[i, : b.length] = own
                q_index[i, b.length:] = b.start  # padding reads a real position; its output is discarded
                kv_index[i, :b.prefix_len] = torch.arange(b.prefix_start, b.prefix_start + b.prefix_len)
                kv_index[i, b.prefix_len:lp] = b.start
                kv_index[i, lp:lp + b.length] = own
                kv_index[i, lp + b.length:] = b.start
                valid[i, : b.length] = True
                key_ok[i, : b.prefix_len] = True
                key_ok[i, lp:lp + b.length] = True
            mask = None
            if has_prefix or not causal:
                rows = torch.arange(lq)[:, None]
                cols = torch.arange(lp + lq)[None, :]
                allowed = key_ok[:, None, :].expand(-1, lq, -1).clone()
                if causal:
                    allowed &= (cols < lp) | (cols - lp <= rows)
                mask = allowed[:, None]
            out.append(_Bucket(q_index.to(device), kv_index.to(device), valid.to(device),
                               None if mask is None else mask.to(device)))
    return out


def _flash_indices(blocks, device) -> dict:
    """cu_seqlens for one varlen call; keys of prefixed blocks are [prompt span; own span]."""
    kv_parts, cu_q, cu_k = [], [0], [0]
    for b in blocks:
        if b.prefix_len:
            kv_parts.append(torch.arange(b.prefix_start, b.prefix_start + b.prefix_len))
        kv_parts.append(torch.arange(b.start, b.start + b.length))
        cu_q.append(cu_q[-1] + b.length)
        cu_k.append(cu_k[-1] + b.prefix_len + b.length)
    shared = any(b.prefix_len for b in blocks)
    return {
        "kv_index": torch.cat(kv_parts).to(device) if shared else None,
        "cu_q": torch.tensor(cu_q, dtype=torch.int32, device=device),
        "cu_k": torch.tensor(cu_k, dtype=torch.int32, device=device),
        "max_q": max(b.length for b in blocks),
        "max_k": max(b.length + b.prefix_len for b in blocks),
    }


def _sdpa_blocks(plan: AttentionPlan, q, k, v, scaling):
    """q: [1, H, T, D], k/v: [1, Hkv, T, D] -> [1, H, T, D]."""
    out = q.new_zeros(q.shape[1:])  # [H, T, D]
    gqa = q.shape[1] != k.shape[1]
    for b in plan.buckets:
        qb = q[0][:, b.q_index].transpose(0, 1)  # [n, H, Lq, D]
        kb = k[0][:, b.kv_index].transpose(0, 1)
        vb = v[0][:, b.kv_index].transpose(0, 1)
        ob = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=b.mask, is_causal=b.mask is None and plan.causal,
                                            scale=scaling, enable_gqa=gqa)
        ob = ob.transpose(0, 1)  # [H, n, Lq, D]
        out[:, b.q_index[b.valid]] = ob[:, b.valid]
    return out.unsqueeze(0)


def _flash(plan: AttentionPlan, q, k, v, scaling):
    from flash_attn import flash_attn_varlen_func

    f = plan.flash
    qf = q[0].transpose(0, 1)  # [T, H, D]
    kf, vf = k[0].transpose(0, 1), v[0].transpose(0, 1)
    if f["kv_index"] is not None:
        kf, vf = kf[f["kv_index"]], vf[f["kv_index"]]
    out = flash_attn_varlen_func(qf, kf, vf, f["cu_q"], f["cu_k"], f["max_q"], f["max_k"], dropout_p=0.0,
                                 softmax_scale=scaling, causal=plan.causal)
    return out.transpose(0, 1).unsqueeze(0)


def block_attention(plan: AttentionPlan, q, k, v, scaling):
    """Attention of a whole packed row under ``plan``; q/k/v in [1, heads, T, D] layout."""
    if plan.backend == "flash":
        return _flash(plan, q, k, v, scaling)
    return _sdpa_blocks(plan, q, k, v, scaling)


def ray_rm_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The function transformers calls per layer; returns ``[1, T, H, D]`` like its own backends."""
    plan: AttentionPlan | None = kwargs.pop("ray_rm_plan", None)
    if plan is None:  # called outside ray_rm (plain, unpacked input): behave exactly like transformers' SDPA
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if plan.sp is not None:
        out = plan.sp.attention(plan, query, key, value, scaling)
    else:
        out = block_attention(plan, query, key, value, scaling)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, ray_rm_attention_forward)


def dense_block_mask(blocks: list[AttentionBlock], total: int, causal: bool = True) -> torch.Tensor:
    """The reference ``[1, 1, T, T]`` boolean mask (True = may attend) for SDPA/eager."""
    mask = torch.zeros(total, total, dtype=torch.bool)
    for b in blocks:
        own = slice(b.start, b.start + b.length)
        block = torch.ones(b.length, b.length, dtype=torch.bool)
        mask[own, own] = torch.tril(block) if causal else block
        if b.prefix_len:
            mask[own, b.prefix_start:b.prefix_start + b.prefix_len] = True
    return mask[None, None]
