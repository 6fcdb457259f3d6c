"""Head kinds: what a reward model computes on top of its backbone, in one registry (``model.head``).

What this module is for: everything that differs between kinds of reward heads, declared once per kind,
so that the train loop, the train step, the serve engine and the scorers never branch on the kind.
What it must not do: hold weights or run the backbone (``reward_model.py`` does), compute losses
(``ray_rm/losses.py``), or import Ray or DeepSpeed.

A ``HeadKind`` declares:
  * ``width(model_cfg, hf_config)``  the outputs of its linear layer (``num_labels`` of the HF classifier),
    from the training config, or from a checkpoint's config when loading one (``model_cfg`` None);
  * ``positions(batch, reads_first)``  the row positions it reads (``scalar``: one per sequence, its
    reward token, or its first token for a CLS-pooled encoder);
  * ``output(values)``  the head's ``[n, width]`` values shaped for the losses (``scalar``: ``[n]``);
  * ``targets``  the ``PackedRow`` fields its losses read (checked against ``ray_rm/packed.py`` at registration);
  * ``losses``  the ``train.loss`` names it accepts (checked by ``ray_rm/validation.py``);
  * ``hf_class`` / ``config_entries(width)``  how the export is loaded by consumers;
  * ``answer(values)``  how its per-item outputs are named in serve and eval answers.

How the next two heads drop in (a new ``register_head`` entry + new ``PackedRow`` fields; no change to
the train loop, the step or the serve engine):
  * ``prm`` (per-step scores at step-end tokens, BCE): ``width`` 1; ``positions`` = a new
    ``PackedRow.step_index`` field (row position of every step-end token, filled by the packer from
    ``data/step_layout.py``; k solutions of one prompt are one group ``[prompt | sol_1 | ... | sol_k]``
    laid out by the existing prompt sharing); ``output`` ``[S]``; ``targets`` ``("step_index",
    "step_labels")``; ``losses`` ``("step_bce",)`` registered in ``losses.py`` (masked where a label is
    unknown, unit "steps"); ``hf_class`` ``AutoModelForTokenClassification`` (vLLM's STEP pooling reads
    it); ``answer`` ``{"rewards": <aggregate per solution>, "step_rewards": [[...], ...]}``.
  * ``attributes`` (k-output regression + a weighted combined reward): ``width`` = the number of
    attribute names in the model config (or the checkpoint's ``id2label``); ``positions`` as ``scalar``; ``output`` ``[N, k]``;
    ``targets`` ``("seq_attributes",)`` (NaN = missing, masked); ``losses`` ``("attribute_mse",
    "attribute_mse_bt")``, the BT term on ``weights · attributes``; ``config_entries`` ``num_labels=k``
    plus ``id2label`` (the names and weights also go to the export's ``ray_rm`` entry); ``combiner``
    ``model/attribute_head.py`` (weights, normalisation; rewards = w · a); serve adds ``"attributes":
    [{name: value}]`` (``serve/attribute_answers.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch

from ray_rm.errors import lookup
from ray_rm.packed import PackedRow


@dataclass(frozen=True)
class HeadKind:
    name: str
    width: Callable[[object, object], int]  # (ModelConfig or None, HF config) -> outputs of the linear head
    positions: Callable[[object, bool], torch.Tensor]  # (ModelBatch, reads_first_token) -> row positions
    output: Callable[[torch.Tensor], torch.Tensor]  # [n, width] -> what the losses read
    targets: tuple  # PackedRow fields the losses read
    losses: tuple  # accepted train.loss names
    hf_class: str  # transformers Auto class that loads the export
    config_entries: Callable[[int], dict]  # (head width) -> HF config attributes of the export
    answer: Callable[[list], dict]  # per-item outputs -> named fields of a serve / eval answer
    # (model_cfg or None, HF config) -> a module turning the head's [n, width] output into (per-item values
    # [n, width], rewards [n]), for heads whose reward is computed from several outputs (attributes: w . a);
    # None: the output is the reward
    combiner: Callable[[object, object], torch.nn.Module] | None = None


HEADS: dict[str, HeadKind] = {}


def register_head(kind: HeadKind) -> HeadKind:
    known = {f.name for f in fields(PackedRow)}
    missing = [t for t in kind.targets if t not in known]
    if missing:
        raise ValueError(f"head '{kind.name}' reads {missing}, which ray_rm/packed.py's PackedRow does not hold")
    HEADS[kind.name] = kind
    return kind


def get_head(name: str) -> HeadKind:
    return lookup(HEADS, name, "model.head")


def _scalar_positions(batch, reads_first_token: bool) -> torch.Tensor:
    return batch.seq_start if reads_first_token else batch.reward_index


SCALAR = register_head(HeadKind(
    name="scalar", width=lambda model_cfg, hf_config: 1, positions=_scalar_positions, output=lambda v: v.squeeze(-1),
    targets=("seq_ranks", "seq_scores", "group_margins"),
    losses=("bt", "logexp", "margin", "internlm2", "token_divergence", "ce2", "mse", "listwise"),
    hf_class="AutoModelForSequenceClassification", config_entries=lambda width: {"num_labels": width},
    answer=lambda values: {"rewards": list(values)},
))


# ---------------------------------------------------------------------------------------------- attributes
def _attribute_combiner(model_cfg, hf_config):
    from ray_rm.model.attribute_head import build_combiner

    return build_combiner(model_cfg, hf_config)


def _attribute_width(model_cfg, hf_config) -> int:
    from ray_rm.model.attribute_head import attribute_width

    return attribute_width(model_cfg, hf_config)


ATTRIBUTES = register_head(HeadKind(
    name="attributes", width=_attribute_width, positions=_scalar_positions, output=lambda v: v,
    targets=("seq_attributes",), losses=("attribute_mse", "attribute_mse_bt"),
    hf_class="AutoModelForSequenceClassification", config_entries=lambda width: {"num_labels": width},
    answer=lambda values: {"rewards": list(values)}, combiner=_attribute_combiner,
))
# ------------------------------------------------------------------ process reward models (model.head=prm)
def _step_positions(batch, reads_first_token: bool) -> torch.Tensor:
    return batch.step_index


def _step_answer(values: list) -> dict:
    """Per item: its step scores (logits). ``rewards`` is the min-aggregate of step probabilities, the default
    of ``ray_rm/eval/prm_metrics.aggregate``; the serve engine re-aggregates when a request asks otherwise."""
    from ray_rm.eval.prm_metrics import aggregate

    return {"rewards": [aggregate(steps, "min") for steps in values], "step_rewards": [list(s) for s in values]}


PRM = register_head(HeadKind(
    name="prm", width=lambda model_cfg, hf_config: 1, positions=_step_positions, output=lambda v: v.squeeze(-1),
    targets=("step_index", "step_labels"), losses=("step_bce",),
    hf_class="AutoModelForTokenClassification",
    # no bias: ray_rm's head is the sequence classifier's bias-free ``score``, and the token classifier reads it
    config_entries=lambda width: {"num_labels": width, "token_classification_bias": False},
    answer=_step_answer,
))
"""A per-step score read at each step's last token (the separator's last token, ``data/step_layout.py``).

A group is one prompt's k solutions, laid out ``[prompt | solution_1 | ... | solution_k]`` by the same
prompt sharing as pairs; the packer records every step end (``PackedRow.step_index``) and its label.
The export is an ``AutoModelForTokenClassification`` whose logit at a step-end token is the step's score;
``config.json`` ``ray_rm.step_separator`` / ``ray_rm.step_tag_id`` say which tokens those are."""
