"""The data path without Ray: read task -> read -> normalize -> quality filter -> tokenize -> budget -> pack.

What this module is for: the recipe a pair follows from its file to a packed row, one stage per call, in
order (``task_rows``), plus what a run needs once (its settings, tokenizer, read tasks, length limit). It
calls each stage's module and nothing calls back into it. What it must not do: import Ray or torch, hold a
stage's rules (reading ``sources.py``, formats ``formats.py``, filters and the drop report ``quality.py``,
tokens ``tokenize.py``, packing ``packer.py``) or validate config (``ray_rm/validation.py``).

The Ray Data pipeline (``pipeline.py``) runs ``task_rows`` per task on an actor pool; ``rows_of_tasks`` is
the same in this process (tests, small tools). Every row read is either kept or counted in the
``DropReport``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Callable, Iterator

from ray_rm.assets import resolve_model_path
from ray_rm.config_schema import DataConfig
from ray_rm.data import rated_groups
from ray_rm.data.formats import PreferenceExample, normalize_row
from ray_rm.data.packer import TokenizedGroup, pack_groups
from ray_rm.data.quality import DropReport, quality_drop
from ray_rm.data.ratings import RatedExample
from ray_rm.data.sources import ReadTask, plan_read_tasks, read_task_rows
from ray_rm.data.tokenize import SequenceEncoder, tokenize_examples
from ray_rm.errors import DataError
from ray_rm.packed import PackedRow


@dataclass(frozen=True)
class PackSettings:
    """Everything besides the data config that decides how rows are tokenized and packed."""

    tokenizer_path: str
    share_prompt: bool
    seed: int | None = None
    attributes: tuple = ()  # model.head=attributes: the attribute names (rated rows are read and packed)
    head: str = "scalar"  # model.head: "prm" reads stepwise rows (ray_rm/data/step_groups.py)
    step_separator: str = "\n"  # model.step_separator (prm)
    prm_last_step_only: bool = False  # train.prm_last_step_only (prm)
    prm_cut_at_first_error: bool = False  # train.prm_cut_at_first_error (prm)


def make_encoder(tokenizer_path: str, data_cfg: DataConfig) -> SequenceEncoder:
    """The run's tokenizer (a built-in model name resolves to its local folder) under its chat-template rule."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(tokenizer_path))
    return SequenceEncoder(tokenizer, chat_template=data_cfg.chat_template)


def ordered_tasks(files: list[str], data_cfg: DataConfig, seed: int | None) -> list[ReadTask]:
    """The run's read tasks in the order they are prepared: planned per source, shuffled with the seed."""
    tasks = plan_read_tasks(files, data_cfg.rows_per_read_task, data_cfg.limit, data_cfg.builtin_size,
                            seed or 0)
    if seed is not None:
        random.Random(seed).shuffle(tasks)
    return tasks


def auto_max_length(pack_tokens: int, context: int | None) -> int:
    """``data.max_length=0``: the model's whole context, but at most half a packed row, so that any pair
    fits in one row. Real data then keeps every pair the model can read (hh-rlhf's longest sequence,
    996 SmolLM2 tokens, fits the default 4096-token rows)."""
    half = max(1, pack_tokens // 2)
    return min(context, half) if context else half


_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def model_context_length(model_path: str) -> int | None:
    """Tokens the model can attend over, from its config (None for a tokenizer-only folder)."""
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(resolve_model_path(model_path))
    except (OSError, ValueError):
        return None
    for key in _CONTEXT_KEYS:
        value = getattr(hf_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def resolve_max_length(data_cfg: DataConfig, model_path: str) -> DataConfig:
    """The one place ``data.max_length=0`` (auto) becomes a number; an explicit value is kept as is."""
    if data_cfg.max_length > 0:
        return data_cfg
    return replace(data_cfg, max_length=auto_max_length(data_cfg.pack_tokens, model_context_length(model_path)))


def drop_or_raise(report: DropReport, exc: DataError, on_error: str) -> None:
    """Strict mode re-raises a malformed row's error; lenient mode counts it as ``invalid:<field>``."""
    if on_error == "raise":
        raise exc
    report.drop(f"invalid:{exc.field.split('[')[0] or 'row'}", str(exc))


def read_examples(task: ReadTask, report: DropReport, on_error: str,
                  parse: Callable = normalize_row) -> Iterator[PreferenceExample]:
    """Every row of a task parsed by ``parse`` (normalize_row by default); malformed ones go to ``drop_or_raise``.

    Shared by training, relabeling and evaluation so all three count bad rows the same way."""
    for rowno, raw in read_task_rows(task):
        report.rows_read += 1
        try:
            if isinstance(raw, DataError):
                raise raw
            example = parse(raw, task.source, rowno)
        except DataError as exc:
            drop_or_raise(report, exc, on_error)
            continue
        yield example


def process_task(task: ReadTask, encoder: SequenceEncoder, cfg: DataConfig, share_prompt: bool,
                 seed: int | None = None, attributes: tuple = ()) -> tuple[list[TokenizedGroup], DropReport]:
    """``attributes``: the attribute names of a ``model.head=attributes`` run (rated rows and pairs are read;
    see ``rated_groups``); empty for every other head."""
    cfg = resolve_max_length(cfg, encoder.tokenizer.name_or_path)  # a no-op when the driver resolved it
    report = DropReport()
    examples, rated = [], []
    parse = rated_groups.attribute_row_parser(attributes) if attributes else normalize_row
    for ex in read_examples(task, report, cfg.on_error, parse):
        if isinstance(ex, RatedExample):
            rated.append(ex)
            continue
        dropped = quality_drop(ex, drop_identical=cfg.drop_identical,
                               drop_score_disagreement=cfg.drop_score_disagreement,
                               min_response_chars=cfg.min_response_chars, max_similarity=cfg.max_similarity)
        if dropped:
            report.drop(*dropped)
            continue
        examples.append(ex)
    items = tokenize_examples(encoder, examples, cfg.max_length, cfg.overlength)
    if attributes:
        items = rated_groups.with_unrated_targets(items, len(attributes)) + \
            rated_groups.tokenize_rated(encoder, rated, cfg.max_length, cfg.overlength)
    return keep_within_budget(items, report, cfg.pack_tokens, share_prompt, task, seed)


def keep_within_budget(items, report: DropReport, pack_tokens: int, share_prompt: bool, task: ReadTask,
                       seed: int | None) -> tuple[list, DropReport]:
    """The end of every task's preparation (pairs, rated rows, stepwise rows): count the drops already decided
    (``(reason, detail)`` tuples), drop groups over the row budget, and shuffle the rest reproducibly per task."""
    groups = []
    for item in items:
        if isinstance(item, tuple):
            report.drop(*item)
        elif item.num_tokens(share_prompt) > pack_tokens:
            report.drop("over_budget", f"{item.example_id}: {item.num_tokens(share_prompt)} tokens > "
                                       f"data.pack_tokens {pack_tokens}")
        else:
            groups.append(item)
    report.rows_kept = len(groups)
    if seed is not None:
        random.Random(f"{seed}-{task.source}-{task.start}").shuffle(groups)
    return groups, report


def task_groups(task: ReadTask, encoder, data_cfg: DataConfig, settings: PackSettings):
    """(groups, drop report) of one read task: stepwise rows for prm, else preference (and, for the attribute
    head, rated) rows."""
    if settings.head == "prm":
        from ray_rm.data.step_groups import process_step_task  # imports this module

        return process_step_task(task, encoder, data_cfg, settings.share_prompt, settings.seed,
                                 settings.step_separator, settings.prm_last_step_only,
                                 settings.prm_cut_at_first_error)
    return process_task(task, encoder, data_cfg, settings.share_prompt, settings.seed, settings.attributes)


def task_rows(task: ReadTask, encoder: SequenceEncoder, data_cfg: DataConfig,
              settings: PackSettings) -> tuple[list[PackedRow], DropReport]:
    """One read task's packed rows and drop report: the work of one actor call of the Ray pipeline."""
    groups, report = task_groups(task, encoder, data_cfg, settings)
    return list(pack_groups(groups, data_cfg.pack_tokens, settings.share_prompt, data_cfg.pack_window)), report


def rows_of_tasks(tasks: list[ReadTask], encoder: SequenceEncoder, data_cfg: DataConfig,
                  settings: PackSettings) -> tuple[list[PackedRow], DropReport]:
    """Every task's rows, in order, with one merged report, in this process: the pipeline without Ray."""
    rows, report = [], DropReport()
    for task in tasks:
        task_packed, task_report = task_rows(task, encoder, data_cfg, settings)
        rows.extend(task_packed)
        report.merge(task_report)
    return rows, report
