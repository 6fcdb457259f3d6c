"""Measurement probes for bench/data_scale.py: object-store and driver-RSS samplers on the driver, and the
worker-side tiny train step and per-rank counters every data-feed design reports the same way.

Object-store bytes come from the raylet's ``FormatGlobalMemoryInfo`` RPC (the call behind ``ray memory
--stats-only``; ``ray._private.internal_api.get_memory_info_reply``): ``store_stats.object_store_bytes_used``
aggregated over all nodes, plus the primary-copy, fallback (spilled to disk because the store was full) and
spilled byte counters. It is a private API in Ray 2.60; ``ObjectStoreSampler.last_error`` says when it broke.

Benchmark tooling only: the library must not import it, and it must not change what it measures (the
samplers poll from a daemon thread every ``interval`` seconds; one poll costs ~1-3 ms of the driver).
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time

_STORE_FIELDS = ("object_store_bytes_used", "object_store_bytes_primary_copy", "object_store_bytes_fallback",
                 "spilled_bytes_total", "num_local_objects")


class ObjectStoreSampler:
    """Peak cluster object-store usage (and driver RSS) between ``start()`` and ``stop()``."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.peak = dict.fromkeys(_STORE_FIELDS, 0)
        self.peak_driver_rss = 0
        self.samples = 0
        self.last_error: str | None = None
        self.timeline: list[tuple[float, int]] = []  # (seconds since start, bytes used), thinned to <= 2000 points
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="object-store-sampler", daemon=True)

    def start(self) -> "ObjectStoreSampler":
        import ray
        from ray._private.internal_api import get_state_from_address

        self._state = get_state_from_address(ray.get_runtime_context().gcs_address)
        self._t0 = time.time()
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sample()  # one last reading after the run
        return self.summary()

    def sample(self) -> None:
        import psutil

        self.peak_driver_rss = max(self.peak_driver_rss, psutil.Process().memory_info().rss)
        try:
            from ray._private.internal_api import get_memory_info_reply

            stats = get_memory_info_reply(self._state, timeout_seconds=5).store_stats
        except Exception as exc:  # noqa: BLE001 - a private RPC: record why it failed, keep the run going
            self.last_error = f"{type(exc).__name__}: {exc}"
            return
        for name in _STORE_FIELDS:
            self.peak[name] = max(self.peak[name], int(getattr(stats, name)))
        self.samples += 1
        self.timeline.append((round(time.time() - self._t0, 2), int(stats.object_store_bytes_used)))
        if len(self.timeline) > 2000:
            self.timeline = self.timeline[::2]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def summary(self) -> dict:
        return {"peak_object_store_bytes": self.peak["object_store_bytes_used"],
                "peak_object_store_primary_bytes": self.peak["object_store_bytes_primary_copy"],
                "object_store_fallback_bytes": self.peak["object_store_bytes_fallback"],
                "spilled_bytes": self.peak["spilled_bytes_total"], "peak_objects": self.peak["num_local_objects"],
                "peak_driver_rss_bytes": self.peak_driver_rss, "object_store_samples": self.samples,
                "object_store_error": self.last_error, "object_store_timeline": self.timeline}


class RankCounters:
    """What one worker saw: rows it iterated, rows it trained on, pairs and tokens, first/last step times."""

    def __init__(self):
        self.rows_read = 0
        self.rows_trained = 0
        self.dummy_rows = 0
        self.pairs = 0
        self.tokens = 0
        self.steps = 0
        self.first_step_time: float | None = None
        self.last_step_time: float | None = None
        self.first_row_time: float | None = None
        self.first_step_pairs = 0  # pairs of the first step (the steady rate counts the pairs after it)

    def saw_row(self) -> None:
        self.rows_read += 1
        if self.first_row_time is None:
            self.first_row_time = time.time()

    def stepped(self, rows: list) -> None:
        """Called after an optimizer step on ``rows`` (None = a dummy row of an exhausted rank)."""
        now = time.time()
        self.steps += 1
        self.first_step_time = self.first_step_time or now
        self.last_step_time = now
        for row in rows:
            if row is None:
                self.dummy_rows += 1
            else:
                self.rows_trained += 1
                self.pairs += len(row.group_ids)
                self.tokens += len(row.input_ids)
        if self.steps == 1:
            self.first_step_pairs = self.pairs


class TinyStep:
    """A real but tiny optimizer step (hashed-token EmbeddingBag -> linear -> Bradley-Terry-like loss) with an
    all-reduce of its gradients, so every rank steps in lock-step like DDP while data cost dominates.
    ``noop=True`` keeps only the all-reduce (the collective that makes uneven shards deadlock)."""

    def __init__(self, noop: bool = False, buckets: int = 4096, dim: int = 16):
        import torch

        torch.manual_seed(0)
        self.noop = noop
        self.buckets = buckets
        self.model = torch.nn.Sequential(torch.nn.EmbeddingBag(buckets, dim, mode="mean"), torch.nn.Linear(dim, 1))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3)

    def __call__(self, rows: list) -> None:
        import torch
        import torch.distributed as dist

        if self.noop:
            dist.all_reduce(torch.zeros(1))
            return
        self.opt.zero_grad()
        loss = torch.zeros(())
        for row in rows:
            if row is None or not row.reward_index:
                continue
            ids = torch.tensor(row.input_ids, dtype=torch.long) % self.buckets
            # one bag per sequence: the tokens after the previous sequence's reward token through its own
            offsets = torch.tensor([-1] + list(row.reward_index[:-1]), dtype=torch.long) + 1
            rewards = self.model[1](self.model[0](ids, offsets)).squeeze(-1)
            even = rewards[: len(rewards) // 2 * 2]  # (chosen, rejected) sequence pairs
            loss = loss + torch.nn.functional.softplus(even[1::2] - even[0::2]).mean()
        if loss.requires_grad:
            loss.backward()
        for p in self.model.parameters():
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            dist.all_reduce(grad)
            p.grad = grad
        self.opt.step()


def report_counters(counters: RankCounters, extra: dict | None = None) -> None:
    """Gather every rank's counters to rank 0, which reports them (Ray Train keeps rank 0's metrics)."""
    import ray.train
    import torch.distributed as dist

    mine = dict(vars(counters), rank=ray.train.get_context().get_world_rank(), pid=os.getpid(), **(extra or {}))
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    metrics = {"ranks_json": json.dumps(everyone)}
    # Ray Train V2's Result.metrics are those reported with the latest checkpoint: rank 0 attaches an empty one
    with tempfile.TemporaryDirectory() as tmp:
        first = ray.train.get_context().get_world_rank() == 0
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if first else None)
