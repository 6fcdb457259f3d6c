"""Rated rows (attribute head) on their way to the packer: parse a mixed file, tokenize, attach targets.

What this module is for: the data side of ``model.head=attributes``. A run reads rated rows
(``ratings.normalize_rated_row``) and, mixed in, preference pairs (``formats.normalize_row``), sorted by
``row_kinds.classify_row``. A rated row becomes a one-sequence group (prompt + response laid out once)
carrying its k ratings; a pair's sequences carry k NaNs (they train the combined reward through the BT
term only). It must not pack, choose the loss, or import Ray or torch.

The attribute names of a run are fixed before any task runs (``attribute_names``): configured, or read
from the first rated row of the training files, then checked on every row by ``normalize_rated_row``.
"""
from __future__ import annotations

import math

from ray_rm.data.formats import RowLocator, normalize_row
from ray_rm.data.packer import TokenizedGroup
from ray_rm.data.ratings import AttributeSchema, RatedExample, normalize_rated_row
from ray_rm.data.row_kinds import PAIR, RATED, classify_row
from ray_rm.data.tokenize import SequenceEncoder
from ray_rm.errors import DataError

FIRST_ROW_SCAN = 1000  # rows read, at most, to find the first rated row when the names are not configured


def attribute_row_parser(names: tuple):
    """``read_examples``' parse function for an attribute run: pairs and rated rows; stepwise rows are errors."""
    schema = AttributeSchema(tuple(names))

    def parse(raw, source: str, row: int):
        kind = classify_row(raw)
        if kind == PAIR:
            return normalize_row(raw, source, row)
        if kind == RATED:
            return normalize_rated_row(raw, source, row, schema)
        raise RowLocator(source, row).error("", "a stepwise (per-step labelled) row cannot train model.head=attributes; "
                                          "expected rated rows {prompt, response, <attribute>: number} or pairs")
    return parse


def tokenize_rated(encoder: SequenceEncoder, examples: list[RatedExample], max_length: int,
                   overlength: str) -> list[TokenizedGroup | tuple[str, str]]:
    """One single-sequence group per rated example (its ratings attached, None -> NaN), or a drop."""
    ids = encoder.encode([(ex.prompt, ex.response) for ex in examples])
    out: list = []
    for ex, seq in zip(examples, ids):
        if len(seq) > max_length:
            if overlength == "drop":
                out.append(("over_length", f"{ex.example_id}: {len(seq)} tokens > data.max_length {max_length}"))
                continue
            seq = seq[-max_length:]  # truncate_left keeps the response end (the reward token)
        ratings = [math.nan if v is None else float(v) for v in ex.values]
        out.append(TokenizedGroup(example_id=ex.example_id, sequences=[seq], ranks=[0], scores=[math.nan],
                                  subset=ex.subset or "", attributes=[ratings]))
    return out


def with_unrated_targets(items: list, k: int) -> list:
    """Pair groups of an attribute run: every sequence gets k NaN ratings (drops pass through)."""
    for item in items:
        if isinstance(item, TokenizedGroup) and not item.attributes:
            item.attributes = [[math.nan] * k for _ in item.sequences]
    return items


def attribute_names(configured: list, files: list[str], data_cfg) -> tuple:
    """The run's attribute names: as configured, else those of the first rated row of ``files``."""
    if configured:
        return tuple(configured)
    from ray_rm.data.sources import plan_read_tasks, read_task_rows

    seen = 0
    for task in plan_read_tasks(files, FIRST_ROW_SCAN, FIRST_ROW_SCAN, data_cfg.builtin_size):
        for rowno, raw in read_task_rows(task):
            seen += 1
            if not isinstance(raw, DataError) and classify_row(raw) == RATED:
                return AttributeSchema.from_row(raw, task.source, rowno).names
            if seen >= FIRST_ROW_SCAN:
                break
    raise DataError(f"model.head=attributes: no rated row ({{prompt, response, <attribute>: number}}) in the first "
                    f"{seen} rows of {files} to read the attribute names from; set model.attributes=[...]")
