"""The one way ray_rm draws a PNG: a matplotlib ``Figure`` on the Agg canvas, written when its block ends.

What this module is for: every plot of the library (eval reports, training curves, the demos) starts and ends
the same way, without pyplot's global state, so drawing is safe in any thread or Ray worker and never needs a
display. What it must not do: decide what is drawn (each caller owns its axes, labels and legend).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def png_figure(path: str | Path, figsize: tuple[float, float], dpi: int = 110) -> Iterator:
    """A fresh ``Figure`` to draw on; on leaving the block it is laid out tightly and saved to ``path`` as PNG.

    Nothing is written when the block raises, so a half-drawn picture never replaces a good one."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    yield fig
    fig.tight_layout()
    fig.savefig(path, format="png")
