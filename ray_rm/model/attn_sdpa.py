"""The portable attention kernel (``sdpa_blocks``): torch's SDPA (or explicit math) per bucket of similar blocks.

It must not know about Ray, DeepSpeed or packing, nor choose a backend (``attention.py`` registers and picks
it); it reads a row's ``AttentionBlock``s and one layer's ``LayerOptions`` only.

The portable backend: any device, any dtype, and every per-layer option transformers passes
(sliding window, logit soft-capping, attention sinks, dropout). Blocks are bucketed by size so that
right-padding adds at most ~15% attention work; padded queries are discarded and padded keys masked.

Masks are built from *logical* positions (a prompt-shared suffix continues its prompt's positions), so
a sliding window means the same thing here as in the model run on each sequence alone: a query at
position p sees keys at positions (p - window, p]. Soft-capping and sinks are not expressible in SDPA,
so buckets then run the math (the same formula as transformers' eager attention).

Pure torch: imports neither Ray nor DeepSpeed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # the options type lives with the dispatcher, which imports this kernel
    from ray_rm.model.attention import LayerOptions

_BUCKET_SLACK = 1.15  # a bucket may cost up to 15% more attention work than its blocks alone


@dataclass
class _Bucket:
    q_index: torch.Tensor  # [n, Lq] row positions of queries (padded with a valid position)
    kv_index: torch.Tensor  # [n, Lk]
    valid: torch.Tensor  # [n, Lq] real queries
    q_pos: torch.Tensor  # [n, Lq] logical positions of the queries
    k_pos: torch.Tensor  # [n, Lk] logical positions of the keys
    key_ok: torch.Tensor  # [n, Lk] real keys
    dest: torch.Tensor  # [V] row positions of the real queries
    src: torch.Tensor  # [V] their flat positions in the bucket's [n * Lq] output
    plain: bool  # causal blocks without a prefix: SDPA's is_causal does it all
    masks: dict = field(default_factory=dict)  # window -> [n, 1, Lq, Lk] bool (None = use is_causal)


def bucketize(blocks: list) -> list[list]:
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


def make_buckets(blocks: list, causal: bool, device) -> list[_Bucket]:
    out = []
    plain = [b for b in blocks if b.prefix_len == 0]
    prefixed = [b for b in blocks if b.prefix_len > 0]
    for group in (plain, prefixed):
        for bucket in bucketize(group):
            out.append(_bucket(bucket, causal, device))
    return out


def _bucket(bucket: list, causal: bool, device) -> _Bucket:
    n, lq, lp = len(bucket), max(b.length for b in bucket), max(b.prefix_len for b in bucket)
    q_index = torch.zeros(n, lq, dtype=torch.long)
    kv_index = torch.zeros(n, lp + lq, dtype=torch.long)
    q_pos = torch.zeros(n, lq, dtype=torch.long)
    k_pos = torch.zeros(n, lp + lq, dtype=torch.long)
    valid = torch.zeros(n, lq, dtype=torch.bool)
    key_ok = torch.zeros(n, lp + lq, dtype=torch.bool)
    for i, b in enumerate(bucket):
        own = torch.arange(b.start, b.start + b.length)
        q_index[i, :b.length] = own
        q_index[i, b.length:] = b.start  # padding reads a real position; its output is discarded
        kv_index[i, :b.prefix_len] = torch.arange(b.prefix_start, b.prefix_start + b.prefix_len)
        kv_index[i, b.prefix_len:lp] = b.start
        kv_index[i, lp:lp + b.length] = own
        kv_index[i, lp + b.length:] = b.start
        q_pos[i] = b.prefix_len + torch.arange(lq)
        k_pos[i, :lp] = torch.arange(lp)
        k_pos[i, lp:] = b.prefix_len + torch.arange(lq)
        valid[i, :b.length] = True
        key_ok[i, :b.prefix_len] = True
        key_ok[i, lp:lp + b.length] = True
    # Scatter indices computed here: selecting by the boolean mask on the device would wait for the host.
    dest, src = q_index[valid], valid.flatten().nonzero().squeeze(1)
    tensors = [t.to(device, non_blocking=True) for t in (q_index, kv_index, valid, q_pos, k_pos, key_ok, dest, src)]
    return _Bucket(*tensors, plain=causal and lp == 0)


def _mask(b: _Bucket, causal: bool, window: int | None) -> torch.Tensor | None:
    """[n, 1, Lq, Lk] True = may attend, or None when SDPA's own causal mask is exact."""
    if b.plain and window is None:
        return None
    if window not in b.masks:
        qp, kp = b.q_pos[:, :, None], b.k_pos[:, None, :]
        allowed = b.key_ok[:, None, :].expand(-1, qp.shape[1], -1)
        if causal:
            allowed = allowed & (kp <= qp)
        if window is not None:
            allowed = allowed & (kp > qp - window) if causal else allowed & ((kp - qp).abs() < window)
        # A padded query must see some key, or softmax over nothing is NaN and poisons the backward.
        allowed = allowed | ~b.valid[:, :, None]
        b.masks[window] = allowed[:, None]
    return b.masks[window]


def _math(qb, kb, vb, mask, scaling: float, opts: LayerOptions, training: bool) -> torch.Tensor:
    """Eager attention (transformers' formula): scores, soft-cap, mask, sinks, fp32 softmax, dropout."""
    if kb.shape[1] != qb.shape[1]:
        rep = qb.shape[1] // kb.shape[1]
        kb, vb = kb.repeat_interleave(rep, dim=1), vb.repeat_interleave(rep, dim=1)
    scores = torch.matmul(qb, kb.transpose(-1, -2)) * scaling
    if opts.softcap:
        scores = opts.softcap * torch.tanh(scores / opts.softcap)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    if opts.sinks is not None:
        sink = opts.sinks.to(scores.dtype).reshape(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        scores = torch.cat([scores, sink], dim=-1)
    probs = torch.softmax(scores.float(), dim=-1).to(vb.dtype)
    if opts.sinks is not None:
        probs = probs[..., :-1]
    if opts.dropout and training:
        probs = F.dropout(probs, p=opts.dropout, training=True)
    return torch.matmul(probs, vb)


def sdpa_blocks(buckets: list[_Bucket], causal: bool, q, k, v, scaling: float, opts: LayerOptions,
                training: bool = False) -> torch.Tensor:
    """q: [1, H, T, D], k/v: [1, Hkv, T, D] -> [1, H, T, D]."""
    out = q.new_zeros(q.shape[1:])  # [H, T, D]
    gqa = q.shape[1] != k.shape[1]
    explicit = bool(opts.softcap) or opts.sinks is not None
    for b in buckets:
        qb = q[0][:, b.q_index].transpose(0, 1)  # [n, H, Lq, D]
        kb = k[0][:, b.kv_index].transpose(0, 1)
        vb = v[0][:, b.kv_index].transpose(0, 1)
        mask = _mask(b, causal, opts.window)
        if explicit:
            if mask is None:  # plain causal: the explicit form of is_causal
                mask = b.k_pos[:, None, None, :] <= b.q_pos[:, None, :, None]
            ob = _math(qb, kb, vb, mask, scaling, opts, training)
        else:
            ob = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, is_causal=mask is None and causal,
                                                dropout_p=opts.dropout if training else 0.0, scale=scaling,
                                                enable_gqa=gqa)
        ob = ob.transpose(0, 1).flatten(1, 2)  # [H, n * Lq, D]
        out[:, b.dest] = ob[:, b.src]
    return out.unsqueeze(0)
