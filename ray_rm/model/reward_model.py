"""The reward model: a Hugging Face backbone plus a value head, run on packed rows.

What this module is for: one forward over a packed row (attention plan, pooling, head in fp32). What it
must not do: know which kind of head it carries beyond its ``HeadKind`` (``heads.py``), compute losses,
or import Ray or DeepSpeed.

The backbone and head are exactly the parts of ``AutoModelForSequenceClassification`` (``model`` +
``score`` for decoders, ``bert`` + pooler + ``classifier`` for encoders), so the export is a plain
HF checkpoint that reproduces ray_rm's rewards.

Decoders read the reward at each sequence's explicit reward position (its last token); encoders pool
the sequence's first token through the backbone's pooler (``cls``) or average its tokens (``mean``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ray_rm.model.attention import ATTN_NAME, AttentionPlan, dense_block_mask
from ray_rm.model.batch import ModelBatch
from ray_rm.model.heads import SCALAR, HeadKind


@dataclass
class RewardOutput:
    rewards: torch.Tensor  # float32 head outputs at the head kind's positions ([N], one per sequence, for scalar)
    token_values: torch.Tensor | None = None  # [T] float32 value-head output at every position
    attributes: torch.Tensor | None = None  # [N, k] attribute head: the attribute values (rewards = their w . a)
    attribute_stds: torch.Tensor | None = None  # [k] the scale the attribute loss measures errors in


class FP32Linear(nn.Linear):
    """The value head: a Linear that computes in fp32 whatever its parameters' dtype.

    DeepSpeed bf16/fp16 keeps a 16-bit copy of every module parameter (the fp32 masters live in its
    optimizer), so the head upcasts here and rewards never pass through a 16-bit rounding. It is still
    called as a module, so ZeRO-3's hooks gather its partitioned weights first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.float() if self.bias is not None else None
        return F.linear(x.float(), self.weight.float(), bias)


class RewardModel(nn.Module):
    """Backbone + linear head; what the head reads and how its output is shaped come from its ``HeadKind``."""

    step_separator: str | None = None  # model.head=prm: the text ending every step (set by build / load)

    def __init__(self, backbone: nn.Module, head: nn.Linear, *, kind: str, pooling: str, attn_implementation: str,
                 attn_backend: str = "auto", head_name: str = "score", base_prefix: str = "model",
                 head_kind: HeadKind = SCALAR):
        super().__init__()
        if type(head) is nn.Linear:
            head.__class__ = FP32Linear  # same parameters and state dict, fp32 arithmetic
        self.backbone, self.head, self.head_kind = backbone, head, head_kind
        self.kind, self.pooling = kind, pooling
        self.attn_implementation, self.attn_backend = attn_implementation, attn_backend
        self.head_name, self.base_prefix = head_name, base_prefix  # where they live in the HF classifier
        self.combiner = None  # heads with several outputs per sequence: outputs -> (attributes, reward)

    @property
    def config(self):
        return self.backbone.config

    @property
    def causal(self) -> bool:
        return self.kind == "decoder"

    def _backbone_forward(self, batch: ModelBatch, sp=None) -> torch.Tensor:
        input_ids, position_ids = batch.input_ids, batch.position_ids
        kwargs = {}
        if self.attn_implementation == ATTN_NAME:
            plan = AttentionPlan.build(batch.blocks, input_ids.shape[1], input_ids.device, causal=self.causal,
                                       backend=self.attn_backend)
            if sp is not None:
                plan.sp = sp
                input_ids, position_ids = sp.shard(input_ids), sp.shard(position_ids)
            kwargs["ray_rm_plan"] = plan
            mask = None
        else:  # sdpa / eager: the dense block mask, the reference implementation
            if sp is not None:
                raise ValueError("sequence parallelism runs on ray_rm's varlen attention only (the config validation "
                                 "refuses sdpa/eager with it)")
            mask = self._dense_masks(batch, input_ids.shape[1], input_ids.device)
        out = self.backbone(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, use_cache=False,
                            **kwargs)
        return out.last_hidden_state[0]  # [T (local under SP), H]

    def _dense_masks(self, batch: ModelBatch, total: int, device):
        """The block mask, plus its sliding-window variant for models with sliding layers.

        transformers' own masks: causal windows keep keys with q - k < w, bidirectional ones |q - k| <= w
        (masking_utils); models with ``layer_types`` take a {layer type: mask} mapping."""
        full = self._as_mask(dense_block_mask(batch.blocks, total, self.causal), device)
        window = getattr(self.config, "sliding_window", None)
        layer_types = getattr(self.config, "layer_types", None) or []
        if window is None or (layer_types and "sliding_attention" not in layer_types):
            return full
        windowed = self._as_mask(dense_block_mask(batch.blocks, total, self.causal,
                                                  window if self.causal else window + 1), device)
        if not layer_types:
            return windowed
        return {t: windowed if t == "sliding_attention" else full for t in set(layer_types)}

    def _as_mask(self, allowed: torch.Tensor, device) -> torch.Tensor:
        """SDPA takes the boolean mask; eager adds its mask to the scores, so it gets 0 / -inf-like floats."""
        allowed = allowed.to(device)
        if self.attn_implementation != "eager":
            return allowed
        dtype = next(self.backbone.parameters()).dtype
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)

    def _pool(self, hidden: torch.Tensor, batch: ModelBatch, index: torch.Tensor) -> torch.Tensor:
        if self.kind == "decoder" or self.pooling == "last":
            return hidden[index]
        if self.pooling == "cls":
            cls_states = hidden[index]
            pooler = getattr(self.backbone, "pooler", None)
            return pooler(cls_states[:, None, :]) if pooler is not None else cls_states
        # mean over each sequence's tokens
        lens = batch.seq_laid_out_lens
        seg = torch.repeat_interleave(torch.arange(batch.num_sequences, device=hidden.device), lens)
        pos = torch.cat([torch.arange(s, s + n, device=hidden.device) for s, n in
                         zip(batch.seq_start.tolist(), lens.tolist())])
        sums = torch.zeros(batch.num_sequences, hidden.shape[-1], device=hidden.device, dtype=hidden.dtype)
        sums.index_add_(0, seg, hidden[pos])
        return sums / lens[:, None].to(hidden.dtype)

    def _head(self, states: torch.Tensor) -> torch.Tensor:
        return self.head_kind.output(self.head(states))

    @property
    def reads_first_token(self) -> bool:
        """Encoders pooling CLS (or the mean from it) read a sequence from its first token, decoders its last."""
        return self.kind != "decoder" and self.pooling != "last"

    def forward(self, batch: ModelBatch, token_values: bool = False, sp=None) -> RewardOutput:
        hidden = self._backbone_forward(batch, sp)
        index = self.head_kind.positions(batch, self.reads_first_token)
        if sp is not None:
            rewards = sp.gather_rewards(lambda local_idx: self._head(self._pool(hidden, batch, local_idx)), index)
            values = sp.gather_tokens(self._head(hidden)) if token_values else None
            return RewardOutput(rewards, values)
        rewards = self._head(self._pool(hidden, batch, index))
        if self.combiner is not None:
            attributes, rewards = self.combiner(rewards)
            return RewardOutput(rewards, None, attributes, self.combiner.stds)
        return RewardOutput(rewards, self._head(hidden) if token_values else None)

    def head_state_for_export(self) -> dict:
        """The linear head's weights as the exported classifier holds them (a combiner folds its normalisation)."""
        state = self.head.state_dict()
        return self.combiner.fold(state) if self.combiner is not None else state

    def export_entries(self) -> tuple[dict, dict]:
        """(HF config attributes, ``ray_rm`` config entries) the head adds to the export beyond its width."""
        return self.combiner.hf_entries() if self.combiner is not None else ({}, {})
