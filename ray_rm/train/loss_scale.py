"""Loss scaling: the one place where loss sums become the exact mean over an optimizer step.

What this module is for: deciding the factor each loss term is multiplied by before backward, and the
mean a step (or an eval pass) reports. What it must not do: compute losses (``ray_rm/losses.py`` returns
*sums*, each with its unit: pairs, sequences, scored sequences or groups), or call backward.

The chain, written out once:
  * ``losses.py``: every term is a sum over its unit within one micro-batch (a packed row); no division.
  * here: before the first micro-batch, the workers all-reduce how many of each unit the whole step holds
    (all ranks, all micro-batches): ``count[unit]``. Each micro-batch backpropagates
        sum_term * W / count[unit]            (W = the number of ranks DeepSpeed averages over)
  * DeepSpeed: ``engine.backward(loss, scale_wrt_gas=False)`` adds no division by the accumulation steps;
    its gradient all-reduce averages over the W ranks (divides by W), which the factor W undoes.
So the optimizer sees the gradient of sum_terms [ (sum over the step's micro-batches and ranks) / count ]:
the exact mean over the step's units, however they were packed into rows or spread over ranks and
micro-batches (``micro_steps_per_update=2`` over rows A, B equals one step over a row holding A and B:
tests/test_train_loss_scale.py). Under sequence parallelism the S ranks of a group hold the same row and
count its units S times, so counts are divided by S; each rank's gradient is a partial sum over its
tokens, and the S partial sums add up in the average (Ulysses, see model/sequence_parallel.py).
"""
from __future__ import annotations

from ray_rm.losses import UNITS, unit_counts
from ray_rm.train.collectives import all_reduce_floats


def step_unit_counts(batches: list, real: list[bool], sp_size: int) -> dict:
    """Global count of each loss unit over one step's real micro-batches (a collective: every rank calls it)."""
    local = [sum(unit_counts(b)[u] for b, ok in zip(batches, real) if ok) for u in UNITS]
    return dict(zip(UNITS, (c / sp_size for c in all_reduce_floats(local))))


def unit_factors(counts: dict, world_size: int) -> dict:
    """The factor of each unit's sums in the loss backpropagated by every micro-batch (0 when the step has none)."""
    return {u: world_size / counts[u] if counts[u] else 0.0 for u in UNITS}


def scaled_loss(terms: dict, factors: dict, zero):
    """sum over terms of value * factors[unit]; ``zero`` (a 0-d tensor in the graph) starts the sum."""
    loss = zero
    for value, unit in terms.values():
        loss = loss + value * factors[unit]
    return loss


def mean_loss(layout: tuple, term_sums: list, counts: dict) -> float:
    """The reported loss: each term's global sum divided by its unit's global count, added over terms."""
    return sum(total / counts[unit] for (_, unit), total in zip(layout, term_sums) if counts[unit])
