"""The worker's half of the streaming data feed: this rank's packed rows, step by step, while it trains.

What this module is for: ``WorkerFeed`` (``steps(epoch, start_step)``, ``eval_rows()``, ``data_summary()``),
the only thing the train loop reads data through. What it must not do: decide which tasks exist or
which rank reads them (``train/feed_plan.py``), tokenize or pack (``ray_rm/data``), or run the model.

Design (issue 14): each data-parallel rank streams its own tasks (``feed_plan.rank_tasks``) through its
own lazy Ray Data pipeline (read + tokenize + pack on a small actor pool, ``preserve_order``), iterated
inside the train loop while the model trains. Why per-rank pipelines and not ``streaming_split`` of one
shared dataset: streaming_split hands blocks to whichever split asks first, so which rank trains a row
(and where a resumed run continues) would depend on timing; per-rank pipelines make it arithmetic.
Each pipeline's executor is capped at ``data.stream_window_mb`` of object store (its resource limit),
so memory is bounded by the window, not the data; the first step waits for one task, not the data set.
The S ranks of a sequence-parallel group run the same pipeline (identical rows; their read and
tokenize work is repeated S times, a small factor next to dp).

Which row at which step: step ``s`` of an epoch trains the rank's stream rows ``[s*gas, (s+1)*gas)``.
Streams are uneven, so before each step every rank all-reduces "I still have a row"; a rank whose
stream ran out trains empty rows (zero loss) until no rank has one, and the epoch ends on the same step
everywhere. A resumed run rebuilds the epoch's stream and skips ``start_step*gas`` rows: the skipped
tasks are packed again (resume cost grows with the epoch's progress, not the data set), and since packing
is per task and seeded, it continues at exactly the next row. From the second epoch on the task order is
re-permuted and rows are shuffled within windows of ``train.shuffle_window_rows``.

Drop accounting: the stream carries one report row per task, so the rank's ``StreamStats`` accounts for
every row its tasks read; ``data_summary`` gathers them (from one rank per SP group) at the end.
Eval: this rank's share of the eval tasks (position % dp), packed once in this process (eval shards are
small; a second actor pool next to the training stream's would compete for the CPUs), then padded
with empty rows to the largest rank's count so every rank runs the same forwards.
"""
from __future__ import annotations

import itertools
import json
from typing import Callable, Iterable, Iterator

import numpy as np

from ray_rm.data.quality import DropReport
from ray_rm.errors import UserError
from ray_rm.packed import PackedRow
from ray_rm.train.feed_plan import FeedPlan, rank_tasks

Source = Callable[[list], Iterable[dict]]  # (task index, task dict) list -> stream records


class StreamStats:
    """Counts of the records a stream produced: packed rows, groups, tokens, and the merged drop report."""

    def __init__(self):
        self.rows = self.groups = self.tokens = 0
        self.report = DropReport()

    def observe(self, rec: dict) -> PackedRow | None:
        """The record's packed row (counted), or None for a task's report row (merged)."""
        if rec["kind"] == "report":
            self.report.merge(DropReport.from_dict(json.loads(rec["report_json"])))
            return None
        row = PackedRow.from_record(rec)
        self.rows += 1
        self.groups += len(row.group_ids)
        self.tokens += row.num_tokens
        return row

    def to_dict(self) -> dict:
        return {"rows": self.rows, "groups": self.groups, "tokens": self.tokens, "report": self.report.to_dict()}


def merge_stats(parts: list[dict]) -> dict:
    """Sum of ``StreamStats.to_dict()`` records (one per data-parallel rank)."""
    report = DropReport()
    for p in parts:
        report.merge(DropReport.from_dict(p["report"]))
    return {"rows": sum(p["rows"] for p in parts), "groups": sum(p["groups"] for p in parts),
            "tokens": sum(p["tokens"] for p in parts), "report": report.to_dict()}


def window_shuffle(rows: Iterable, key: list[int], window: int) -> Iterator:
    """Rows shuffled within consecutive windows of ``window``, seeded by ``key`` + the window's index."""
    it = iter(rows)
    for w in itertools.count():
        chunk = list(itertools.islice(it, window))
        if not chunk:
            return
        for i in np.random.default_rng([*key, w]).permutation(len(chunk)):
            yield chunk[i]


def iter_steps(rows: Iterable, micro_steps: int, start_step: int,
               any_rank_has: Callable[[bool], bool]) -> Iterator[tuple[int, list, bool]]:
    """(step in epoch, [row or None per micro-batch], last step of the epoch) from ``start_step`` on.

    Step s takes rows [s*gas, (s+1)*gas) of this rank's stream; ``any_rank_has`` (a collective) keeps
    every rank stepping until no rank has a row. One step is looked ahead so the last step is known."""
    it = iter(rows)
    for _ in itertools.islice(it, start_step * micro_steps):
        pass

    def take() -> list | None:
        micro = [next(it, None) for _ in range(micro_steps)]
        return micro if any_rank_has(micro[0] is not None) else None

    step, current = start_step, take()
    while current is not None:
        following = take()
        yield step, current, following is None
        step, current = step + 1, following


def any_rank_has(flag: bool) -> bool:
    from ray_rm.train.collectives import all_reduce_floats

    return all_reduce_floats([1.0 if flag else 0.0], op="max")[0] > 0


def max_over_ranks(value: int) -> int:
    from ray_rm.train.collectives import all_reduce_floats

    return int(all_reduce_floats([float(value)], op="max")[0])


def ray_data_source(plan: FeedPlan) -> Source:
    """This rank's tasks through its own Ray Data pipeline, capped at the plan's window."""
    from ray.exceptions import RayError

    from ray_rm.data.pipeline import data_error_from, tasks_dataset

    def stream(tasks: list) -> Iterator[dict]:
        if not tasks:
            return
        ds = tasks_dataset(tasks, plan.data_cfg, plan.settings, plan.actors_per_rank, plan.window_bytes,
                           plan.actor_cpus)
        try:
            yield from ds.iter_rows()
        except RayError as exc:
            user_error = data_error_from(exc)
            if user_error is None:
                raise
            raise user_error from None
    return stream


def direct_source(plan: FeedPlan, settings=None) -> Source:
    """The same records computed in this process (the eval feed; the reference in tests)."""
    from ray_rm.data.pipeline import direct_task_records, make_encoder

    encoder = []

    def stream(tasks: list) -> Iterator[dict]:
        if not encoder:
            encoder.append(make_encoder(plan.settings.tokenizer_path, plan.data_cfg))
        return direct_task_records(tasks, encoder[0], plan.data_cfg, settings or plan.settings)
    return stream


class WorkerFeed:
    """This rank's training rows step by step, its eval rows, and the data summary gathered at the end."""

    def __init__(self, plan: FeedPlan, dp_size: int, dp_rank: int, micro_steps: int, seed: int,
                 shuffle_window: int, source: Source, eval_source: Source, counts_for_group: bool = True):
        self.plan, self.dp_size, self.dp_rank = plan, dp_size, dp_rank
        self.micro_steps, self.seed, self.shuffle_window = micro_steps, seed, shuffle_window
        self._source, self._eval_source = source, eval_source
        self._counts = counts_for_group  # one rank per sequence-parallel group reports the data summary
        self._epoch_stats: StreamStats | None = None
        self._complete_stats: StreamStats | None = None
        self._eval: tuple[list, StreamStats, int] | None = None

    @classmethod
    def from_ray_train(cls, loop_config: dict, tc, dp_size: int, dp_rank: int) -> "WorkerFeed":
        """The plan the driver put in the loop config, streamed through Ray Data on this worker."""
        import ray.train

        plan: FeedPlan = loop_config["feed_plan"]
        sp_rank = ray.train.get_context().get_world_rank() % tc.sequence_parallel_size
        return cls(plan, dp_size, dp_rank, tc.micro_steps_per_update, tc.seed, tc.shuffle_window_rows,
                   ray_data_source(plan), direct_source(plan, plan.eval_settings), counts_for_group=sp_rank == 0)

    def _rank_rows(self, epoch: int) -> Iterator[PackedRow]:
        stats = self._epoch_stats = StreamStats()
        records = self._source(rank_tasks(self.plan.train_tasks, epoch, self.seed, self.dp_size, self.dp_rank))
        rows = (row for row in map(stats.observe, records) if row is not None)
        return window_shuffle(rows, [self.seed, epoch, self.dp_rank], self.shuffle_window) if epoch else rows

    def steps(self, epoch: int, start_step: int = 0) -> Iterator[tuple[int, list, bool]]:
        """(step in epoch, [PackedRow or None per micro-batch], last step of the epoch) from ``start_step``."""
        stepped = False
        for step, rows, last in iter_steps(self._rank_rows(epoch), self.micro_steps, start_step, any_rank_has):
            stepped = True
            if last:  # the look-ahead found every rank's stream at its end: this epoch's counts are complete
                self._complete_stats = self._epoch_stats
            yield step, rows, last
        self._complete_stats = self._epoch_stats
        if not stepped and start_step == 0:
            raise UserError("no training rows left after filtering; see the drop report "
                            f"(this rank read: {self._epoch_stats.report.format()})")

    def _eval_shard(self) -> tuple[list, StreamStats, int]:
        if self._eval is None:
            stats = StreamStats()
            mine = [(i, t) for i, t in enumerate(self.plan.eval_tasks) if i % self.dp_size == self.dp_rank]
            rows = [row for row in map(stats.observe, self._eval_source(mine)) if row is not None]
            self._eval = (rows, stats, max_over_ranks(len(rows)))  # a collective: every rank calls it once
        return self._eval

    @property
    def has_eval(self) -> bool:
        """True when any rank has eval rows (a collective the first time: call it on every rank)."""
        return bool(self.plan.eval_tasks) and self._eval_shard()[2] > 0

    def eval_rows(self) -> Iterator:
        """This rank's eval rows, padded with None to the largest rank's count (the same forwards everywhere)."""
        rows, _, most = self._eval_shard()
        return iter(rows + [None] * (most - len(rows)))

    def data_summary(self) -> dict:
        """Rows, groups, tokens and drop reports of the train data (the last complete epoch, else what was read)
        and of the eval data, summed over data-parallel ranks. A collective: every rank calls it."""
        from ray_rm.train.collectives import all_gather_objects

        train = self._complete_stats or self._epoch_stats or StreamStats()
        evald = self._eval[1] if self._eval else None
        mine = {"train": train.to_dict(), "eval": evald.to_dict() if evald else None} if self._counts else None
        parts = [p for p in all_gather_objects(mine) if p is not None]
        evals = [p["eval"] for p in parts if p["eval"] is not None]
        train_parts = [p["train"] for p in parts]  # in dp-rank order
        return {"train": {**merge_stats(train_parts), "rows_per_dp_rank": [p["rows"] for p in train_parts]},
                "eval": merge_stats(evals) if evals else None}
