"""The packed-row contract (ray_rm/packed.py): its Arrow schema follows the dataclass, rows survive the
Arrow round trip the Ray Data stream makes, a new field is one line, and the empty row contributes nothing."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import pyarrow as pa
import torch

from ray_rm.data.packer import TokenizedGroup, pack_groups
from ray_rm.losses import LossSettings, compute_loss
from ray_rm.model.batch import attention_blocks, collate_row
from ray_rm.model.reward_model import RewardOutput
from ray_rm.packed import PackedRow, packed_row_fields, packed_row_schema, unpack_sequences


def _groups() -> list[TokenizedGroup]:
    return [TokenizedGroup("a", [[1, 2, 3, 4], [1, 2, 5]], [0, 1], 2, 0.5, [math.nan, math.nan], "s1",
                           attributes=[[1.0, math.nan], [3.0, 0.5]]),
            TokenizedGroup("b", [[7, 8], [9, 8, 7]], [1, 0], 0, math.nan, [1.0, 2.0], "",
                           attributes=[[math.nan, math.nan], [2.0, 4.0]])]


def test_schema_has_one_typed_column_per_field_in_order():
    expected = {int: pa.list_(pa.int32()), float: pa.list_(pa.float64()), str: pa.list_(pa.string())}
    steps = TokenizedGroup("c", [[1, 2, 3]], [0], 0, math.nan, [math.nan], "", step_ends=[[1, 2]],
                           step_labels=[[1.0, math.nan]])  # a PRM group fills the step fields
    row = next(pack_groups(_groups() + [steps], 64, share_prompt=True))
    got = packed_row_fields()
    assert [name for name, _ in got] == [f.name for f in fields(PackedRow)]
    for name, arrow_type in got:  # the column type is the type of the values the packer writes
        values = getattr(row, name)
        assert values and arrow_type == expected[type(values[0])], name


def test_rows_survive_the_arrow_round_trip_of_the_stream():
    rows = list(pack_groups(_groups(), 8, share_prompt=False))  # budget 8: one group per row
    schema = packed_row_schema([("kind", pa.string())])
    table = pa.Table.from_pylist([{**r.to_record(), "kind": "packed"} for r in rows], schema=schema)
    back = [PackedRow.from_record(rec) for rec in table.to_pylist()]
    assert len(rows) == 2 and repr([b.to_record() for b in back]) == repr([r.to_record() for r in rows])  # NaN too


def test_a_new_field_is_one_line_and_reaches_the_schema():
    @dataclass
    class RowWithMore(PackedRow):
        extra_index: list[int] = field(default_factory=list)  # e.g. a new head's read positions

    names = dict(packed_row_fields(RowWithMore))
    assert names["extra_index"] == pa.list_(pa.int32()) and list(names)[:-1] == [n for n, _ in packed_row_fields()]


def test_layout_helpers_agree_with_a_prompt_shared_row():
    row = next(pack_groups(_groups()[:1], 64, share_prompt=True))
    assert row.input_ids == [1, 2, 3, 4, 5] and row.seq_laid_out_lens == [2, 1]
    assert unpack_sequences(row) == [[1, 2, 3, 4], [1, 2, 5]]
    blocks = attention_blocks(row)
    assert [(b.start, b.length, b.prefix_start, b.prefix_len) for b in blocks] == [(0, 2, 0, 0), (2, 2, 0, 2),
                                                                                  (4, 1, 0, 2)]


def test_the_empty_row_holds_no_pair_and_no_loss_unit():
    batch = collate_row(PackedRow.empty())
    out = RewardOutput(rewards=torch.tensor([3.0]))
    res = compute_loss(out, batch, LossSettings("bt"))
    assert batch.num_pairs == 0 and batch.num_scored == 0 and res.terms["bt"][0].item() == 0.0
