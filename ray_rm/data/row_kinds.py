"""Which normalizer a raw row belongs to: a preference pair, a rated response, or a stepwise solution.

What this module is for: letting one data file (or one run) mix row kinds, e.g. HelpSteer-style rated
rows with preference pairs, by sending each row to ``formats.normalize_row``,
``ratings.normalize_rated_row`` or ``stepwise.normalize_step_row``. It must stay conservative: every
row that ``formats.normalize_row`` reads today is a "pair", and so is every row that fits no kind
(its error then comes from ``normalize_row``, as before). It reads keys only; it must not validate.

Rules, in order:
  * not an object, or any of ``chosen`` / ``rejected`` / ``responses`` present     -> "pair"
  * ``completions`` (TRL stepwise), ``solutions`` (several solutions), or ``input`` together with
    ``label`` (Math-Shepherd)                                                         -> "stepwise"
  * ``response`` (one rated response)                                                 -> "rated"
  * anything else                                                                     -> "pair"
Keys whose value is null count as absent (columnar files give every row every column).
"""
from __future__ import annotations

from typing import Any

PAIR, RATED, STEPWISE = "pair", "rated", "stepwise"
_PAIR_KEYS = ("chosen", "rejected", "responses")
_STEPWISE_KEYS = ("completions", "solutions")


def classify_row(raw: Any) -> str:
    """"pair" | "rated" | "stepwise" for one raw row (see the module rules)."""
    if not isinstance(raw, dict):
        return PAIR
    present = {k for k, v in raw.items() if v is not None}
    if present.intersection(_PAIR_KEYS):
        return PAIR
    if present.intersection(_STEPWISE_KEYS) or {"input", "label"} <= present:
        return STEPWISE
    if "response" in present:
        return RATED
    return PAIR
