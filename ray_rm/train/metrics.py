"""Training metrics under open-instruct's names, their files (metrics.jsonl, TensorBoard, consumed pair ids),
and the driver's progress line (its text and ETA: ray_rm/progress.py).

What this module is for: naming and writing what a step measured. What it must not do: compute losses or
decide when to report (the train loop does; ``ray.train.report`` is a barrier every rank must reach).
"""
from __future__ import annotations

import json
import math
import os
import time

from ray.train import UserCallback

from ray_rm.progress import StepRate, train_line
from ray_rm.train import curves


def step_metrics(sums: dict, engine, pack_tokens: int, state) -> dict:
    """Per-step global metrics from the all-reduced sums of ``train_step``."""
    pairs = sums["pairs"] or math.nan
    grad_norm = engine.get_global_grad_norm()
    rows = sums["rows"] or math.nan
    return {
        "train/rm/loss": sums["loss"],
        "train/rm/accuracy": sums["correct"] / pairs,
        "train/rm/chosen_rewards": sums["chosen_rewards"] / pairs,
        "train/rm/rejected_rewards": sums["rejected_rewards"] / pairs,
        "train/rm/reward_margin": sums["reward_margin"] / pairs,
        "train/rm/lr": float(engine.get_lr()[0]),
        "train/rm/grad_norm": float(grad_norm) if grad_norm is not None else math.nan,
        "train/rm/tokens_per_s": sums["tokens"] / sums["seconds"],
        # NaN (left out of the progress line) when the step held no pairs: a PRM or rated-only run
        "train/rm/pairs_per_s": sums["pairs"] / sums["seconds"] if sums["pairs"] else math.nan,
        "train/rm/real_token_fraction": sums["tokens"] / (rows * pack_tokens),
        "train/rm/skipped_micro_batches": float(state.skipped_micro_batches),
        "train/rm/peak_memory_gb": sums["peak_memory_gb"],
        "train/rm/step_seconds": sums["seconds"],
        "global_step": state.global_step,
        "epoch": state.epoch,
    }


class MetricsWriter:
    """Rank 0 writes every step's metrics to ``metrics.jsonl`` and TensorBoard; other ranks do nothing.

    Every rank also records the loss/accuracy points into ``curves`` (the train state's, so they are
    checkpointed with it; see train/curves.py)."""

    def __init__(self, output_dir: str | None, tensorboard: bool, curves: dict | None = None):
        self.writer = self.jsonl = None
        self.curves = curves
        if output_dir:
            self.jsonl = open(os.path.join(output_dir, "metrics.jsonl"), "a")
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(os.path.join(output_dir, "tensorboard"))

    def write(self, metrics: dict, step: int) -> None:
        if self.curves is not None:
            curves.record(self.curves, metrics)
        if self.jsonl is None:
            return
        self.jsonl.write(json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for k, v in metrics.items():
                if "/" in k and isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(k, v, step)
            self.writer.flush()

    def close(self) -> None:
        for handle in (self.writer, self.jsonl):
            if handle is not None:
                handle.close()


class ConsumedIds:
    """With ``train.record_pair_ids``: every rank appends the pair ids of each step to ``consumed/rank<N>.jsonl``
    (tests prove from them that resume and failover train on every pair exactly once)."""

    def __init__(self, output_dir: str, rank: int, enabled: bool):
        self.rank, self.file = rank, None
        if enabled:
            folder = os.path.join(output_dir, "consumed")
            os.makedirs(folder, exist_ok=True)
            self.file = open(os.path.join(folder, f"rank{rank}.jsonl"), "a")

    def write(self, step: int, rows: list) -> None:
        if self.file is None:
            return
        ids = [g for r in rows if r is not None for g in r.group_ids]
        self.file.write(json.dumps({"step": step, "rank": self.rank, "pid": os.getpid(), "ids": ids}) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class ProgressLine(UserCallback):
    """Prints one line per report on the Ray Train controller (Ray forwards it to the driver's console): rank 0's
    global metrics, pairs/s, time elapsed since the job planned the run and the ETA (``ray_rm/progress.py``)."""

    def __init__(self, total_steps: int):
        self.total_steps = total_steps
        self.started = time.time()
        self.rate = StepRate()

    def after_report(self, run_context, metrics, checkpoint):
        m = metrics[0] if metrics else {}
        step = m.get("global_step")
        if step is None:
            return
        now = time.time()
        rate = self.rate.observe(int(step), now, m.get("train/rm/step_seconds"))
        print(train_line(m, self.total_steps, now - self.started, rate, checkpoint is not None), flush=True)
