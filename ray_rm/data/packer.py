"""The packer: tokenized groups (pairs, k-way rankings, or single sequences) -> token-budget rows.

Pure Python, independent of Ray and torch, so training, serving and relabeling pack the same way.

A row concatenates whole groups; a group is never split. Within a group, either every sequence is
laid out whole (position ids restart at 0 per sequence) or, with ``share_prompt``, the group's common
token prefix is laid out once followed by each sequence's own suffix, whose position ids continue
from the prefix: ``[prompt | chosen-suffix | rejected-suffix]``. Attention is described by
``attention_blocks``: causal blocks of queries that may also see one fully visible prefix span.

Groups are placed by best-fit-decreasing within a bounded look-ahead window (the stream is still
consumed in order, window by window); a few least-filled rows stay open across windows.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator

from ray_rm.data.tokenize import TokenizedGroup


@dataclass
class PackedRow:
    input_ids: list = field(default_factory=list)
    position_ids: list = field(default_factory=list)
    seq_lens: list = field(default_factory=list)  # tokens laid out for each sequence (suffix when prefix-shared)
    seq_full_lens: list = field(default_factory=list)  # the sequence's own length incl. a shared prefix
    reward_index: list = field(default_factory=list)  # row position of each sequence's reward (last) token
    seq_group: list = field(default_factory=list)  # group (within this row) of each sequence
    seq_ranks: list = field(default_factory=list)  # 0 = best within its group; equal = tie
    seq_scores: list = field(default_factory=list)  # given scores (NaN when none)
    group_ids: list = field(default_factory=list)  # example ids: the pair ids
    group_sizes: list = field(default_factory=list)
    group_prefix_lens: list = field(default_factory=list)  # shared prefix laid out once (0 = not shared)
    group_common_lens: list = field(default_factory=list)  # common token prefix of the group's sequences
    group_margins: list = field(default_factory=list)  # NaN when none
    group_subsets: list = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    def to_record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, rec: dict) -> "PackedRow":
        return cls(**{k: list(rec[k]) for k in cls.__dataclass_fields__})

    def add_group(self, group: TokenizedGroup, share_prompt: bool) -> None:
        g = len(self.group_ids)
        k = len(group.sequences)
        # A group built without scores (the TokenizedGroup default) must not zip its sequences away.
        scores = list(group.scores) if group.scores else [math.nan] * k
        if not len(group.ranks) == len(scores) == k:
            raise ValueError(f"group {group.example_id}: {k} sequences but {len(group.ranks)} ranks "
                             f"and {len(scores)} scores")
        prefix = group.shared_len if share_prompt and k > 1 else 0
        start = len(self.input_ids)
        if prefix:
            self.input_ids.extend(group.sequences[0][:prefix])
            self.position_ids.extend(range(prefix))
        for seq, rank, score in zip(group.sequences, group.ranks, scores):
            own = seq[prefix:]
            self.input_ids.extend(own)
            self.position_ids.extend(range(prefix, prefix + len(own)))
            self.seq_lens.append(len(own))
            self.seq_full_lens.append(len(seq))
            self.reward_index.append(len(self.input_ids) - 1)
            self.seq_group.append(g)
            self.seq_ranks.append(int(rank))
            self.seq_scores.append(float(score))
        assert len(self.input_ids) - start == group.num_tokens(share_prompt)
        self.group_ids.append(group.example_id)
        self.group_sizes.append(len(group.sequences))
        self.group_prefix_lens.append(prefix)
        self.group_common_lens.append(group.shared_len)
        self.group_margins.append(float(group.margin))
        self.group_subsets.append(group.subset)


@dataclass(frozen=True)
class AttentionBlock:
    """Queries [start, start+length) attend causally to themselves and fully to [prefix_start, +prefix_len)."""

    start: int
    length: int
    prefix_start: int = 0
    prefix_len: int = 0


def attention_blocks(row: PackedRow) -> list[AttentionBlock]:
    blocks = []
    pos, seq = 0, 0
    for size, prefix in zip(row.group_sizes, row.group_prefix_lens):
        prefix_start = pos
        if prefix:
            blocks.append(AttentionBlock(pos, prefix))
            pos += prefix
        for _ in range(size):
            n = row.seq_lens[seq]
            blocks.append(AttentionBlock(pos, n, prefix_start if prefix else 0, prefix))
            pos += n
            seq += 1
    return blocks


def unpack_sequences(row: PackedRow) -> list[list[int]]:
    """Reconstruct every sequence's full token list (prefix + own tokens) from a packed row."""
    out, pos, seq = [], 0, 0
    for size, prefix in zip(row.group_sizes, row.group_prefix_lens):
        prefix_ids = row.input_ids[pos:pos + prefix]
        pos += prefix
        for _ in range(size):
            n = row.seq_lens[seq]
            out.append(prefix_ids + row.input_ids[pos:pos + n])
            pos += n
            seq += 1
    return out


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
            row.add_group(group, self.share_prompt)
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
