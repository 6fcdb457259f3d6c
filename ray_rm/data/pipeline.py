"""The Ray Data graph: read tasks -> (normalize, filter, tokenize, pack) on an actor pool -> packed rows.

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

import pyarrow as pa

from ray_rm.config_schema import DataConfig
from ray_rm.data.prepare import (PackSettings, make_encoder, ordered_tasks, resolve_max_length, rows_of_tasks,
                                 task_rows)
from ray_rm.data.quality import DropReport
from ray_rm.data.sources import ReadTask
from ray_rm.errors import DataError
from ray_rm.packed import PackedRow, packed_row_fields, packed_row_schema

_STREAM_COLUMNS = [("kind", pa.string()), ("report_json", pa.string()), ("task_index", pa.int64()),
                   ("row_in_task", pa.int64())]
ROW_SCHEMA = packed_row_schema(_STREAM_COLUMNS)  # packed rows' own columns come from ray_rm/packed.py


def rows_to_table(rows: list[PackedRow], report: DropReport, task_index: int) -> pa.Table:
    """One task's packed rows plus its report row, as one Arrow table of ``ROW_SCHEMA``."""
    row_fields = [name for name, _ in packed_row_fields()]
    cols: dict = {k: [] for k in ROW_SCHEMA.names}
    for i, row in enumerate(rows):
        rec = row.to_record()
        for k in row_fields:
            cols[k].append(rec[k])
        cols["kind"].append("packed")
        cols["report_json"].append("")
        cols["task_index"].append(task_index)
        cols["row_in_task"].append(i)
    for k in row_fields:
        cols[k].append([])
    cols["kind"].append("report")
    cols["report_json"].append(json.dumps(report.to_dict()))
    cols["task_index"].append(task_index)
    cols["row_in_task"].append(len(rows))
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
    """A lazy, streaming ``ray.data.Dataset`` of packed rows and per-task report rows."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from ray_rm.ray_utils import fail_fast_actors

    data_cfg = resolve_max_length(data_cfg, settings.tokenizer_path)
    DataContext.get_current().execution_options.preserve_order = True
    tasks = ordered_tasks(files, data_cfg, settings.seed)
    items = [{"task": json.dumps(t.to_dict()), "task_index": i} for i, t in enumerate(tasks)]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    return ds.map_batches(
        PrepareAndPack, fn_constructor_kwargs={"data_cfg": data_cfg, "settings": settings},
        batch_size=1, compute=ActorPoolStrategy(size=max(1, min(data_cfg.tokenize_actors, len(tasks)))),
        batch_format="numpy", num_cpus=1, **fail_fast_actors(),
    )


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
