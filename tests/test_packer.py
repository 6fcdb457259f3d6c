"""The packer's invariants, checked by an independent layout walk over many random inputs, and its fill on real data.

Invariants: every group lands whole in exactly one row; a row never exceeds the budget; unpacking
gives back every original sequence; position ids restart at 0 per sequence (and continue from the
prompt for prompt-shared suffixes); reward_index points at each sequence's last token.
"""
from __future__ import annotations

import math
import random

import pytest

from ray_rm.data.packer import GroupPacker, TokenizedGroup, fill_fraction, pack_groups, padded_fraction
from ray_rm.model.batch import attention_blocks
from ray_rm.packed import PackedRow, unpack_sequences

from conftest import HH_TRAIN


def shared_prefix(seqs):
    n = 0
    while all(n < len(s) - 1 for s in seqs) and len({s[n] for s in seqs}) == 1:
        n += 1
    return n


def random_group(rng: random.Random, gid: int, max_len: int) -> TokenizedGroup:
    k = rng.choice([1, 2, 2, 2, 3, 4])
    prompt = [rng.randrange(50) for _ in range(rng.randint(0, max_len // 2))]
    seqs = [prompt + [rng.randrange(50, 60) for _ in range(rng.randint(1, max_len - len(prompt)))] for _ in range(k)]
    margin = rng.choice([math.nan, rng.uniform(-2, 2)])
    scores = [rng.choice([math.nan, rng.uniform(0, 10)]) for _ in range(k)] if rng.random() < 0.8 else []
    return TokenizedGroup(f"g{gid}", seqs, sorted(rng.randrange(k) for _ in range(k)), shared_len=shared_prefix(seqs),
                          margin=margin, scores=scores, subset=rng.choice(["", "chat", "safety"]))


def same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def check_row(row: PackedRow, groups: list[TokenizedGroup], budget: int, share: bool) -> None:
    """Walk the row's layout independently of the packer and check every field."""
    assert row.num_tokens <= budget
    assert len(row.input_ids) == len(row.position_ids)
    assert row.group_ids == [g.example_id for g in groups]
    pos, s = 0, 0
    for gi, g in enumerate(groups):
        k = len(g.sequences)
        prefix = g.shared_len if share and k > 1 else 0
        assert row.group_prefix_lens[gi] == prefix and row.group_sizes[gi] == k
        assert row.group_common_lens[gi] == g.shared_len and row.group_subsets[gi] == g.subset
        assert same(row.group_margins[gi], g.margin)
        assert row.input_ids[pos:pos + prefix] == g.sequences[0][:prefix]
        assert row.position_ids[pos:pos + prefix] == list(range(prefix))
        pos += prefix
        for seq, rank, score in zip(g.sequences, g.ranks, g.scores or [math.nan] * k):  # no scores: NaN
            own = seq[prefix:]
            assert row.input_ids[pos:pos + len(own)] == own
            assert row.position_ids[pos:pos + len(own)] == list(range(prefix, len(seq)))
            assert row.seq_laid_out_lens[s] == len(own) and row.seq_full_lens[s] == len(seq)
            r = row.reward_index[s]
            assert r == pos + len(own) - 1 and row.input_ids[r] == seq[-1] and row.position_ids[r] == len(seq) - 1
            assert row.seq_group[s] == gi and row.seq_ranks[s] == rank and same(row.seq_scores[s], score)
            pos += len(own)
            s += 1
    assert pos == row.num_tokens and s == len(row.seq_laid_out_lens)
    assert unpack_sequences(row) == [seq for g in groups for seq in g.sequences]
    # attention blocks tile the row; suffix blocks of a shared group see exactly their group's prompt
    blocks = attention_blocks(row)
    assert [b.start for b in blocks] == [sum(b2.length for b2 in blocks[:i]) for i in range(len(blocks))]
    assert sum(b.length for b in blocks) == row.num_tokens
    for b in blocks:
        if b.prefix_len:
            prefix_block = next(p for p in blocks if p.start == b.prefix_start)
            assert prefix_block.length == b.prefix_len and prefix_block.prefix_len == 0


def check_packing(rows: list[PackedRow], groups: list[TokenizedGroup], budget: int, share: bool) -> None:
    by_id = {g.example_id: g for g in groups}
    placed = [gid for row in rows for gid in row.group_ids]
    assert sorted(placed) == sorted(by_id)  # every group exactly once, never split across rows
    for row in rows:
        check_row(row, [by_id[gid] for gid in row.group_ids], budget, share)
    total = sum(g.num_tokens(share) for g in groups)
    assert sum(r.num_tokens for r in rows) == total
    assert len(rows) >= math.ceil(total / budget)


@pytest.mark.parametrize("seed", range(100))
def test_random_groups_pack_correctly(seed):
    rng = random.Random(seed)
    budget = rng.choice([64, 128, 300, 1024])
    share = rng.random() < 0.7
    groups = [random_group(rng, i, budget // 4) for i in range(rng.randint(0, 120))]
    rows = list(pack_groups(groups, budget, share_prompt=share, window=rng.choice([1, 3, 16, 512])))
    check_packing(rows, groups, budget, share)
    assert [r.to_record() for r in pack_groups(groups, budget, share, 16)] == \
           [r.to_record() for r in pack_groups(groups, budget, share, 16)]  # deterministic


def test_record_round_trip():
    rng = random.Random(0)
    groups = [random_group(rng, i, 40) for i in range(30)]
    for row in pack_groups(groups, 256):
        back = PackedRow.from_record(row.to_record())
        assert back.input_ids == row.input_ids and back.reward_index == row.reward_index
        assert all(same(a, b) for a, b in zip(back.seq_scores, row.seq_scores))


def test_prompt_sharing_saves_the_repeated_prompt():
    g = TokenizedGroup("p", [[1, 2, 3, 4, 10], [1, 2, 3, 4, 20, 21]], [0, 1], shared_len=4)
    (shared,) = pack_groups([g], 64, share_prompt=True)
    assert shared.input_ids == [1, 2, 3, 4, 10, 20, 21]
    assert shared.position_ids == [0, 1, 2, 3, 4, 4, 5]  # both suffixes continue from the prompt
    assert shared.reward_index == [4, 6]
    (whole,) = pack_groups([g], 64, share_prompt=False)
    assert whole.input_ids == [1, 2, 3, 4, 10, 1, 2, 3, 4, 20, 21]
    assert whole.position_ids == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5]
    assert whole.reward_index == [4, 10]


def test_best_fit_fills_rows_exactly():
    """Sizes that pair up to the budget: best-fit-decreasing within the window finds the perfect packing."""
    rng = random.Random(1)
    groups = []
    for i in range(40):
        a = rng.randint(10, 90)
        for j, n in enumerate((a, 100 - a)):
            groups.append(TokenizedGroup(f"{i}-{j}", [[7] * n], [0]))
    rng.shuffle(groups)
    rows = list(pack_groups(groups, 100, window=512))
    assert len(rows) == 40 and all(r.num_tokens == 100 for r in rows)
    assert fill_fraction(rows, 100) == 1.0


def test_stream_closes_rows_as_it_goes():
    """Memory is bounded by the window: full rows come out before the stream ends."""
    packer = GroupPacker(100, window=10, keep_open=2)
    emitted = []
    for i in range(100):
        emitted += packer.add(TokenizedGroup(f"s{i}", [[1] * 30], [0]))
        assert len(packer._pending) < 10 and len(packer._open) <= 2 + 10
    assert emitted and all(r.num_tokens == 90 for r in emitted)
    rest = packer.flush()
    assert sum(len(r.group_ids) for r in emitted + rest) == 100


def test_oversized_group_is_refused():
    with pytest.raises(ValueError, match="budget"):
        list(pack_groups([TokenizedGroup("big", [[1] * 60, [2] * 60], [0, 1])], 100))
    with pytest.raises(ValueError, match="positive"):
        GroupPacker(0)
    with pytest.raises(ValueError, match="2 sequences but 1 ranks"):
        list(pack_groups([TokenizedGroup("odd", [[1, 2], [1, 3]], [0])], 100))


def test_fractions_by_hand():
    a = TokenizedGroup("a", [[1] * 10, [1] * 6], [0, 1])
    b = TokenizedGroup("b", [[1] * 2, [1] * 2], [0, 1])
    assert padded_fraction([a, b], 2) == pytest.approx(20 / 40)  # 4 sequences padded to 10
    assert padded_fraction([a, b], 1) == pytest.approx(20 / (20 + 4))
    rows = [PackedRow(input_ids=[0] * 30), PackedRow(input_ids=[0] * 10)]
    assert fill_fraction(rows, 32) == pytest.approx(40 / 64)
    assert math.isnan(fill_fraction([], 32)) and math.isnan(padded_fraction([], 8))


@pytest.fixture(scope="module")
def hh_groups(smollm2_dir):
    from transformers import AutoTokenizer

    from ray_rm.config_schema import DataConfig
    from ray_rm.data.prepare import resolve_max_length
    from ray_rm.data.prepare import process_task
    from ray_rm.data.sources import plan_read_tasks
    from ray_rm.data.tokenize import SequenceEncoder

    encoder = SequenceEncoder(AutoTokenizer.from_pretrained(smollm2_dir))
    (task,) = plan_read_tasks([str(HH_TRAIN)], rows_per_task=2000)
    groups, report = process_task(task, encoder, resolve_max_length(DataConfig(), smollm2_dir), share_prompt=True)
    assert report.rows_read == 1600 and len(groups) == 1600
    return groups


def test_hh_rlhf_packing_vs_padding(hh_groups):
    """Packed rows at 4096 tokens are >= 98% real tokens; padded batches of 8 pairs are ~41-43%."""
    rows = list(pack_groups(hh_groups, 4096, share_prompt=True, window=512))
    check_packing(rows, hh_groups, 4096, True)
    packed = fill_fraction(rows, 4096)
    assert packed >= 0.98
    real = padded = 0
    for i in range(0, len(hh_groups), 8):  # the padded alternative, computed here from scratch
        seqs = [s for g in hh_groups[i:i + 8] for s in g.sequences]
        real += sum(map(len, seqs))
        padded += len(seqs) * max(map(len, seqs))
    assert padded_fraction(hh_groups, 8) == pytest.approx(real / padded)
    assert 0.38 <= real / padded <= 0.45
    shuffled = hh_groups[:]
    random.Random(42).shuffle(shuffled)
    assert 0.38 <= padded_fraction(shuffled, 8) <= 0.45
    assert fill_fraction(list(pack_groups(shuffled, 4096)), 4096) >= 0.98
