"""Variable-length attention over packed rows: the one place that decides how a row's attention runs.

What this module is for: the function transformers calls per layer (registered with its
``AttentionInterface``), the per-row plan its index tensors live in, and the small registry of kernels
with the rule that picks one. What it must not do: hold a kernel's arithmetic (``attn_sdpa.py``, the
portable one; ``attn_varlen.py``, the CUDA ones), build a row's blocks (``model/batch.py``), or import Ray
or DeepSpeed.

A packed row is a list of ``AttentionBlock``s: each block's queries attend causally to themselves and,
for prompt-shared suffixes, fully to their group's prompt span. Attention cost then grows with each
block's length instead of the whole row's (GUIDE §2 measures the whole-row masked form losing 26-45% of
throughput on CPU).

Each backend states where it runs (devices, dtypes), which per-layer options it honours (sliding window,
logit soft-capping, attention sinks, dropout), and whether it is usable here (with the reason when not).
``select`` returns the first of ``AUTO_ORDER`` that fits (torch's varlen flash kernel or flash-attn on
CUDA, ``sdpa_blocks`` elsewhere), noting why each one before it was passed over; an explicit request is
checked by the same rule and refused with its reason. Index tensors are built once per row
(``AttentionPlan``) and reused by every layer. A layer whose options the chosen kernel cannot express runs
on ``sdpa_blocks`` instead (logged once), never silently without them. The dense ``[1, 1, T, T]`` mask
of ``dense_block_mask`` is the reference used with plain SDPA/eager.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from ray_rm.model import attn_sdpa, attn_varlen
from ray_rm.model.batch import AttentionBlock

log = logging.getLogger(__name__)

ATTN_NAME = "ray_rm_varlen"
FALLBACK = "sdpa_blocks"
_warned: set = set()


@dataclass(frozen=True)
class LayerOptions:
    """What one attention layer asks for beyond q/k/v (transformers' attention-function kwargs)."""

    window: int | None = None  # sliding window: keys at positions > p - window
    softcap: float | None = None  # scores -> softcap * tanh(scores / softcap)
    sinks: torch.Tensor | None = None  # [H] attention-sink logits (gpt-oss): an extra softmax column
    dropout: float = 0.0

    def needs(self) -> set[str]:
        out = set()
        if self.window is not None:
            out.add("window")
        if self.softcap:
            out.add("softcap")
        if self.sinks is not None:
            out.add("sinks")
        if self.dropout:
            out.add("dropout")
        return out


HALF = (torch.bfloat16, torch.float16)
ALL_OPTIONS = frozenset({"window", "softcap", "sinks", "dropout"})


@dataclass(frozen=True)
class Backend:
    name: str
    devices: tuple | None  # None = any device
    dtypes: tuple | None  # None = any dtype
    honours: Callable[[], frozenset]  # per-layer options it implements (may depend on the installed API)
    unavailable: Callable[[], str | None]  # why it cannot run here, or None
    prepare: Callable  # (blocks, causal, device) -> index data, built once per row
    run: Callable  # (prepared, causal, q, k, v, scaling, LayerOptions, training) -> [1, H, T, D]

    def refusal(self, device_type: str, dtype: torch.dtype | None, needs: set) -> str | None:
        """Why this backend cannot run a model on ``device_type``/``dtype`` needing ``needs``; None if it can."""
        if self.devices is not None and device_type not in self.devices:
            return f"runs on {'/'.join(self.devices)} only, not {device_type}"
        if self.dtypes is not None and dtype is not None and dtype not in self.dtypes:
            return f"needs {' or '.join(str(d).removeprefix('torch.') for d in self.dtypes)}, not " \
                   f"{str(dtype).removeprefix('torch.')}"
        missing = set(needs) - self.honours()
        if missing:
            return f"cannot honour the model's {', '.join(sorted(missing))}"
        return self.unavailable()


REGISTRY: dict[str, Backend] = {}
AUTO_ORDER = ("torch_varlen", "flash_attn", "sdpa_blocks")


def register_backend(backend: Backend) -> None:
    REGISTRY[backend.name] = backend


def select(requested: str, device_type: str, dtype: torch.dtype | None, needs: set = frozenset()
           ) -> tuple[str | None, list[str]]:
    """(backend name or None, reasons for each backend passed over / refused)."""
    names = AUTO_ORDER if requested == "auto" else (requested,)
    notes = []
    for name in names:
        reason = REGISTRY[name].refusal(device_type, dtype, needs)
        if reason is None:
            return name, notes
        notes.append(f"{name}: {reason}")
    return None, notes


def model_needs(hf_config, training_dropout: bool = False) -> set:
    """Per-layer options a model's attention asks for, read from its config (checked again per call)."""
    needs = set()
    if getattr(hf_config, "attn_logit_softcapping", None):
        needs.add("softcap")
    if getattr(hf_config, "model_type", "") == "gpt_oss":  # learned attention sinks in every layer
        needs.add("sinks")
    if getattr(hf_config, "sliding_window", None) is not None:
        layer_types = getattr(hf_config, "layer_types", None) or []
        if not layer_types or "sliding_attention" in layer_types:
            needs.add("window")
    if training_dropout and float(getattr(hf_config, "attention_dropout", 0.0) or 0.0) > 0:
        needs.add("dropout")
    return needs


# The three backends, in AUTO_ORDER (a new kernel: one module with prepare/run, plus one line here).
register_backend(Backend("torch_varlen", ("cuda",), HALF, attn_varlen.torch_varlen_honours,
                         attn_varlen.torch_varlen_unavailable, attn_varlen.varlen_indices, attn_varlen.torch_varlen_run))
register_backend(Backend("flash_attn", ("cuda",), HALF, lambda: frozenset({"window", "softcap", "dropout"}),
                         attn_varlen.flash_attn_unavailable, attn_varlen.varlen_indices, attn_varlen.flash_attn_run))
register_backend(Backend("sdpa_blocks", None, None, lambda: ALL_OPTIONS, lambda: None,
                         attn_sdpa.make_buckets, attn_sdpa.sdpa_blocks))


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
