"""Stepwise rows (process reward model data) -> ``TokenizedGroup``s the training packer lays out.

What this module is for: the PRM side of one read task, mirroring ``prepare.process_task`` for pairs:
read and normalize every row (``stepwise.normalize_step_row``; malformed rows raise or are counted,
by the same ``data.on_error`` rule), tokenize each solution by the ``step_layout`` rule, and make one
group per prompt: its k solutions, which the packer lays out ``[prompt | solution_1 | ... | solution_k]``
with the prompt once. Each sequence carries the position of every step's last token and its label.
What it must not do: pack, import Ray or torch, or apply the pair quality filters (they judge two
responses against each other; solutions of one prompt may legitimately be identical).

``last_step_only`` (``train.prm_last_step_only``, TRL's ``step_last_only``) keeps only each solution's
last label; the others become unlabelled, so the loss averages over exactly the steps it trains on.
``cut_at_first_error`` (``train.prm_cut_at_first_error``, PRM800K-style) ends each solution at its first
step labelled wrong: the steps after it leave the text, not just the loss. Why: Math-Shepherd labels call
every step after the first error wrong, though its own arithmetic may hold, so late steps are mostly
labelled wrong and a short training run learns step position instead of the error (the PRM demo,
``ray_rm/demo_prm.py``); cut, each wrong label sits on a step that holds the error itself, and the
shorter solutions pack more problems per row.
"""
from __future__ import annotations

import math

from ray_rm.data.packer import TokenizedGroup
from ray_rm.data.prepare import keep_within_budget, read_examples, resolve_max_length
from ray_rm.data.quality import DropReport
from ray_rm.data.sources import ReadTask
from ray_rm.data.step_layout import step_end_token_positions
from ray_rm.data.stepwise import StepExample, normalize_step_row
from ray_rm.prefix import common_prefix_len


def _label_value(label) -> float:
    return math.nan if label is None else float(bool(label))


def cut_at_first_error(steps: list, labels: list) -> tuple[list, list]:
    """The solution up to and including its first step labelled wrong (unlabelled steps are not errors)."""
    for i, label in enumerate(labels):
        if label is not None and not label:
            return steps[:i + 1], labels[:i + 1]
    return steps, labels


def step_group(tokenizer, ex: StepExample, separator: str, chat_template: str = "auto",
               last_step_only: bool = False, cut_first_error: bool = False) -> TokenizedGroup:
    """One prompt's solutions as a group: full token sequences, step-end positions and labels per sequence."""
    seqs, ends, labels = [], [], []
    for steps, step_labels in zip(ex.solutions, ex.labels):
        if cut_first_error:
            steps, step_labels = cut_at_first_error(steps, step_labels)
        tokens = step_end_token_positions(tokenizer, ex.prompt, steps, separator, chat_template=chat_template)
        values = [_label_value(x) for x in step_labels]
        if last_step_only:
            values = [math.nan] * (len(values) - 1) + values[-1:]
        seqs.append(tokens.input_ids)
        ends.append(tokens.step_ends)
        labels.append(values)
    k = len(seqs)
    return TokenizedGroup(example_id=ex.example_id, sequences=seqs, ranks=[0] * k,
                          shared_len=common_prefix_len(seqs, keep_own=1) if k > 1 else 0,
                          scores=[math.nan] * k, subset=ex.subset or "", step_ends=ends, step_labels=labels)


def process_step_task(task: ReadTask, encoder, cfg, share_prompt: bool, seed: int | None, separator: str,
                      last_step_only: bool = False, cut_first_error: bool = False
                      ) -> tuple[list[TokenizedGroup], DropReport]:
    """``prepare.process_task`` for stepwise rows: kept groups and a report counting every row read.

    Over-length solutions drop their row (``over_length``; truncating would cut steps off a solution);
    a group over the row budget drops as ``over_budget``."""
    cfg = resolve_max_length(cfg, encoder.tokenizer.name_or_path)
    chat_template = "always" if cfg.chat_template == "always" else "auto"
    report = DropReport()
    items = []
    for ex in read_examples(task, report, cfg.on_error, parse=normalize_step_row):
        group = step_group(encoder.tokenizer, ex, separator, chat_template, last_step_only, cut_first_error)
        longest = max(len(s) for s in group.sequences)
        if longest > cfg.max_length:
            items.append(("over_length", f"{ex.example_id}: a solution has {longest} tokens > data.max_length "
                                         f"{cfg.max_length}"))
        else:
            items.append(group)
    return keep_within_budget(items, report, cfg.pack_tokens, share_prompt, task, seed)
