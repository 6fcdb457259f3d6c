"""The attribute head's combiner: k regression outputs -> attribute values and one weighted reward.

What this module is for: everything a multi-objective (``model.head=attributes``) reward model holds
besides its linear layer, in one small module: the attribute names, the combined reward's weights
(``reward = w . attributes``, NeMo-Aligner / ArmoRM style with fixed weights) and the optional
per-attribute normalisation (the linear layer regresses ``(value - mean) / std``). It must not compute
losses (``ray_rm/losses.py``), run the backbone, or import Ray or DeepSpeed.

Where the numbers live:
  * training: fp32 tensors ``weights``, ``means``, ``stds`` from the config (``model.attribute_*``);
  * export: the normalisation is folded into the linear layer (``W' = diag(std) W``, ``b' = std * b +
    mean``), so plain ``AutoModelForSequenceClassification`` logits *are* the attribute values;
    ``config.json`` holds ``id2label`` (the names) and, under ``ray_rm``, the names, the weights and the
    normalisation that was folded (for the record; a loaded export has mean 0, std 1).
A prompt-conditioned gate (ArmoRM's gating layer) is not implemented: the weights are fixed per model
and may be overridden per serve request.
"""
from __future__ import annotations

import torch
from torch import nn

from ray_rm.errors import UserError


def _values(given: list, k: int, default: float, key: str) -> list[float]:
    if not given:
        return [default] * k
    if len(given) != k:
        raise UserError(f"{key} has {len(given)} values but model.attributes names {k} attributes")
    return [float(v) for v in given]


class AttributeCombiner(nn.Module):
    """Head outputs ``[n, k]`` -> (attributes ``[n, k]`` = mean + std * output, reward ``[n]`` = attributes @ w)."""

    def __init__(self, names: list[str], weights: list[float], means: list[float], stds: list[float]):
        super().__init__()
        self.names = list(names)
        if any(s <= 0 for s in stds):
            raise UserError(f"model.attribute_stds must be positive, got {stds}")
        # plain fp32 tensors, not buffers: DeepSpeed bf16 would round buffers (1/3 -> 0.334); they are config
        # values (model.attribute_*), written to the export's config.json, and follow the outputs' device
        self.weights = torch.tensor(weights, dtype=torch.float32)
        self.means = torch.tensor(means, dtype=torch.float32)
        self.stds = torch.tensor(stds, dtype=torch.float32)

    def _on(self, device) -> None:
        if self.weights.device != device:
            self.weights, self.means, self.stds = (t.to(device) for t in (self.weights, self.means, self.stds))

    @classmethod
    def from_model_config(cls, cfg) -> "AttributeCombiner":
        names = list(cfg.attributes)
        if not names:
            raise UserError("model.head=attributes needs attribute names: set model.attributes=[...] or train on "
                            "rated rows (the names are read from the first one)")
        k = len(names)
        return cls(names, _values(cfg.attribute_weights, k, 1.0 / k, "model.attribute_weights"),
                   _values(cfg.attribute_means, k, 0.0, "model.attribute_means"),
                   _values(cfg.attribute_stds, k, 1.0, "model.attribute_stds"))

    @classmethod
    def from_hf_config(cls, hf_config) -> "AttributeCombiner":
        """An exported model's combiner: its normalisation is already folded into the linear layer."""
        meta = getattr(hf_config, "ray_rm", None) or {}
        names = list(meta.get("attributes") or [hf_config.id2label[i] for i in range(hf_config.num_labels)])
        k = len(names)
        return cls(names, _values(meta.get("attribute_weights", []), k, 1.0 / k, "attribute_weights"),
                   [0.0] * k, [1.0] * k)

    def forward(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._on(values.device)
        attributes = self.means + self.stds * values.float()
        return attributes, attributes @ self.weights

    def check_head(self, head: nn.Linear) -> None:
        """Means need a bias to fold into (decoders' ``score`` layers have none; scales always fold)."""
        if head.bias is None and bool((self.means != 0).any()):
            raise UserError("model.attribute_means needs a head with a bias, and this model's classifier has none "
                            "(decoders' 'score' layer); leave the means at 0 and scale with model.attribute_stds")

    def fold(self, head_state: dict) -> dict:
        """The linear layer's state with the normalisation folded in (its outputs become attribute values)."""
        out = dict(head_state)
        out["weight"] = head_state["weight"].float() * self.stds[:, None].to(head_state["weight"].device)
        bias = head_state.get("bias")
        if bias is not None:
            out["bias"] = bias.float() * self.stds.to(bias.device) + self.means.to(bias.device)
        elif bool((self.means != 0).any()):
            raise UserError("the attribute head has no bias to fold model.attribute_means into")
        return out

    def hf_entries(self) -> tuple[dict, dict]:
        """(HF config attributes, ``ray_rm`` config entries) of the export."""
        id2label = dict(enumerate(self.names))
        config = {"id2label": id2label, "label2id": {n: i for i, n in id2label.items()}}
        meta = {"attributes": self.names, "attribute_weights": self.weights.tolist(),
                "attribute_normalization": {"means": self.means.tolist(), "stds": self.stds.tolist(),
                                            "folded_into_head": True}}
        return config, meta


def build_combiner(model_cfg, hf_config) -> AttributeCombiner:
    """The combiner of a model being trained (``model_cfg``) or loaded from an export (``model_cfg`` None)."""
    return AttributeCombiner.from_model_config(model_cfg) if model_cfg is not None \
        else AttributeCombiner.from_hf_config(hf_config)


def attribute_width(model_cfg, hf_config) -> int:
    """k: the configured names when training, the export's recorded names (or labels) when loading."""
    if model_cfg is not None:
        return len(AttributeCombiner.from_model_config(model_cfg).names)
    meta = getattr(hf_config, "ray_rm", None) or {}
    return len(meta.get("attributes") or []) or int(hf_config.num_labels)
