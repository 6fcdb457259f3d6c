"""The data feed of training: how packed rows reach the workers, and which row each worker trains on.

What this module is for: the whole hand-off between the driver's prepared data and the train loop, behind
a small interface: ``trainer_datasets`` (driver side: what ``TorchTrainer`` receives) and ``WorkerFeed``
(worker side: ``steps(epoch, start_step)`` and ``eval_rows()``). The train loop reads nothing else, so
another feed (e.g. streaming at cluster scale) replaces this module without touching the loop. What it
must not do: tokenize or pack (``ray_rm/data``), or run the model.

Which row: decided by arithmetic instead of by who asks first. Every worker reads the same materialized dataset (``DataConfig(datasets_to_split=[])``) and keeps
the rows of its data-parallel rank. Position k of an epoch goes to
    step = k // (dp * gas),  micro-batch = (k // dp) % gas,  dp rank = k % dp,
so the assignment is identical on every run with the same seed: a resumed or restarted run continues
at exactly the next row, and the S ranks of a sequence-parallel group get the same rows. Epoch 0
keeps the pipeline's (seeded) order; later epochs reshuffle within windows of rows, which bounds the
memory a worker buffers. Positions past the end of the data become empty (dummy) micro-batches so
every rank runs the same number of steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from ray_rm.packed import PackedRow


@dataclass(frozen=True)
class RowSchedule:
    num_rows: int
    dp_size: int
    micro_steps: int  # gradient accumulation
    seed: int = 0
    shuffle_window: int = 1024

    @property
    def rows_per_step(self) -> int:
        return self.dp_size * self.micro_steps

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.num_rows / self.rows_per_step))

    def epoch_order(self, epoch: int) -> np.ndarray:
        """order[k] = dataset index trained at epoch position k."""
        order = np.arange(self.num_rows)
        if epoch == 0:
            return order
        for w, start in enumerate(range(0, self.num_rows, self.shuffle_window)):
            stop = min(self.num_rows, start + self.shuffle_window)
            rng = np.random.default_rng([self.seed, epoch, w])
            order[start:stop] = start + rng.permutation(stop - start)
        return order

    def position(self, step_in_epoch: int, micro: int, dp_rank: int) -> int:
        return step_in_epoch * self.rows_per_step + micro * self.dp_size + dp_rank


def iter_rank_rows(rows: Iterable[dict], schedule: RowSchedule, epoch: int, dp_rank: int,
                   start_step: int = 0) -> Iterator[tuple[int, PackedRow]]:
    """(epoch position, row) for this rank, in position order, starting at ``start_step``."""
    order = schedule.epoch_order(epoch)
    position_of = np.empty_like(order)
    position_of[order] = np.arange(schedule.num_rows)
    first = start_step * schedule.rows_per_step
    window = schedule.shuffle_window if epoch else 1
    pending: dict[int, dict] = {}
    for i, rec in enumerate(rows):
        k = int(position_of[i])
        if k >= first and k % schedule.dp_size == dp_rank:
            pending[k] = rec
        if (i + 1) % window == 0 or i + 1 == schedule.num_rows:
            for k in sorted(pending):
                yield k, PackedRow.from_record(pending[k])
            pending.clear()


def iter_steps(rows: Iterable[dict], schedule: RowSchedule, epoch: int, dp_rank: int,
               start_step: int = 0) -> Iterator[tuple[int, list]]:
    """(step in epoch, [PackedRow or None per micro-batch]) for this rank; None = no row left (dummy)."""
    source = iter_rank_rows(rows, schedule, epoch, dp_rank, start_step)
    nxt = next(source, None)
    for step in range(start_step, schedule.steps_per_epoch):
        micro_rows = []
        for micro in range(schedule.micro_steps):
            k = schedule.position(step, micro, dp_rank)
            if nxt is not None and nxt[0] == k:
                micro_rows.append(nxt[1])
                nxt = next(source, None)
            else:
                micro_rows.append(None)
        yield step, micro_rows


def iter_eval_rows(rows: Iterable[dict], num_rows: int, dp_size: int, dp_rank: int) -> Iterator:
    """This rank's eval rows (k % dp == rank), padded with None so every rank runs the same count."""
    count = 0
    for k, rec in enumerate(rows):
        if k % dp_size == dp_rank:
            count += 1
            yield PackedRow.from_record(rec)
    for _ in range(math.ceil(num_rows / dp_size) - count):
        yield None


def trainer_datasets(train, evald) -> tuple[dict, object, dict]:
    """Driver side: (datasets for ``TorchTrainer``, its ``DataConfig``, the row counts the workers' feed needs).

    ``train``/``evald`` are ``data.pipeline.PreparedData`` (materialized, counted); every worker reads the whole
    dataset (no split) and keeps its own rows by arithmetic."""
    from ray.train import DataConfig

    datasets = {"train": train.dataset}
    if evald is not None:
        datasets["eval"] = evald.dataset
    counts = {"train_rows": train.num_rows, "eval_rows": evald.num_rows if evald is not None else 0}
    return datasets, DataConfig(datasets_to_split=[]), counts


class WorkerFeed:
    """Worker side: this rank's rows for each step of an epoch, and its share of the eval rows."""

    def __init__(self, train_rows: Iterable[dict] | None, eval_rows: Iterable[dict] | None, schedule: RowSchedule,
                 num_eval_rows: int, dp_rank: int):
        self._train, self._eval = train_rows, eval_rows
        self.schedule, self.num_eval_rows, self.dp_rank = schedule, num_eval_rows, dp_rank

    @classmethod
    def from_ray_train(cls, loop_config: dict, tc, dp_size: int, dp_rank: int) -> "WorkerFeed":
        """The shards ``trainer_datasets`` handed to ``TorchTrainer``, read through ``ray.train``."""
        import ray.train

        schedule = RowSchedule(loop_config["train_rows"], dp_size, tc.micro_steps_per_update, tc.seed,
                               tc.shuffle_window_rows)
        eval_shard = ray.train.get_dataset_shard("eval") if loop_config["eval_rows"] else None
        return cls(ray.train.get_dataset_shard("train"), eval_shard, schedule, loop_config["eval_rows"], dp_rank)

    @property
    def has_eval(self) -> bool:
        return self._eval is not None

    def _rows(self, source) -> Iterable[dict]:
        return source.iter_rows() if hasattr(source, "iter_rows") else source

    def steps(self, epoch: int, start_step: int = 0) -> Iterator[tuple[int, list]]:
        """(step in epoch, [PackedRow or None per micro-batch]) from ``start_step`` to the end of ``epoch``."""
        return iter_steps(self._rows(self._train), self.schedule, epoch, self.dp_rank, start_step)

    def eval_rows(self) -> Iterator:
        """This rank's eval rows, padded with None so that every rank runs the same number."""
        return iter_eval_rows(self._rows(self._eval), self.num_eval_rows, self.schedule.dp_size, self.dp_rank)
