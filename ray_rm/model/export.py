"""Export a trained ``RewardModel`` as a plain Hugging Face sequence-classification checkpoint.

The folder loads with ``AutoModelForSequenceClassification.from_pretrained(path)`` and gives the same
reward as ray_rm for the same text, under the "no hidden tokens" contract (ray_rm/data/tokenize.py):
the sequence is what ``tokenizer(text)`` / ``apply_chat_template(messages)`` produce, the reward its last
token. Three details make that true for every consumer:
  * LoRA is merged into the backbone; the value head is written as the classifier's ``score``/``classifier``.
  * ``pad_token_id`` is never EOS: transformers pools the last non-pad token, so pad == eos would silently
    read the wrong token of any sequence ending in EOS (TRL #2758).
  * a BOS token the tokenizer never adds and the chat template writes literally (SmolLM2's
    ``<|im_start|>``) is not declared as BOS: verl strips a leading BOS string from templated text
    expecting vLLM to add it back, which would silently drop the template's first token.
``config.json`` records under ``ray_rm`` the tokenization contract, max_length and the reward mean/std;
``ray_rm_scoring.json`` says in words what text a consumer scores. ``export_check.py`` verifies it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ray_rm.model.reward_model import RewardModel

FORMAT_VERSION = 2  # 2: no hidden tokens (1 appended EOS to plain text: ray_rm.append_eos)
CONTRACT = "no_hidden_tokens"


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


def adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer(text)`` puts the BOS token in front by itself (Llama-style post-processor)."""
    bos = tokenizer.bos_token_id
    ids = tokenizer("a")["input_ids"]
    return bos is not None and bool(ids) and ids[0] == bos


def undeclare_template_only_bos(tokenizer) -> str | None:
    """Unset ``bos_token`` when the tokenizer never adds it and the chat template writes it literally.

    Returns the token unset (recorded in the export), or None. Token sequences do not change: neither
    ``tokenizer(text)`` nor a template that does not reference ``bos_token`` reads it."""
    bos, template = tokenizer.bos_token, getattr(tokenizer, "chat_template", None)
    if not bos or not isinstance(template, str) or "bos_token" in template or adds_bos(tokenizer):
        return None
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}],
                                         tokenize=False)
    if not text.startswith(bos):
        return None
    tokenizer.bos_token = None
    return bos


def export_hf(model: RewardModel, tokenizer_path: str, out_dir: str | Path, meta: dict) -> Path:
    """Write the checkpoint + tokenizer to ``out_dir``; ``meta`` lands in config.json under ``ray_rm``."""
    import transformers
    from transformers import AutoTokenizer

    if model.kind == "encoder" and model.pooling == "mean":
        from ray_rm.errors import UserError

        raise UserError("model.pooling=mean cannot be expressed as AutoModelForSequenceClassification (it pools "
                        "the first token); train encoders with pooling=cls to export a standard checkpoint")
    out_dir = Path(out_dir)
    backbone = merged_backbone(model)
    config = backbone.config
    head_config, head_meta = model.export_entries()  # e.g. an attribute head's id2label, names and weights
    for key, value in {**model.head_kind.config_entries(model.head.out_features), **head_config}.items():
        setattr(config, key, value)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    meta = {"contract": CONTRACT, **meta, **head_meta}
    if model.kind == "decoder":
        pad_tok, pad_id = pick_pad_token(tokenizer)
        tokenizer.pad_token = pad_tok
        config.pad_token_id = pad_id
        unset = undeclare_template_only_bos(tokenizer)
        if unset:
            meta["bos_token_undeclared"] = unset
    if model.step_separator is not None:
        meta.update(step_meta(tokenizer, model.step_separator))
    auto_class = getattr(transformers, model.head_kind.hf_class)
    clf = auto_class.from_config(config, attn_implementation="sdpa", dtype=next(backbone.parameters()).dtype)
    getattr(clf, model.base_prefix).load_state_dict(backbone.state_dict())
    head = getattr(clf, model.head_name)
    head.load_state_dict({k: v.to(head.weight.dtype) for k, v in model.head_state_for_export().items()})
    clf.config.ray_rm = {"format_version": FORMAT_VERSION, "kind": model.kind, "pooling": model.pooling,
                         "head": model.head_kind.name, **meta}
    clf.config.architectures = [type(clf).__name__]
    out_dir.mkdir(parents=True, exist_ok=True)
    clf.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "ray_rm_scoring.json").write_text(json.dumps(scoring_notes(model.kind, meta, tokenizer), indent=2))
    return out_dir


def step_meta(tokenizer, separator: str) -> dict:
    """What a PRM export records for consumers: the step separator and the id of its last token (the token
    whose logit is a step's score; vLLM's STEP pooling calls it ``step_tag_id``)."""
    ids = tokenizer(separator, add_special_tokens=False)["input_ids"]
    return {"step_separator": separator, "step_separator_ids": list(ids), "step_tag_id": ids[-1] if ids else None,
            "step_rule": "prompt tokens, then each step tokenized on its own (no special tokens) followed by the "
                         "separator tokenized on its own; a step's score is the logit at its separator's last token"}


def scoring_notes(kind: str, meta: dict, tokenizer) -> dict:
    """Plain-language instructions for consumers, saved beside the weights as ray_rm_scoring.json."""
    if kind != "decoder":
        return {"contract": CONTRACT,
                "text": "tokenizer(text) with its special tokens ([CLS] ... [SEP]); the reward is read at [CLS]",
                "chat": "apply the chat template, then tokenizer(text) as above",
                "padding": "right padding", "normalize": "(reward - reward_mean) / reward_std from config.json ray_rm"}
    bos = "adds BOS itself" if adds_bos(tokenizer) else "adds no special tokens to plain text"
    return {
        "contract": f"{CONTRACT}: the reward is read at the last token of exactly the sequence below; nothing "
                    "is appended or stripped",
        "text": f"plain text (or prompt + response concatenated as text): tokenizer(text), i.e. "
                f"add_special_tokens=True, the default (this tokenizer {bos})",
        "chat": "conversations: tokenizer.apply_chat_template(messages, tokenize=True), or equivalently the "
                "templated string (tokenize=False) tokenized with add_special_tokens=False",
        "vllm_verl": "POST /classify with the templated string and add_special_tokens=false; sending it with "
                     "the default add_special_tokens=true after stripping a leading BOS string (what verl "
                     "does) gives the same tokens" + (" (the template's literal first token is not declared "
                                                      f"as BOS for this reason: {meta['bos_token_undeclared']!r})"
                                                      if meta.get("bos_token_undeclared") else ""),
        "trl": "GRPO/PPO reward models: conversational prompts are exact; plain-text prompts are exact when the "
               "tokenizer adds no BOS (TRL tokenizes with add_special_tokens=False)",
        "padding": "right or left padding with the saved pad token, which is never EOS",
        "max_length": meta.get("max_length"),
        "normalize": "(reward - reward_mean) / reward_std from config.json ray_rm",
        "self_test": "python jobs/check_export.py <this folder>",
    }
