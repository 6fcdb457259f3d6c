"""Turn canonical examples into token ids exactly as training, serving and relabeling must agree.

The contract is "no hidden tokens": a sequence is exactly what a consumer's ordinary call produces,
  * plain text (or prompt + response concatenated as text): ``tokenizer(text)`` (special tokens on);
  * conversations: ``tokenizer.apply_chat_template(messages, tokenize=True)``, i.e. the templated text
    tokenized with ``add_special_tokens=False`` (the template writes its own BOS: never a double BOS);
and the reward is read at that sequence's last token (decoders) or first token (encoders, [CLS]).
Nothing is appended, so TRL, vLLM/verl, OpenRLHF and plain transformers score the trained token
(``ray_rm/model/export_check.py`` verifies it for every export). The reward position is recorded
explicitly by the packer, never inferred from pad ids (pad == eos silently gives chance accuracy: TRL #2758).
This module must not add, strip or reorder tokens beyond those two calls (only the left truncation
of over-length sequences, which keeps the reward token).
"""
from __future__ import annotations

import math
from ray_rm.data.formats import PreferenceExample
from ray_rm.data.packer import TokenizedGroup
from ray_rm.prefix import common_prefix_len


def messages_to_dicts(messages: tuple) -> list[dict]:
    """(role, content) tuples, as ``PreferenceExample`` holds them, -> the dicts a chat template reads."""
    return [{"role": r, "content": c} for r, c in messages]


def _render_plain(messages: tuple) -> str:
    """Fallback for tokenizers without a chat template: 'Role: content' lines."""
    return "\n".join(f"{role.capitalize()}: {content}" for role, content in messages)


class SequenceEncoder:
    """Text or chat messages -> token ids under the "no hidden tokens" contract (module docstring).

    ``legacy_append_eos`` exists only to keep scoring checkpoints exported before the contract (their
    ``config.json`` says ``ray_rm.append_eos: true``) the way they were trained; training never sets it.
    """

    def __init__(self, tokenizer, *, chat_template: str = "auto", legacy_append_eos: bool = False):
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.legacy_append_eos = legacy_append_eos
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self.eos_id = tokenizer.eos_token_id

    def render(self, prompt, response) -> tuple[str, bool]:
        """(text, is_templated): the full string to tokenize for prompt + response."""
        chat = isinstance(response, tuple)
        if not chat and self.chat_template == "always":
            prompt = (("user", prompt),) if prompt else ()
            response, chat = (("assistant", response),), True
        if chat:
            messages = tuple(prompt) + tuple(response)
            if self.has_template and self.chat_template != "never":
                text = self.tokenizer.apply_chat_template(messages_to_dicts(messages), tokenize=False)
                return text, True
            return _render_plain(messages), False
        return prompt + response, False

    def encode_rendered(self, items: list[tuple[str, bool]]) -> list[list[int]]:
        """Tokenize rendered strings in two batched calls: templated text without special tokens (the
        template holds them, as ``apply_chat_template(tokenize=True)`` does), plain text with them."""
        out: list = [None] * len(items)
        for templated in (True, False):
            idx = [i for i, (_, t) in enumerate(items) if t == templated]
            if not idx:
                continue
            enc = self.tokenizer([items[i][0] for i in idx], add_special_tokens=not templated)["input_ids"]
            for i, ids in zip(idx, enc):
                ids = list(ids)
                if not templated and self.legacy_append_eos and self.eos_id is not None \
                        and (not ids or ids[-1] != self.eos_id):
                    ids.append(self.eos_id)
                out[i] = ids
        return out

    def encode(self, items: list[tuple]) -> list[list[int]]:
        """Token ids for a list of (prompt, response) items."""
        return self.encode_rendered([self.render(p, r) for p, r in items])


def tokenize_examples(encoder: SequenceEncoder, examples: list[PreferenceExample], max_length: int,
                      overlength: str) -> list[TokenizedGroup | tuple[str, str]]:
    """Each example becomes a TokenizedGroup, or a (reason, message) drop for over-length sequences."""
    items, owners = [], []
    for ex_i, ex in enumerate(examples):
        for r in ex.responses:
            items.append((ex.prompt, r))
            owners.append(ex_i)
    ids = encoder.encode(items)
    per_example: list[list] = [[] for _ in examples]
    for owner, seq in zip(owners, ids):
        per_example[owner].append(seq)
    out: list = []
    for ex, seqs in zip(examples, per_example):
        longest = max(len(s) for s in seqs)
        if longest > max_length:
            if overlength == "drop":
                out.append(("over_length", f"{ex.example_id}: a sequence has {longest} tokens > "
                                           f"data.max_length {max_length}"))
                continue
            seqs = [s[-max_length:] for s in seqs]  # truncate_left keeps the response end (the reward token)
        if len({tuple(s) for s in seqs}) < len(seqs):
            out.append(("identical", f"{ex.example_id}: two responses have identical tokens"))
            continue
        scores = [math.nan] * len(seqs) if ex.scores is None else [float(s) for s in ex.scores]
        out.append(TokenizedGroup(
            example_id=ex.example_id, sequences=seqs, ranks=list(ex.ranks), shared_len=common_prefix_len(seqs, keep_own=1),
            margin=math.nan if ex.margin is None else float(ex.margin), scores=scores, subset=ex.subset or ""))
    return out
