"""Serve answers of attribute reward models: per-item attribute values and the weighted reward.

What this module is for: turning the k head outputs each member returns per item (``RewardScorer.
score_group_outputs``) into the reward ``w . attributes`` (the model's weights, or a request's
``"weights": {name: number}``) and the ``"attributes": [{name: value}, ...]`` field of ``/v1/score``.
It must not parse HTTP bodies (``serve/inputs.py``), batch, or import Ray.

A request's weights replace the model's: attributes it does not name weigh 0 (so ``{"correctness": 1}``
ranks by correctness alone); a name the model does not have is a 422 naming it.
"""
from __future__ import annotations

from ray_rm.serve.inputs import InputError


def request_weights(names: list[str], model_weights: list[float], override: dict | None) -> list[float]:
    """The weights one request scores with (see the module docstring)."""
    if override is None:
        return list(model_weights)
    unknown = [k for k in override if k not in names]
    if unknown:
        raise InputError(f"'weights' names {', '.join(repr(k)[:40] for k in unknown[:5])}, which this reward model "
                         f"does not output; its attributes are {', '.join(names)}")
    return [float(override.get(n, 0.0)) for n in names]


def attribute_answer(member_outputs: list[list[list[float]]], names: list[str]) -> list[dict]:
    """[{name: value}] per item: the members' mean attribute values (one member: its own)."""
    k = len(member_outputs)
    return [{name: sum(m[i][j] for m in member_outputs) / k for j, name in enumerate(names)}
            for i in range(len(member_outputs[0]))]
