"""Which sequences of a batch are scored together: duplicates once, shared prompts computed once.

What this module is for: planning the groups a batch of token sequences is packed in, for the serve
batcher (sequences from concurrent requests; the k rollouts of one prompt usually arrive in k different
requests). What it must not do: tokenize, pack (the scorer lays each group out with the training
packer), or import Ray or torch.
"""
from __future__ import annotations

from ray_rm.prefix import common_prefix_len


def plan_groups(seqs: list, *, share_prefix: bool = True, min_shared: int = 16,
                max_group_tokens: int = 4096) -> tuple[list[list[int]], list[int]]:
    """(groups of indices of distinct sequences, representative index of every input sequence).

    Identical sequences are scored once. With ``share_prefix``, distinct sequences are sorted and
    neighbours whose common prefix stays >= ``min_shared`` tokens form a group whose packed size
    (prefix once + every suffix) stays <= ``max_group_tokens``.
    """
    keys = [tuple(s) for s in seqs]
    first: dict[tuple, int] = {}
    rep = [first.setdefault(k, i) for i, k in enumerate(keys)]
    distinct = [i for i in range(len(keys)) if rep[i] == i]
    if not share_prefix:
        return [[i] for i in distinct], rep
    distinct.sort(key=lambda i: keys[i])
    groups: list[list[int]] = []
    shared = 0
    for i in distinct:
        if groups:
            prev = keys[groups[-1][-1]]
            # sorted: the group's prefix is the minimum over the chain of neighbours
            new_shared = min(shared, common_prefix_len((prev, keys[i])))
            # packed size if i joins: prefix once, every member's suffix (the prefix shrinks to new_shared)
            members = groups[-1] + [i]
            new_cost = sum(len(keys[m]) for m in members) - new_shared * (len(members) - 1)
            if new_shared >= min_shared and new_cost <= max_group_tokens:
                groups[-1].append(i)
                shared = new_shared
                continue
        groups.append([i])
        shared = len(keys[i])
    return groups, rep
