"""Export a trained ``RewardModel`` as a plain Hugging Face sequence-classification checkpoint.

The folder loads with ``AutoModelForSequenceClassification.from_pretrained(path)`` and gives the same
reward as ray_rm for the same tokens. Two details make that true for every consumer:
  * LoRA is merged into the backbone; the value head is written as the classifier's ``score``/``classifier``.
  * ``pad_token_id`` differs from the reward token (EOS): transformers pools the last non-pad token,
    so pad == eos would silently read the token before EOS (TRL #2758).
``config.json`` also records under ``ray_rm`` how text was tokenized and the reward mean/std.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ray_rm.model.reward_model import RewardModel

FORMAT_VERSION = 1


def merged_backbone(model: RewardModel) -> torch.nn.Module:
    backbone = model.backbone
    if hasattr(backbone, "merge_and_unload"):  # a peft model
        backbone = backbone.merge_and_unload()
    return backbone


def pick_pad_token(tokenizer) -> tuple[str, int]:
    """A pad token that is never the reward token: the existing pad if it is not EOS, else unk/bos/new."""
    eos = tokenizer.eos_token_id
    for name in ("pad_token", "unk_token", "bos_token"):
        tok = getattr(tokenizer, name, None)
        tid = tokenizer.convert_tokens_to_ids(tok) if tok is not None else None
        if tid is not None and tid != eos:
            return tok, tid
    raise ValueError("the tokenizer has no token other than EOS to pad with; add a pad token to the tokenizer")


def export_hf(model: RewardModel, tokenizer_path: str, out_dir: str | Path, meta: dict) -> Path:
    """Write the checkpoint + tokenizer to ``out_dir``; ``meta`` lands in config.json under ``ray_rm``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if model.kind == "encoder" and model.pooling == "mean":
        from ray_rm.errors import UserError

        raise UserError("model.pooling=mean cannot be expressed as AutoModelForSequenceClassification (it pools "
                        "the first token); train encoders with pooling=cls to export a standard checkpoint")
    out_dir = Path(out_dir)
    backbone = merged_backbone(model)
    config = backbone.config
    config.num_labels = 1
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    if model.kind == "decoder":
        pad_tok, pad_id = pick_pad_token(tokenizer)
        tokenizer.pad_token = pad_tok
        config.pad_token_id = pad_id
    clf = AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa",
                                                         dtype=next(backbone.parameters()).dtype)
    getattr(clf, model.base_prefix).load_state_dict(backbone.state_dict())
    head = getattr(clf, model.head_name)
    head.load_state_dict({k: v.to(head.weight.dtype) for k, v in model.head.state_dict().items()})
    clf.config.ray_rm = {"format_version": FORMAT_VERSION, "kind": model.kind, "pooling": model.pooling, **meta}
    clf.config.architectures = [type(clf).__name__]
    out_dir.mkdir(parents=True, exist_ok=True)
    clf.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "ray_rm_scoring.json").write_text(json.dumps(scoring_notes(model.kind, meta, tokenizer), indent=2))
    return out_dir


def scoring_notes(kind: str, meta: dict, tokenizer) -> dict:
    """Plain-language instructions for consumers, saved beside the weights."""
    if kind == "decoder":
        text_rule = (f"plain text: tokenize with special tokens and append EOS ({tokenizer.eos_token!r}) when missing"
                     if meta.get("append_eos", True) else "plain text: tokenize with special tokens, as given")
        chat_rule = "conversations: apply the tokenizer's chat template to prompt + response messages, tokenize " \
                    "with add_special_tokens=False; the reward is read at the template output's last token"
    else:
        text_rule, chat_rule = "text: tokenize with special tokens ([CLS] ... [SEP])", "conversations: chat template"
    return {"reward_at": "the last token of each sequence (decoders) / the first token (encoders, cls pooling)",
            "text": text_rule, "chat": chat_rule,
            "padding": "right padding with the saved pad token, which is never the reward token",
            "normalize": "(reward - reward_mean) / reward_std from config.json ray_rm"}
