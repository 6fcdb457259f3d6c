"""The driver's half of the streaming data feed: which read tasks exist, which rank reads which, and how
many steps an epoch is expected to take.

What this module is for: ``plan_feed`` (run once on the driver, before any worker starts, without
tokenizing the data set) and the task -> rank arithmetic that the workers (``train/data_feed.py``)
apply to it. What it must not do: read or pack rows for training (the workers stream them), or
touch Ray Train.

Assignment is arithmetic, never "who asks first": the tasks of epoch ``e`` are put in an order that is
a pure function of (plan, seed, e), and are dealt to ranks by rows, largest task first, each to the rank
with the fewest rows so far (ties: earlier in the order, lower rank); each rank reads its tasks in the
epoch's order. Dealing by position (``p % dp``) was uneven whenever tasks differ in size (a file's last
task is short): measured 349 vs 188 rows on 2 ranks for 4 files of 2500 rows, a third of one rank's
steps empty. By rows, ranks differ by at most one task's rows (equal tasks: by position, as before). Every packed row therefore comes from exactly one data-parallel group, every run
with the same seed reads the same rows in the same order, and the S ranks of a sequence-parallel
group (same dp rank) read identical rows. Because packing is done per task, a task's rows are
reproducible, which is what exact resume rests on.

Small data sets: a source of fewer rows than ``data.rows_per_read_task`` would be one task, read by
one rank while the others only run empty rows; tasks are therefore split until every rank has at least
``MIN_TASKS_PER_RANK`` (the packing unit shrinks with it, so fill can drop slightly on tiny sets).

Steps per epoch (for the LR schedule): estimated from a sample, not counted. The first task's first
``data.step_estimate_pairs`` pairs are tokenized and packed on the driver; the kept fraction and pairs per
packed row they show are applied to every rank's exact pair count (known from planning). The run itself
still ends after exactly ``train.num_epochs`` epochs (or ``train.max_steps`` steps, which also sets the
schedule exactly); a wrong estimate only stretches or cuts the cosine decay (past its end the LR stays at
the floor). A full counting pass would be exact but costs a whole tokenization of the data on the
critical path before step 1, which is what streaming removes.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from ray_rm.config_schema import DataConfig
from ray_rm.data.pipeline import PackSettings, ordered_tasks, prepare_and_pack
from ray_rm.data.sources import ReadTask

MIN_TASKS_PER_RANK = 2


@dataclass(frozen=True)
class FeedPlan:
    """Everything a worker needs to stream its rows; built on the driver, shipped in the loop config."""

    train_tasks: list  # task dicts in epoch-0 order
    eval_tasks: list  # task dicts, file order
    data_cfg: DataConfig  # max_length resolved
    settings: PackSettings  # train packing (seeded shuffle within tasks)
    eval_settings: PackSettings  # eval packing (no shuffle)
    actors_per_rank: int  # each rank's tokenize/pack actor pool
    actor_cpus: float  # logical CPUs each of those actors asks Ray for (see stream_actor_cpus)
    window_bytes: int  # object-store bytes each rank's stream may hold
    estimated_steps_per_epoch: int


def task_rows(task: dict) -> int:
    return task["stop"] - task["start"]


def balanced_tasks(files: list[str], data_cfg: DataConfig, seed: int | None, dp_size: int) -> list[dict]:
    """Read tasks (as dicts, in seeded order), split finer when there are fewer than MIN_TASKS_PER_RANK a rank."""
    tasks = ordered_tasks(files, data_cfg, seed)
    wanted = MIN_TASKS_PER_RANK * dp_size
    if len(tasks) < wanted:
        total = sum(t.stop - t.start for t in tasks)
        finer = max(1, math.ceil(total / wanted))
        if finer < data_cfg.rows_per_read_task:
            tasks = ordered_tasks(files, replace(data_cfg, rows_per_read_task=finer), seed)
    return [t.to_dict() for t in tasks]


def epoch_task_order(num_tasks: int, epoch: int, seed: int) -> list[int]:
    """Task positions in the order epoch ``epoch`` reads them: the planned order first, a seeded permutation after."""
    order = list(range(num_tasks))
    if epoch:
        random.Random(f"{seed}-epoch-{epoch}").shuffle(order)
    return order


def rank_tasks(tasks: list, epoch: int, seed: int, dp_size: int, dp_rank: int) -> list[tuple[int, dict]]:
    """(task index, task) that data-parallel rank ``dp_rank`` reads in ``epoch``, in reading order."""
    order = epoch_task_order(len(tasks), epoch, seed)
    rows = [0] * dp_size
    owner = {}
    for position in sorted(range(len(order)), key=lambda p: (-task_rows(tasks[order[p]]), p)):
        rank = min(range(dp_size), key=lambda r: (rows[r], r))
        owner[order[position]] = rank
        rows[rank] += task_rows(tasks[order[position]])
    return [(i, tasks[i]) for i in order if owner[i] == dp_rank]


def estimate_steps_per_epoch(tasks: list[dict], encoder, data_cfg: DataConfig, settings: PackSettings,
                             dp_size: int, micro_steps: int) -> int:
    """Steps of epoch 0 from a packed sample of the first task (see the module docstring)."""
    if not tasks:
        return 1
    first = ReadTask.from_dict(tasks[0])
    sample = replace(first, stop=min(first.stop, first.start + max(1, data_cfg.step_estimate_pairs)))
    table = prepare_and_pack(sample, 0, encoder, data_cfg, settings)
    packed = table.column("kind").to_pylist().count("packed")
    if not packed:
        return 1
    rows_per_pair = packed / (sample.stop - sample.start)  # packed rows per pair read: drops included
    steps = []
    for rank in range(dp_size):
        pairs = sum(task_rows(t) for _, t in rank_tasks(tasks, 0, 0, dp_size, rank))
        steps.append(math.ceil(pairs * rows_per_pair / micro_steps))
    return max(1, max(steps))


def stream_actor_cpus(free_cpus: float, streams: int, actors_per_stream: int) -> float:
    """Logical CPUs per stream actor: 1, or the share of ``free_cpus`` (what the cluster has left once the train
    workers are placed) when that is less than one each, down to 0.

    Why: a train worker waits for its first row, and its stream's actors wait for CPUs; if the cluster cannot
    place them (a small local cluster the workers fill, other jobs holding CPUs) the job hangs before step 1
    with nothing in the log. With a share the actors start and time-share the cores with training, which is
    what they do on one machine anyway; on a cluster with spare CPU nodes they keep a whole CPU each."""
    wanted = streams * actors_per_stream
    if free_cpus >= wanted:
        return 1.0
    return math.floor(max(0.0, free_cpus) / wanted * 100) / 100


def plan_feed(cfg, settings: PackSettings, encoder, dp_size: int, free_cpus: float = math.inf) -> FeedPlan:
    """The streaming feed's plan for a train job config (``cfg.data`` with max_length resolved); ``free_cpus``:
    the cluster's logical CPUs left for the stream actors once the train workers are placed."""
    data_cfg, tc = cfg.data, cfg.train
    train_tasks = balanced_tasks(data_cfg.train_files, data_cfg, settings.seed, dp_size)
    eval_settings = replace(settings, seed=None)
    eval_tasks = balanced_tasks(data_cfg.eval_files, data_cfg, None, dp_size) if data_cfg.eval_files else []
    estimate = estimate_steps_per_epoch(train_tasks, encoder, data_cfg, settings, dp_size, tc.micro_steps_per_update)
    actors = max(1, math.ceil(data_cfg.tokenize_actors / dp_size))
    return FeedPlan(train_tasks, eval_tasks, data_cfg, settings, eval_settings, actors_per_rank=actors,
                    actor_cpus=stream_actor_cpus(free_cpus, tc.num_workers, actors),  # every SP rank streams
                    window_bytes=data_cfg.stream_window_mb * 2 ** 20, estimated_steps_per_epoch=estimate)
