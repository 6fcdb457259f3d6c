"""Progress for the people watching a job: training's ETA line and the batch jobs' row progress bar.

What this module is for: the arithmetic (rates, time left) and the text of progress lines, and writing them
to a stream: redrawn in place on a terminal, one line every few seconds in logs (``ray job submit``, CI).
What it must not do: import Ray, torch or any third-party library (it is pure, so the numbers are unit-tested
by hand), or decide what a job measures (callers pass counts and metrics in).
"""
from __future__ import annotations

import math
import sys
import time
from typing import Callable, TextIO


def format_duration(seconds: float | None) -> str:
    """``45s``, ``3m05s``, ``2h07m``; ``?`` when unknown (no rate yet)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta_seconds(done: float, total: float | None, rate: float | None) -> float | None:
    """Seconds left at ``rate`` units/s to go from ``done`` to ``total``; None when the total or rate is unknown."""
    if not total:
        return None
    if done >= total:
        return 0.0
    if not rate or rate <= 0 or not math.isfinite(rate):
        return None
    return (total - done) / rate


class StepRate:
    """Training's steps/s, measured from the first step seen rather than from the job's start.

    Why: before the first step the job starts Ray, packs the data, JIT-builds DeepSpeed ops and runs a baseline
    eval; counting that time as training would make the first ETAs far too long. Until two steps have been seen
    the rate comes from the step's own measured duration (``train/rm/step_seconds``), so the first line already
    has an ETA. Evals and checkpoints between steps are inside the measured window, so the ETA includes them.
    """

    def __init__(self):
        self.first_step: int | None = None
        self.first_time = 0.0

    def observe(self, step: int, now: float, step_seconds: float | None = None) -> float | None:
        """Steps per second after reaching ``step`` at time ``now``; None when nothing tells yet."""
        if self.first_step is None or step < self.first_step:  # first report, or a restart from a checkpoint
            self.first_step, self.first_time = step, now
        if step > self.first_step and now > self.first_time:
            return (step - self.first_step) / (now - self.first_time)
        if step_seconds and step_seconds > 0 and math.isfinite(step_seconds):
            return 1.0 / step_seconds
        return None


# What a training line shows from a report's metrics: (metric key, label, format).
TRAIN_LINE_FIELDS = (("train/rm/loss", "loss", "{:.4g}"), ("train/rm/accuracy", "acc", "{:.3f}"),
                     ("train/rm/reward_margin", "margin", "{:.3g}"), ("eval/rm/loss", "eval_loss", "{:.4g}"),
                     ("eval/rm/accuracy", "eval_acc", "{:.3f}"), ("train/rm/pairs_per_s", "pairs/s", "{:.3g}"),
                     ("train/rm/tokens_per_s", "tok/s", "{:.4g}"))


def train_line(metrics: dict, total_steps: int, elapsed: float, rate: float | None, checkpoint: bool = False) -> str:
    """``[ray_rm] step 5/20 | loss 0.69 | ... | 40s elapsed, ETA 2m00s`` for one reported step."""
    step = int(metrics["global_step"])
    parts = [f"step {step}/{total_steps}"]
    for key, label, fmt in TRAIN_LINE_FIELDS:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            parts.append(f"{label} {fmt.format(value)}")
    if checkpoint:
        parts.append("checkpoint saved")
    parts.append(f"{format_duration(elapsed)} elapsed, ETA {format_duration(eta_seconds(step, total_steps, rate))}")
    return "[ray_rm] " + " | ".join(parts)


def bar_line(desc: str, done: int, total: int | None, elapsed: float, rate: float | None, width: int = 24) -> str:
    """One progress-bar line: ``relabel  45%|##########          | 450/1000 rows | 12.5 rows/s | 36s, ETA 44s``.

    Without a known total: ``relabel 450 rows | 12.5 rows/s | 36s``."""
    speed = f"{rate:.3g} rows/s" if rate is not None else "? rows/s"
    if not total:
        return f"{desc} {done} rows | {speed} | {format_duration(elapsed)}"
    frac = min(1.0, max(0.0, done / total))
    filled = int(frac * width)
    return (f"{desc} {int(frac * 100):3d}%|{'#' * filled}{' ' * (width - filled)}| {done}/{total} rows | {speed} | "
            f"{format_duration(elapsed)}, ETA {format_duration(eta_seconds(done, total, rate))}")


class ProgressBar:
    """A row progress bar on ``stream`` (stderr by default).

    On a terminal one line is redrawn in place (at most ``redraw_s`` apart); elsewhere (logs) a full line is
    written every ``interval_s`` seconds and once at the end. The rate counts only rows done in this run
    (``initial`` rows resumed from an earlier run are shown as done but do not inflate rows/s)."""

    def __init__(self, total: int | None, initial: int = 0, desc: str = "rows", enabled: bool = True,
                 stream: TextIO | None = None, interval_s: float = 10.0, redraw_s: float = 0.2,
                 clock: Callable[[], float] = time.monotonic, tty: bool | None = None):
        self.total, self.done, self.desc, self.enabled = total, initial, desc, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval_s = redraw_s if self.tty else interval_s
        self.clock = clock
        self._initial, self._start = initial, clock()
        self._last_write: float | None = None
        self._written_done: int | None = None
        self._closed = False

    def rate(self, now: float) -> float | None:
        elapsed = now - self._start
        return (self.done - self._initial) / elapsed if elapsed > 0 and self.done > self._initial else None

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        return bar_line(self.desc, self.done, self.total, now - self._start, self.rate(now))

    def update(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if self._last_write is None or now - self._last_write >= self.interval_s:
            self._write(now)

    def close(self) -> None:
        """Write the final state once (a newline ends the in-place line on a terminal)."""
        if self._closed:
            return
        self._closed = True
        now = self.clock()
        if self.tty or self._written_done != self.done:
            self._write(now)
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _write(self, now: float) -> None:
        self._last_write, self._written_done = now, self.done
        if not self.enabled:
            return
        text = self.line(now)
        self.stream.write(f"\r{text}\x1b[K" if self.tty else text + "\n")
        self.stream.flush()
