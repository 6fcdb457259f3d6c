"""The packer: tokenized groups (pairs, k-way rankings, or single sequences) -> token-budget ``PackedRow``s.

What this module is for: the packing algorithm and its unit, the ``TokenizedGroup`` (with the one rule for
how many tokens a group takes in a row), shared by training, serving and relabeling so that all three pack
the same way. What it must not do: define the row itself (``ray_rm/packed.py`` is the contract between data
and model), tokenize (``tokenize.py`` builds the groups), or import Ray, DeepSpeed or torch.

A row concatenates whole groups; a group is never split. ``append_group`` lays one group out: every
sequence whole, or with ``share_prompt`` the group's common token prefix once followed by each
sequence's own suffix (see ``ray_rm/packed.py``).

Groups are placed by best-fit-decreasing within a bounded look-ahead window (the stream is still
consumed in order, window by window); a few least-filled rows stay open across windows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from ray_rm.packed import PackedRow


@dataclass
class TokenizedGroup:
    """A prompt's k >= 2 tokenized responses, best first; the unit the packer never splits."""

    example_id: str
    sequences: list  # list[list[int]]
    ranks: list
    shared_len: int = 0  # tokens common to all sequences (each keeps >= 1 token of its own)
    margin: float = math.nan
    scores: list = field(default_factory=list)
    subset: str = ""
    attributes: list = field(default_factory=list)  # attribute head: k ratings per sequence (NaN = none), or empty
    # PRM groups only: per sequence, the position (in the full sequence) of each step's last token and its
    # label (1.0 / 0.0 / NaN unlabelled); see ray_rm/data/step_groups.py.
    step_ends: list = field(default_factory=list)
    step_labels: list = field(default_factory=list)

    def num_tokens(self, share_prompt: bool) -> int:
        """Tokens the group takes in a row: every sequence whole, or its shared prefix once (``share_prompt``)."""
        total = sum(len(s) for s in self.sequences)
        if share_prompt and self.shared_len:
            total -= self.shared_len * (len(self.sequences) - 1)
        return total


def append_group(row: PackedRow, group: TokenizedGroup, share_prompt: bool) -> None:
    """Lay ``group`` out at the end of ``row`` (whole sequences, or its common prefix once + each suffix)."""
    g = len(row.group_ids)
    k = len(group.sequences)
    # A group built without scores (the TokenizedGroup default) must not zip its sequences away.
    scores = list(group.scores) if group.scores else [math.nan] * k
    if not len(group.ranks) == len(scores) == k:
        raise ValueError(f"group {group.example_id}: {k} sequences but {len(group.ranks)} ranks "
                         f"and {len(scores)} scores")
    prefix = group.shared_len if share_prompt and k > 1 else 0
    start = len(row.input_ids)
    if prefix:
        row.input_ids.extend(group.sequences[0][:prefix])
        row.position_ids.extend(range(prefix))
    for i, (seq, rank, score) in enumerate(zip(group.sequences, group.ranks, scores)):
        own = seq[prefix:]
        if group.step_ends:
            _append_steps(row, group, i, group_start=start, own_start=len(row.input_ids), prefix=prefix)
        row.input_ids.extend(own)
        row.position_ids.extend(range(prefix, prefix + len(own)))
        row.seq_laid_out_lens.append(len(own))
        row.seq_full_lens.append(len(seq))
        row.reward_index.append(len(row.input_ids) - 1)
        row.seq_group.append(g)
        row.seq_ranks.append(int(rank))
        row.seq_scores.append(float(score))
    assert len(row.input_ids) - start == group.num_tokens(share_prompt)
    for ratings in group.attributes:  # one list of k per sequence (attribute runs only)
        row.seq_attributes.extend(float(v) for v in ratings)
    row.group_ids.append(group.example_id)
    row.group_sizes.append(k)
    row.group_prefix_lens.append(prefix)
    row.group_common_lens.append(group.shared_len)
    row.group_margins.append(float(group.margin))
    row.group_subsets.append(group.subset)


def _append_steps(row: PackedRow, group: TokenizedGroup, i: int, group_start: int, own_start: int,
                  prefix: int) -> None:
    """Row positions of sequence i's step ends: inside the shared prefix (laid out once, and the same hidden
    state for every sequence under causal attention) or inside the sequence's own suffix."""
    seq = len(row.seq_group)
    for end, label in zip(group.step_ends[i], group.step_labels[i]):
        row.step_index.append(group_start + end if end < prefix else own_start + end - prefix)
        row.step_labels.append(float(label))
        row.step_seq.append(seq)


class _Bin:
    __slots__ = ("groups", "used")

    def __init__(self):
        self.groups: list[TokenizedGroup] = []
        self.used = 0


class GroupPacker:
    """Streaming best-fit-decreasing packer. ``add`` returns rows as they close; ``flush`` the rest."""

    def __init__(self, budget: int, share_prompt: bool = True, window: int = 512, keep_open: int = 4):
        if budget <= 0:
            raise ValueError("pack budget must be positive")
        self.budget, self.share_prompt = budget, share_prompt
        self.window, self.keep_open = max(1, window), keep_open
        self._pending: list[TokenizedGroup] = []
        self._open: list[_Bin] = []

    def size_of(self, group: TokenizedGroup) -> int:
        return group.num_tokens(self.share_prompt)

    def add(self, group: TokenizedGroup) -> list[PackedRow]:
        if self.size_of(group) > self.budget:
            raise ValueError(f"group {group.example_id} has {self.size_of(group)} tokens > budget {self.budget}; "
                             "drop it before packing")
        self._pending.append(group)
        if len(self._pending) < self.window:
            return []
        self._place_pending()
        self._open.sort(key=lambda b: -b.used)  # the least-filled rows stay open for the next window
        split = max(0, len(self._open) - self.keep_open)
        closing, self._open = self._open[:split], self._open[split:]
        return [self._row(b) for b in closing]

    def flush(self) -> list[PackedRow]:
        self._place_pending()
        rows = [self._row(b) for b in sorted(self._open, key=lambda b: -b.used) if b.groups]
        self._open = []
        return rows

    def _place_pending(self) -> None:
        # Stable sort: ties keep stream order, so packing is deterministic.
        for group in sorted(self._pending, key=lambda g: -self.size_of(g)):
            size = self.size_of(group)
            best, best_room = None, None
            for b in self._open:
                room = self.budget - b.used - size
                if room >= 0 and (best_room is None or room < best_room):
                    best, best_room = b, room
            if best is None:
                best = _Bin()
                self._open.append(best)
            best.groups.append(group)
            best.used += size
        self._pending = []

    def _row(self, b: _Bin) -> PackedRow:
        row = PackedRow()
        for group in b.groups:
            append_group(row, group, self.share_prompt)
        return row


def pack_groups(groups: Iterable[TokenizedGroup], budget: int, share_prompt: bool = True,
                window: int = 512) -> Iterator[PackedRow]:
    packer = GroupPacker(budget, share_prompt, window)
    for group in groups:
        yield from packer.add(group)
    yield from packer.flush()


def fill_fraction(rows: list[PackedRow], budget: int) -> float:
    """Real tokens / (rows x budget): how full the token budget is (1.0 = no wasted budget)."""
    if not rows:
        return math.nan
    return sum(r.num_tokens for r in rows) / (len(rows) * budget)


def padded_fraction(groups: list[TokenizedGroup], pairs_per_batch: int) -> float:
    """Real-token fraction of the padded alternative: batches of N groups, every sequence padded to the longest."""
    real = padded = 0
    for i in range(0, len(groups), pairs_per_batch):
        batch = [s for g in groups[i:i + pairs_per_batch] for s in g.sequences]
        real += sum(len(s) for s in batch)
        padded += len(batch) * max(len(s) for s in batch)
    return real / padded if padded else math.nan
