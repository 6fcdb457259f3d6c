"""Where each step of a solution ends, in characters and in tokens: the positions a PRM scores.

What this module is for: one rule, shared by training, serving, export and eval, that says which
token carries a step's label. It must not pack, pad or truncate (the packer and tokenize stages do),
and it imports neither Ray nor torch.

The rule (the same as TRL's ``PRMTrainer.tokenize_row``, trl/experimental/prm/prm_trainer.py):
  * the prompt is tokenized on its own: a message-list prompt through the tokenizer's chat template
    with the generation prompt (the steps are the assistant's text), a text prompt with the
    tokenizer's own special tokens (the rule ``tokenize.SequenceEncoder`` uses for text);
  * each step is tokenized on its own, without special tokens, and the separator's tokens (also
    tokenized on their own) are appended to it;
  * a step's label sits at the last token of its separator, i.e. the last token of the step's piece;
  * input_ids = prompt ids + the pieces, concatenated. Nothing separates the prompt from the first
    step (TRL's rule; a prompt that should end with a newline must contain it).
Why per piece and not the joined text: BPE merges across a step boundary (SmolLM2 tokenizes
``"x\\n  y"`` as ``x | "\\n " | " y"``: the separator shares a token with the next step), so in the
joined text a step's end need not be a token boundary at all. Tokenizing per piece keeps every step
end on a boundary, makes the scored token always the separator's last token (a fixed id, which is how
vLLM's STEP pooling finds step ends with ``step_tag_id``), and matches checkpoints trained with TRL.
The price: the ids differ from ``tokenizer(joined_text)`` wherever such merges happen, so a consumer
must apply this rule, not tokenize the joined text.
Differences from TRL, on purpose: TRL prepends BOS to every prompt when the tokenizer defines one
(SmolLM2's BOS is ``<|im_start|>``); here a text prompt gets exactly what the tokenizer adds itself.
"""
from __future__ import annotations

from dataclasses import dataclass

from ray_rm.data.formats import Content
from ray_rm.data.tokenize import messages_to_dicts

DEFAULT_SEPARATOR = "\n"  # TRL PRMConfig.step_separator's default


def layout_steps(steps, separator: str = DEFAULT_SEPARATOR) -> tuple[str, list[int]]:
    """The solution text (each step followed by the separator) and each step's end offset.

    ``text[:ends[i]]`` is the solution through step i and its separator (ends are exclusive), so
    ``ends[-1] == len(text)``. A tokenizer-free description of the layout ``step_end_token_positions``
    tokenizes.
    """
    text, ends = "", []
    for step in steps:
        text += step + separator
        ends.append(len(text))
    return text, ends


@dataclass(frozen=True)
class StepTokens:
    """One tokenized solution: the prompt's ids and each step's ids (its separator included)."""

    prompt_ids: tuple
    step_ids: tuple  # tuple[tuple[int, ...], ...], one per step, each ending with the separator's ids

    @property
    def solution_ids(self) -> list[int]:
        return [t for piece in self.step_ids for t in piece]

    @property
    def solution_step_ends(self) -> list[int]:
        """Index of each step's last token within ``solution_ids``."""
        ends, n = [], 0
        for piece in self.step_ids:
            n += len(piece)
            ends.append(n - 1)
        return ends

    @property
    def input_ids(self) -> list[int]:
        return list(self.prompt_ids) + self.solution_ids

    @property
    def step_ends(self) -> list[int]:
        """Index of each step's last token (its separator's last token) within ``input_ids``."""
        return [len(self.prompt_ids) + e for e in self.solution_step_ends]


def encode_prompt(tokenizer, prompt: Content, chat_template: str = "auto") -> list[int]:
    """Token ids of a prompt that steps will follow (see the module rule).

    ``chat_template``: ``auto`` templates message-list prompts only; ``always`` also wraps a text
    prompt as one user message (as ``SequenceEncoder`` does).
    """
    if chat_template not in ("auto", "always"):
        raise ValueError(f"chat_template must be auto or always, got {chat_template!r}")
    if isinstance(prompt, str) and chat_template == "always":
        prompt = (("user", prompt),)
    if isinstance(prompt, str):
        return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("a message-list prompt needs a tokenizer with a chat template")
    text = tokenizer.apply_chat_template(messages_to_dicts(prompt), add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_steps(tokenizer, steps, separator: str = DEFAULT_SEPARATOR) -> tuple:
    """Each step's ids followed by the separator's ids, every piece tokenized on its own."""
    if not steps:
        raise ValueError("a solution needs at least one step")
    separator_ids = list(tokenizer(separator, add_special_tokens=False)["input_ids"]) if separator else []
    encoded = tokenizer(list(steps), add_special_tokens=False)["input_ids"]
    pieces = tuple(tuple(ids) + tuple(separator_ids) for ids in encoded)
    for i, piece in enumerate(pieces):
        if not piece:
            raise ValueError(f"step {i} has no tokens and there is no separator to carry its label")
    return pieces


def step_end_token_positions(tokenizer, prompt: Content, steps, separator: str = DEFAULT_SEPARATOR, *,
                             chat_template: str = "auto") -> StepTokens:
    """Tokenize prompt + steps by the module rule; ``.input_ids`` and ``.step_ends`` are what a PRM reads."""
    return StepTokens(tuple(encode_prompt(tokenizer, prompt, chat_template)),
                      encode_steps(tokenizer, steps, separator))
