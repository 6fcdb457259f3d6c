"""The Ray Data stage shared by relabeling and evaluation: task descriptors -> an actor pool of scorers.

What this module is for: running one scoring actor class over read tasks. What it must not do: know what an
actor computes (relabel and eval pass their own actor class), write outputs or show progress (the jobs
draw one row-level bar of their own, ray_rm/progress.py).

Each input item is one read task (a row range); a callable-class actor holds one model replica and
handles one task per call (``batch_size=1``), so the pool streams: tasks are read, scored and
written while later ones wait, and the driver only receives one small result row per task.
"""
from __future__ import annotations

from typing import Iterator


def resolve_gpus(requested: float) -> float:
    """-1 = one GPU per actor when the cluster has any, else 0; other values are used as given."""
    if requested >= 0:
        return requested
    import ray

    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def map_tasks(items: list[dict], actor_cls, ctor_kwargs: dict, *, actors: int, cpus_per_actor: float,
              gpus_per_actor: float) -> Iterator[dict]:
    """Run ``actor_cls`` over ``items`` (one block each) on an actor pool; yield result rows as they finish."""
    import ray
    from ray.data import ActorPoolStrategy

    from ray_rm.ray_utils import fail_fast_actors

    if not items:
        return
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(actor_cls, fn_constructor_kwargs=ctor_kwargs, batch_size=1, batch_format="numpy",
                        compute=ActorPoolStrategy(size=max(1, min(actors, len(items)))),
                        num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None, **fail_fast_actors())
    # Per-dataset settings (the dataset holds its own copy of the context; the global one is left alone):
    ds.context.enable_progress_bars = False  # the jobs show one row-level progress bar of their own
    ds.context.execution_options.preserve_order = False  # results carry their task index
    yield from ds.iter_rows()
