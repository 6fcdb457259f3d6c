"""The packed row: the contract between the data side (packer, Ray Data) and the model side (collate, losses).

What this module is for: the one definition of what a packed row holds (``PackedRow``), how its
sequences are recovered (``unpack_sequences``), and its Arrow schema, *derived* from the dataclass fields so that the Ray Data
stream, the train feed and the model read the same columns. What it must not do: pack (that is
``data/packer.py``), tokenize, build tensors or the attention layout (``model/batch.py``), or import Ray,
DeepSpeed or torch.

A row concatenates whole groups (a pair, k ranked responses, or one sequence). Within a group either
every sequence is laid out whole (position ids restart at 0 per sequence) or, prompt-shared, the group's
common prefix is laid out once and followed by each sequence's own suffix, whose position ids continue
from the prefix: ``[prompt | chosen-suffix | rejected-suffix]``. Field names say what they index:
``seq_*`` has one entry per sequence, ``group_*`` one per group.

Extending the contract (e.g. a PRM head's step-end positions and labels, an attribute head's ratings):
add one typed field here (``step_index: list[int] = field(default_factory=list)``); its Arrow column,
its record round trip and its empty value follow from the type. The packer fills it and
``model/batch.py`` turns it into the tensors the head's loss reads.
"""
from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, field, fields

import pyarrow as pa

_ARROW_TYPES = {int: pa.int32(), float: pa.float64(), str: pa.string()}


@dataclass
class PackedRow:
    input_ids: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    seq_laid_out_lens: list[int] = field(default_factory=list)  # tokens laid out per sequence (its suffix when
    #                                                             the group's prefix is shared, else all of it)
    seq_full_lens: list[int] = field(default_factory=list)  # the sequence's own length incl. a shared prefix
    reward_index: list[int] = field(default_factory=list)  # row position of each sequence's reward (last) token
    seq_group: list[int] = field(default_factory=list)  # group (within this row) of each sequence
    seq_ranks: list[int] = field(default_factory=list)  # 0 = best within its group; equal = tie
    seq_scores: list[float] = field(default_factory=list)  # given scores (NaN when none)
    group_ids: list[str] = field(default_factory=list)  # example ids: the pair ids
    group_sizes: list[int] = field(default_factory=list)
    group_prefix_lens: list[int] = field(default_factory=list)  # shared prefix laid out once (0 = not shared)
    group_common_lens: list[int] = field(default_factory=list)  # common token prefix of the group's sequences
    group_margins: list[float] = field(default_factory=list)  # NaN when none
    group_subsets: list[str] = field(default_factory=list)
    # attribute head: k ratings per sequence, flattened row-major ([N * k]; NaN = not rated, masked out of the
    # loss; a pair's sequences in a mixed run are all NaN); empty when the run trains no attribute head
    seq_attributes: list[float] = field(default_factory=list)
    # Process reward models (model.head=prm): one entry per step of every sequence, in row order.
    step_index: list[int] = field(default_factory=list)  # row position of the step's last (separator) token
    step_labels: list[float] = field(default_factory=list)  # 1.0 correct, 0.0 wrong, NaN unlabelled
    step_seq: list[int] = field(default_factory=list)  # sequence (within this row) the step belongs to

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    def to_record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, rec: dict) -> "PackedRow":
        return cls(**{k: list(rec[k]) for k in cls.__dataclass_fields__})

    @classmethod
    def empty(cls) -> "PackedRow":
        """A 2-token single-sequence row that contributes nothing: a rank without data runs it so that the
        collectives of a step stay in step across ranks (its loss is multiplied by 0)."""
        return cls(input_ids=[0, 0], position_ids=[0, 1], seq_laid_out_lens=[2], seq_full_lens=[2], reward_index=[1],
                   seq_group=[0], seq_ranks=[0], seq_scores=[math.nan], group_ids=["<empty>"], group_sizes=[1],
                   group_prefix_lens=[0], group_common_lens=[0], group_margins=[math.nan], group_subsets=[""])


def packed_row_fields(row_cls: type = PackedRow) -> list[tuple[str, pa.DataType]]:
    """(name, Arrow list type) of every field of ``row_cls``, in declaration order, from its annotation."""
    hints = typing.get_type_hints(row_cls)
    out = []
    for f in fields(row_cls):
        (item,) = typing.get_args(hints[f.name])
        out.append((f.name, pa.list_(_ARROW_TYPES[item])))
    return out


def packed_row_schema(extra: list[tuple[str, pa.DataType]] = ()) -> pa.Schema:
    """The Arrow schema of a packed row, plus ``extra`` bookkeeping columns of the stream that carries it."""
    return pa.schema(packed_row_fields() + list(extra))


def unpack_sequences(row: PackedRow) -> list[list[int]]:
    """Reconstruct every sequence's full token list (prefix + own tokens) from a packed row."""
    out, pos, seq = [], 0, 0
    for size, prefix in zip(row.group_sizes, row.group_prefix_lens):
        prefix_ids = row.input_ids[pos:pos + prefix]
        pos += prefix
        for _ in range(size):
            n = row.seq_laid_out_lens[seq]
            out.append(prefix_ids + row.input_ids[pos:pos + n])
            pos += n
            seq += 1
    return out
