"""Host-side collectives of the train loop, each on the device its process group reduces on.

NCCL reduces only CUDA tensors and gloo only CPU ones, so a tensor built from Python numbers must be
placed by the group's backend, never by where the model happens to be or by habit (an all-reduce of a
CPU tensor raises under NCCL). Every all-reduce of the train loop goes through here. Callers also give
every rank the same vector length by construction (fixed layouts, zeros where a rank has no data):
a collective whose shape differs across ranks hangs NCCL or returns garbage.

Model activations (sequence parallelism's all-to-all) live on the model's device, which is the
group's device by construction; they do not pass through here.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def group_device(group=None) -> torch.device:
    """The device a process group's collectives run on: the current CUDA device for NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_tensor(t: torch.Tensor, op: str = "sum", group=None) -> torch.Tensor:
    """All-reduce a copy of ``t`` on the group's device; the result stays there (no host sync here)."""
    out = t.detach().to(group_device(group), copy=True)
    dist.all_reduce(out, op=_OPS[op], group=group)
    return out


def all_reduce_floats(values: Sequence[float], op: str = "sum", group=None) -> list[float]:
    """All-reduce Python numbers in float64; every rank must pass the same number of values."""
    t = torch.tensor(list(values), dtype=torch.float64)
    return all_reduce_tensor(t, op, group).tolist()


def barrier(group=None) -> None:
    """A barrier on the group's device (NCCL otherwise guesses the device and warns)."""
    device = group_device(group)
    if device.type == "cuda":
        dist.barrier(group=group, device_ids=[device.index])
    else:
        dist.barrier(group=group)


def all_gather_objects(obj, group=None) -> list:
    """Every rank's picklable ``obj``, in rank order (NCCL: through the current CUDA device, set per worker)."""
    parts: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, obj, group=group)
    return parts
