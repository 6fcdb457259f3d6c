"""Cross-request dynamic batching by token budget, with shared-prefix grouping across requests.

PPO actors send one or a few rollouts per request; running each request alone wastes most of a
forward pass. ``TokenBatcher`` queues the token sequences of concurrent requests and runs them as
one padding-free batch of at most ``batch_tokens`` tokens (first arrival waits ``wait_s`` for others).
Before the forward, ``scoring.grouping.plan_groups`` merges duplicate sequences and groups sequences
that share a token prefix (the k rollouts of one prompt usually arrive in k different requests), so
the packer computes each prompt once. The model runs in one dedicated thread so the event loop keeps
accepting requests while a batch computes.
What it must not do: import Ray or torch (pure asyncio + a callback), tokenize, or check items (the
engine checks each item once, before it is queued).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ray_rm.scoring.grouping import plan_groups

log = logging.getLogger(__name__)

RunGroups = Callable[[list], list]  # list[list[list[int]]] -> list[list[float]]


@dataclass
class _Job:
    seqs: list
    tokens: int
    future: asyncio.Future
    arrived: float


class BatcherClosed(RuntimeError):
    """The replica is shutting down; the caller should retry elsewhere."""


class TokenBatcher:
    """Queue sequences from concurrent coroutines; run them in token-budget batches, one batch at a time."""

    def __init__(self, run_groups: RunGroups, *, batch_tokens: int = 8192, wait_s: float = 0.005,
                 share_prefix: bool = True, min_shared: int = 16, max_group_tokens: int = 4096,
                 executor: ThreadPoolExecutor | None = None):
        self.run_groups = run_groups
        self.batch_tokens = batch_tokens
        self.wait_s = wait_s
        self.share_prefix = share_prefix
        self.min_shared = min_shared
        self.max_group_tokens = max_group_tokens
        self._queue: deque[_Job] = deque()
        self._queued_tokens = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._own_executor = executor is None  # a shared executor (ensembles) is closed by its owner
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="rm-forward")
        self._closed = False
        # Since start: forwards run, request parts batched into them, sequences, distinct sequences after
        # duplicate merging, and tokens run. ``requests / batches`` is what cross-request batching buys.
        self.stats = {"batches": 0, "requests": 0, "sequences": 0, "distinct": 0, "tokens": 0}

    # ------------------------------------------------------------------ public
    async def score(self, seqs: list) -> list[float]:
        """Rewards for ``seqs`` in order; a request over the budget is split into budget-sized jobs."""
        if not seqs:
            return []
        self._ensure_running()
        loop = asyncio.get_running_loop()
        futures, chunk, tokens = [], [], 0
        for s in seqs:
            if chunk and tokens + len(s) > self.batch_tokens:
                futures.append(self._put(chunk, tokens, loop))
                chunk, tokens = [], 0
            chunk.append(s)
            tokens += len(s)
        futures.append(self._put(chunk, tokens, loop))
        parts = await asyncio.gather(*futures)
        return [r for part in parts for r in part]

    def check(self) -> None:
        """Raise when closed or when the batching loop died of an error (Serve's health check then
        replaces the replica)."""
        if self._closed:
            raise BatcherClosed("the batcher is closed")
        task = self._task
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            raise RuntimeError(f"the batching loop stopped: {task.exception()!r}")

    def close(self) -> None:
        """Fail queued jobs (callers retry on another replica) and stop the loop and the model thread."""
        self._closed = True
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                job.future.set_exception(BatcherClosed("replica shutting down"))
        if self._task is not None:
            self._task.cancel()
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ internals
    def _ensure_running(self) -> None:
        self.check()
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            # first use, or a new event loop (e.g. successive asyncio.run calls): start a loop task here
            self._queue = deque(j for j in self._queue if j.future.get_loop() is loop)
            self._queued_tokens = sum(j.tokens for j in self._queue)
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._loop())

    def _put(self, seqs: list, tokens: int, loop) -> asyncio.Future:
        fut = loop.create_future()
        self._queue.append(_Job(seqs, tokens, fut, time.monotonic()))
        self._queued_tokens += tokens
        self._wakeup.set()
        return fut

    def _take_batch(self) -> list[_Job]:
        batch, tokens = [], 0
        while self._queue:
            job = self._queue[0]
            if job.future.done():  # the caller went away (cancelled): skip its work
                self._queue.popleft()
                self._queued_tokens -= job.tokens
                continue
            if batch and tokens + job.tokens > self.batch_tokens:
                break
            self._queue.popleft()
            self._queued_tokens -= job.tokens
            batch.append(job)
            tokens += job.tokens
        return batch

    async def _wait_for_batch(self) -> None:
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = self._queue[0].arrived + self.wait_s
        while self._queued_tokens < self.batch_tokens:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wait_for_batch()
            batch = self._take_batch()
            if not batch:
                continue
            seqs = [s for job in batch for s in job.seqs]
            try:
                groups, rep = plan_groups(seqs, share_prefix=self.share_prefix, min_shared=self.min_shared,
                                          max_group_tokens=self.max_group_tokens)
                rewards = await loop.run_in_executor(self._executor, self._run, seqs, groups, len(batch))
                values = [rewards[rep[i]] for i in range(len(seqs))]
            except asyncio.CancelledError:
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(BatcherClosed("replica shutting down"))
                raise
            except Exception as exc:  # a model failure fails this batch only; the loop keeps serving
                log.exception("scoring a batch of %d sequences failed", len(seqs))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            k = 0
            for job in batch:
                if not job.future.done():
                    job.future.set_result(values[k:k + len(job.seqs)])
                k += len(job.seqs)

    def _run(self, seqs: list, groups: list[list[int]], requests: int) -> dict[int, float]:
        """Model thread: score the planned groups (from ``requests`` request parts), return {distinct index:
        reward}; the counters move only for a forward that succeeded."""
        out = self.run_groups([[seqs[i] for i in g] for g in groups])
        self.stats["batches"] += 1
        self.stats["requests"] += requests
        self.stats["sequences"] += len(seqs)
        self.stats["distinct"] += sum(len(g) for g in groups)
        self.stats["tokens"] += sum(len(seqs[i]) for g in groups for i in g)
        return {i: r for g, rs in zip(groups, out) for i, r in zip(g, rs)}
