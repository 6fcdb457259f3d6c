"""A training run's loss and accuracy curves: recorded step by step into the resumable train state, read back
from the final checkpoint by the driver, stored in ``summary.json`` and drawn as ``train_curves.png``.

Why in the train state (``train_state.json`` in every checkpoint) rather than read from ``metrics.jsonl``: the
checkpoint travels to the driver through Ray Train's storage, so the curves reach ``summary.json`` when rank 0
ran on another node, and a run resumed or restarted from a checkpoint keeps its history up to that
checkpoint and records the re-run steps once.

What this module is for: the curves' shape, recording points, and the picture. What it must not do: decide
when to evaluate or report (the train loop does) or import Ray or torch.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from ray_rm.plotting import png_figure

# curve name -> {point field -> metric key}
CURVE_KEYS = {"train": {"loss": "train/rm/loss", "accuracy": "train/rm/accuracy"},
              "eval": {"loss": "eval/rm/loss", "accuracy": "eval/rm/accuracy"}}


def empty_curves() -> dict:
    """``{"train": {"step": [], "loss": [], "accuracy": []}, "eval": {...}}``: one list per field, aligned."""
    return {name: {"step": [], **{field: [] for field in keys}} for name, keys in CURVE_KEYS.items()}


def record(curves: dict, metrics: dict) -> None:
    """Add one step's metrics (``global_step`` and whichever train/eval keys it has) to ``curves`` in place.

    A step recorded again replaces its point (the final eval re-reports the last step); a non-finite value
    (a skipped step) is stored as None so summary.json stays valid JSON."""
    step = int(metrics["global_step"])
    for name, keys in CURVE_KEYS.items():
        if not any(key in metrics for key in keys.values()):
            continue
        curve = curves.setdefault(name, {"step": [], **{field: [] for field in keys}})
        if curve["step"] and curve["step"][-1] >= step:  # the same step again, or a re-run after a restart
            keep = sum(1 for s in curve["step"] if s < step)
            for values in curve.values():
                del values[keep:]
        curve["step"].append(step)
        for field, key in keys.items():
            value = metrics.get(key)
            finite = isinstance(value, (int, float)) and math.isfinite(value)
            curve[field].append(float(value) if finite else None)


def read_from_checkpoint(checkpoint_dir: str | Path, state_file: str) -> dict:
    """The curves saved with a checkpoint's train state (empty curves for a checkpoint written without them)."""
    state = json.loads(Path(checkpoint_dir, state_file).read_text())
    return state.get("curves") or empty_curves()


def plot(curves: dict, path: str | Path, title: str = "") -> str:
    """Draw loss and accuracy (train per step, eval per evaluation) side by side into a PNG; returns its path."""
    from matplotlib.ticker import MaxNLocator

    with png_figure(path, (10, 4), dpi=100) as fig:
        for i, field in enumerate(("loss", "accuracy")):
            ax = fig.add_subplot(1, 2, i + 1)
            for name, style in (("train", {"linewidth": 1.2}), ("eval", {"marker": "o", "linewidth": 1.5})):
                curve = curves.get(name) or {}
                points = [(s, v) for s, v in zip(curve.get("step", []), curve.get(field, [])) if v is not None]
                if points:
                    ax.plot(*zip(*points), label=name, **style)
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(field)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend()
        if title:
            fig.suptitle(title)
    return str(path)
