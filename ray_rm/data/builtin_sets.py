"""Every ``builtin:<name>`` data set in one registry: name -> row maker and size.

What this module is for: one place that ``sources`` asks for built-in rows, whichever demo module
generates them (``demo_data``: preference pairs, ``demo_prm``: stepwise solutions, ``demo_attributes``:
rated rows and pairs). It must not normalize rows (each row kind has its normalizer; see ``row_kinds``)
and it stays pure: row i of a set depends only on (name, i).
"""
from __future__ import annotations

from ray_rm.data import demo_attributes, demo_data, demo_prm
from ray_rm.errors import DataError

_MODULES = (demo_data, demo_prm, demo_attributes)
BUILTIN_SETS = {name: (module.make_row, divisor) for module in _MODULES for name, (_, divisor) in module.SETS.items()}


def builtin_rows(source: str, size: int, start: int, stop: int, count_only: bool = False):
    """Rows [start, stop) of ``builtin:<name>`` (``size`` rows, divided by the set's divisor, at least 1);
    with count_only, the number of rows."""
    name = source.split(":", 1)[1]
    if name not in BUILTIN_SETS:
        raise DataError(f"unknown built-in data set '{source}'; available: "
                        + ", ".join(f"builtin:{n}" for n in BUILTIN_SETS))
    make_row, divisor = BUILTIN_SETS[name]
    n = max(1, size // divisor)
    if count_only:
        return n
    return [make_row(name, i) for i in range(start, min(stop, n))]
