"""The Ray Data graph: read tasks -> (normalize, filter, tokenize, pack) on an actor pool -> packed rows.

Two uses: ``tasks_dataset`` is one training rank's stream (its tasks, in the feed plan's order, under an
object-store window; see train/data_feed.py), and ``packed_dataset``/``materialize`` run every task once
(inspection tools, tests, and the materializing baseline of bench/data_scale.py).

It must not hold the per-task logic (``prepare.py``), the packing algorithm (``packer.py``) or config rules.

Each read task (a row range of one source) is prepared and packed by one actor call, so the result
is a deterministic function of (data, config, seed): task order is shuffled on the driver with the
seed, rows are shuffled within a task, and ``preserve_order`` keeps the stream in that order.
The stream carries two kinds of rows: ``packed`` rows for the model and one ``report`` row per task
(its ``DropReport`` as JSON), so drop accounting needs no side channel and survives task retries.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa

from ray_rm.config_schema import DataConfig
from ray_rm.data.prepare import (PackSettings, make_encoder, ordered_tasks, resolve_max_length, rows_of_tasks,
                                 task_rows)
from ray_rm.data.quality import DropReport
from ray_rm.data.sources import ReadTask
from ray_rm.errors import DataError
from ray_rm.packed import PackedRow, packed_row_fields, packed_row_schema

_STREAM_COLUMNS = [("kind", pa.string()), ("report_json", pa.string()), ("task_index", pa.int64())]
ROW_SCHEMA = packed_row_schema(_STREAM_COLUMNS)  # packed rows' own columns come from ray_rm/packed.py


def rows_to_table(rows: list[PackedRow], report: DropReport, task_index: int) -> pa.Table:
    """One task's report row, then its packed rows, as one Arrow table of ``ROW_SCHEMA``.

    The report comes first because the whole task was read before it was packed: a rank that stops in the
    middle of a task (``train.max_steps``) has then already counted every row of it as kept or dropped."""
    row_fields = [name for name, _ in packed_row_fields()]
    cols: dict = {k: [] for k in ROW_SCHEMA.names}
    for k in row_fields:
        cols[k].append([])
    cols["kind"].append("report")
    cols["report_json"].append(json.dumps(report.to_dict()))
    cols["task_index"].append(task_index)
    for row in rows:
        rec = row.to_record()
        for k in row_fields:
            cols[k].append(rec[k])
        cols["kind"].append("packed")
        cols["report_json"].append("")
        cols["task_index"].append(task_index)
    return pa.table(cols, schema=ROW_SCHEMA)


def prepare_and_pack(task: ReadTask, task_index: int, encoder, data_cfg: DataConfig,
                     settings: PackSettings) -> pa.Table:
    """The work of one task (``prepare.task_rows``) as the stream's Arrow table."""
    rows, report = task_rows(task, encoder, data_cfg, settings)
    return rows_to_table(rows, report, task_index)


class PrepareAndPack:
    """Ray Data actor: holds the tokenizer, turns read-task descriptors into packed rows + a report row."""

    def __init__(self, data_cfg: DataConfig, settings: PackSettings):
        self.data_cfg, self.settings = data_cfg, settings
        self.encoder = make_encoder(settings.tokenizer_path, data_cfg)

    def __call__(self, batch: dict) -> pa.Table:
        tables = []
        for task_dict, task_index in zip(batch["task"], batch["task_index"]):
            task = ReadTask.from_dict(json.loads(task_dict))
            tables.append(prepare_and_pack(task, int(task_index), self.encoder, self.data_cfg, self.settings))
        return pa.concat_tables(tables)


def packed_dataset(files: list[str], data_cfg: DataConfig, settings: PackSettings):
    """A lazy ``ray.data.Dataset`` of packed rows and per-task report rows over all read tasks, in seed order."""
    from ray.data import DataContext

    data_cfg = resolve_max_length(data_cfg, settings.tokenizer_path)
    DataContext.get_current().execution_options.preserve_order = True
    tasks = ordered_tasks(files, data_cfg, settings.seed)
    return tasks_dataset(list(enumerate(t.to_dict() for t in tasks)), data_cfg, settings, data_cfg.tokenize_actors)


def tasks_dataset(tasks: list[tuple[int, dict]], data_cfg: DataConfig, settings: PackSettings, actors: int,
                  window_bytes: int = 0, actor_cpus: float = 1.0):
    """A lazy ``ray.data.Dataset`` over the given (task index, task dict) pairs, packed on an actor pool.

    One block per task and ``preserve_order``: the stream is the tasks' rows in the given order. With
    ``window_bytes`` the dataset's own executor may hold at most that many object-store bytes (its
    ``resource_limits``): the streaming feed's window, which bounds memory whatever the data size.
    ``actor_cpus``: the logical CPUs each pack actor asks for (train/feed_plan.stream_actor_cpus)."""
    import ray
    from ray.data import ActorPoolStrategy, ExecutionOptions, ExecutionResources

    from ray_rm.ray_utils import fail_fast_actors

    items = [{"task": json.dumps(t), "task_index": i} for i, t in tasks]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(
        PrepareAndPack, fn_constructor_kwargs={"data_cfg": data_cfg, "settings": settings},
        batch_size=1, compute=ActorPoolStrategy(size=max(1, min(actors, len(items)))),
        batch_format="numpy", num_cpus=actor_cpus, **fail_fast_actors(),
    )
    if window_bytes:  # a training stream: bounded, and quiet in the worker's log
        ds.context.execution_options = ExecutionOptions(
            preserve_order=True, resource_limits=ExecutionResources(object_store_memory=window_bytes))
        ds.context.enable_progress_bars = False
    else:
        ds.context.execution_options.preserve_order = True
    return ds


def direct_task_records(tasks: list[tuple[int, dict]], encoder, data_cfg: DataConfig,
                        settings: PackSettings) -> Iterator[dict]:
    """The records ``tasks_dataset`` streams (each task's report row, then its packed rows), computed in this
    process without Ray: the reference in tests, and the eval feed's source (eval shards are small)."""
    for index, task in tasks:
        yield from prepare_and_pack(ReadTask.from_dict(task), index, encoder, data_cfg, settings).to_pylist()


def direct_packed_rows(files: list[str], data_cfg: DataConfig, settings: PackSettings) -> tuple[list[PackedRow], DropReport]:
    """What the pipeline yields, computed without Ray (the reference in tests and for small tools)."""
    data_cfg = resolve_max_length(data_cfg, settings.tokenizer_path)
    encoder = make_encoder(settings.tokenizer_path, data_cfg)
    return rows_of_tasks(ordered_tasks(files, data_cfg, settings.seed), encoder, data_cfg, settings)


_DATA_ERROR_LINE = re.compile(r"^ray_rm\.errors\.DataError: (.+)$", re.M)


def data_error_from(exc: BaseException) -> DataError | None:
    """The ``DataError`` (strict mode) behind a Ray Data failure, or None.

    Ray Data wraps a UDF's exception in ``UserCodeException`` and ships only its traceback text to
    the driver, so the original object is lost; its one-line message is recovered from that text so
    that jobs report "file, row N, field 'x': ..." instead of a cluster traceback."""
    if isinstance(exc, DataError):
        return exc
    found = _DATA_ERROR_LINE.findall(str(exc))
    return DataError(found[-1]) if found else None


@dataclass
class PreparedData:
    """A materialized packed dataset with its exact counts, ready for ``get_dataset_shard``."""

    dataset: object  # ray.data.Dataset of packed rows only
    report: DropReport
    num_rows: int
    num_groups: int
    num_tokens: int


def materialize(files: list[str], data_cfg: DataConfig, settings: PackSettings) -> PreparedData:
    """Run the pipeline once on the cluster; the driver learns the drop report and exact sizes."""
    from ray.data.expressions import col
    from ray.exceptions import RayError

    try:
        ds = packed_dataset(files, data_cfg, settings).materialize()
    except RayError as exc:
        user_error = data_error_from(exc)
        if user_error is None:
            raise
        raise user_error from None
    reports = ds.filter(expr=col("kind") == "report").select_columns(["report_json"]).take_all()
    report = DropReport()
    for r in reports:
        report.merge(DropReport.from_dict(json.loads(r["report_json"])))
    packed = ds.filter(expr=col("kind") == "packed").materialize()
    sizes = packed.select_columns(["group_sizes", "seq_laid_out_lens", "group_prefix_lens"]).take_all()
    num_tokens = sum(sum(r["seq_laid_out_lens"]) + sum(r["group_prefix_lens"]) for r in sizes)
    return PreparedData(packed, report, len(sizes), sum(len(r["group_sizes"]) for r in sizes), num_tokens)
