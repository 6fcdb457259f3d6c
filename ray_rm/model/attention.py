"""Variable-length attention over packed rows, registered with transformers' ``AttentionInterface``.

A packed row is a list of ``AttentionBlock``s (see ``ray_rm.packed``): each block's queries
attend causally to themselves and, for prompt-shared suffixes, fully to their group's prompt span.
Attention cost then grows with each block's length instead of the whole row's (GUIDE §2 measures the
whole-row masked form losing 26-45% of throughput on CPU).

The kernel is chosen once per model (``attn_backends.select``: torch's varlen flash kernel or flash-attn
on CUDA, SDPA per bucket of blocks elsewhere); its index tensors are built once per row
(``AttentionPlan``) and reused by every layer. Each layer call passes the options transformers gives
it (sliding window, soft-capping, sinks, dropout): a layer whose options the chosen kernel cannot
express runs on ``sdpa_blocks`` instead (logged once), never silently without them. The dense
``[1, 1, T, T]`` mask of ``dense_block_mask`` is the reference used with plain SDPA/eager.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ray_rm.packed import AttentionBlock
from ray_rm.model.attn_backends import REGISTRY, flash_available, select  # noqa: F401 (re-exported)
from ray_rm.model.attn_blocks import LayerOptions

log = logging.getLogger(__name__)

ATTN_NAME = "ray_rm_varlen"
FALLBACK = "sdpa_blocks"
_warned: set = set()


@dataclass
class AttentionPlan:
    """Index tensors for one packed row, built once per micro-batch and reused by every layer."""

    blocks: list
    total: int
    causal: bool = True
    backend: str = FALLBACK
    prepared: dict = field(default_factory=dict)  # backend name -> its index data (the fallback built lazily)
    device: torch.device | None = None
    sp: object = None  # a SequenceParallelContext when Ulysses SP is on

    @classmethod
    def build(cls, blocks: list[AttentionBlock], total: int, device, causal: bool = True,
              backend: str = "auto") -> "AttentionPlan":
        device = torch.device(device)
        if backend == "auto":
            backend = select("auto", device.type, None)[0]
        plan = cls(blocks, total, causal, backend, device=device)
        plan.indices(backend)
        return plan

    @property
    def max_span(self) -> int:
        """The longest logical sequence of the row (prefix + own tokens): windows at least this long do nothing."""
        return max((b.prefix_len + b.length for b in self.blocks), default=0)

    def indices(self, backend: str):
        if backend not in self.prepared:
            self.prepared[backend] = REGISTRY[backend].prepare(self.blocks, self.causal, self.device)
        return self.prepared[backend]

    def for_layer(self, opts: LayerOptions, training: bool = False) -> "LayerPlan":
        if opts.window is not None and opts.window >= self.max_span:
            opts = LayerOptions(None, opts.softcap, opts.sinks, opts.dropout)  # the window cuts nothing here
        return LayerPlan(self, opts, training)


@dataclass
class LayerPlan:
    """A row's plan plus one layer's options: what ``block_attention`` runs (also under sequence parallelism)."""

    plan: AttentionPlan
    opts: LayerOptions
    training: bool = False

    def backend_for(self, dtype: torch.dtype) -> str:
        name = self.plan.backend
        needs = self.opts.needs() if self.training else self.opts.needs() - {"dropout"}
        reason = REGISTRY[name].refusal(self.plan.device.type, dtype, needs)
        if reason is None:
            return name
        if (name, reason) not in _warned:
            _warned.add((name, reason))
            log.warning("attention: %s %s; these layers run on %s", name, reason, FALLBACK)
        return FALLBACK


def block_attention(plan, q, k, v, scaling):
    """Attention of a whole packed row under ``plan`` (an AttentionPlan or a LayerPlan); q/k/v [1, heads, T, D]."""
    layer = plan if isinstance(plan, LayerPlan) else LayerPlan(plan, LayerOptions())
    name = layer.backend_for(q.dtype)
    prepared = layer.plan.indices(name)
    return REGISTRY[name].run(prepared, layer.plan.causal, q, k, v, scaling, layer.opts, layer.training)


def ray_rm_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                             sliding_window=None, softcap=None, s_aux=None, **kwargs):
    """The function transformers calls per layer; returns ``[1, T, H, D]`` like its own backends."""
    plan: AttentionPlan | None = kwargs.pop("ray_rm_plan", None)
    if plan is None:  # called outside ray_rm (plain, unpacked input): transformers' SDPA kernel. transformers
        # builds no mask for a custom attention name, so this is causal attention over the whole input: right
        # for unpadded or right-padded sequences (pads come after every real token), wrong for left padding.
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      sliding_window=sliding_window, softcap=softcap, s_aux=s_aux, **kwargs)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if s_aux is not None and plan.sp is not None:
        raise ValueError("attention sinks (s_aux) are not supported with sequence parallelism; "
                         "set train.sequence_parallel_size=1 for this model")
    opts = LayerOptions(window=sliding_window, softcap=softcap, sinks=s_aux, dropout=float(dropout or 0.0))
    layer = plan.for_layer(opts, training=module.training)
    if plan.sp is not None:
        out = plan.sp.attention(layer, query, key, value, scaling)
    else:
        out = block_attention(layer, query, key, value, scaling)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, ray_rm_attention_forward)


def dense_block_mask(blocks: list[AttentionBlock], total: int, causal: bool = True,
                     window: int | None = None) -> torch.Tensor:
    """The reference ``[1, 1, T, T]`` boolean mask (True = may attend) for SDPA/eager.

    ``window``: also drop keys whose logical position is ``window`` or more before the query's."""
    mask = torch.zeros(total, total, dtype=torch.bool)
    pos = torch.zeros(total, dtype=torch.long)
    for b in blocks:
        own = slice(b.start, b.start + b.length)
        block = torch.ones(b.length, b.length, dtype=torch.bool)
        mask[own, own] = torch.tril(block) if causal else block
        pos[own] = b.prefix_len + torch.arange(b.length)
        if b.prefix_len:
            mask[own, b.prefix_start:b.prefix_start + b.prefix_len] = True
            pos[b.prefix_start:b.prefix_start + b.prefix_len] = torch.arange(b.prefix_len)
    if window is not None:
        dist = pos[:, None] - pos[None, :]
        mask &= (dist < window) if causal else (dist.abs() < window)
    return mask[None, None]
