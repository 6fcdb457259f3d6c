"""Where every benchmark leaves its figures: ``<results_dir>/<name>.json``, ``<name>.png`` and the JSON on stdout.

What this module is for: the one ending all benches share, so that the README's figures are always found under
the same names. It must not measure or compute anything; a bench's plot function draws its own picture.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable


def save_results(result: dict, results_dir: str | Path, name: str, plot: Callable[[dict, Path], None],
                 printed: dict | None = None, indent: int = 2) -> Path:
    """Write ``result`` as ``name``.json, draw it with ``plot`` into ``name``.png, and print ``printed``
    (the whole result by default) as JSON. Returns the JSON file's path."""
    results = Path(results_dir)
    results.mkdir(parents=True, exist_ok=True)
    out_file = results / f"{name}.json"
    out_file.write_text(json.dumps(result, indent=indent))
    plot(result, results / f"{name}.png")
    print(json.dumps(result if printed is None else printed, indent=indent))
    return out_file
