"""Ulysses SP with head counts S does not divide: SP=S == SP=1 on gloo processes (no Ray).

SmolLM2-135M itself (9 query heads, 3 kv heads) at S=2, and a Qwen2-shaped tiny config with 14 query
heads and 2 kv heads (Qwen2.5-0.5B's ratio) at S=4: losses, rewards, and the value head's and backbone
attention projections' gradients (summed over ranks: each rank's are partial) equal the unsharded ones.
"""
from __future__ import annotations

import math

import pytest
import torch

from ray_rm.data.packer import pack_groups
from ray_rm.model.sequence_parallel import HeadSplit, check_heads
from sp_probe import PROBED, reference, run_sp
from test_model import random_groups
from tiny_models import save_tiny_decoder


def test_head_split_covers_every_head_once_and_every_kv_head_needed():
    for heads, kv, size in [(9, 3, 2), (14, 2, 4), (28, 4, 8), (4, 1, 2), (8, 8, 3), (5, 5, 5)]:
        split = HeadSplit(heads, kv, size)
        counts = split.counts
        assert sum(counts) == heads and max(counts) - min(counts) <= 1
        assert [split.q_range(r)[0] for r in range(size)] == [sum(counts[:r]) for r in range(size)]
        group = heads // kv
        for r in range(size):
            lo, hi = split.q_range(r)
            kv_lo, kv_hi = split.kv_range(r)
            assert {h // group for h in range(lo, hi)} == set(range(kv_lo, kv_hi))
            index = split.kv_index(r)
            local = torch.arange(lo, hi) // group - kv_lo
            if index is None:  # SDPA's own grouping (q head i reads kv head i // (n_q / n_kv)) is right
                assert torch.equal(local, torch.arange(hi - lo) // ((hi - lo) // (kv_hi - kv_lo)))
            else:
                assert torch.equal(index, local)


def test_more_ranks_than_heads_is_refused():
    check_heads(9, 3, 9)
    with pytest.raises(ValueError, match=r"sequence_parallel_size \(10\).*num_attention_heads \(9\)"):
        check_heads(9, 3, 10)


def short_row(budget: int, size: int):
    """A packed row of random prompt-shared groups whose length S does not divide (collate pads it with an
    unread block), so the padding path is exercised too."""
    for seed in range(100):
        for row in pack_groups(random_groups(8, vocab=(5, 49000), seed=seed), budget, True, 64):
            if len(row.input_ids) % size and len(row.group_sizes) >= 2:
                return row
    raise AssertionError("no suitable row")


def _assert_sp_equals_reference(ranks: list[dict], ref: dict) -> None:
    for r in ranks:  # every rank holds the same loss and all rewards
        assert math.isclose(r["loss"], ref["loss"], rel_tol=1e-4, abs_tol=1e-6), (r["loss"], ref["loss"])
        assert torch.allclose(r["rewards"], ref["rewards"], atol=1e-4)
    for name in PROBED:  # parameter gradients are partial per rank; their sum is the full gradient
        summed = sum(r["grads"][name] for r in ranks)
        full = ref["grads"][name]
        assert full.abs().max() > 0, name
        assert torch.allclose(summed, full, atol=1e-5, rtol=1e-3), (name, (summed - full).abs().max())


@pytest.mark.slow
def test_smollm2_nine_heads_sp2_equals_sp1(smollm2_dir, tmp_path):
    row = short_row(192, 2)
    _assert_sp_equals_reference(run_sp(smollm2_dir, row, 2, tmp_path / "sp2"), reference(smollm2_dir, row))


@pytest.fixture(scope="module")
def qwen2_14_heads_dir(tmp_path_factory, smollm2_dir) -> str:
    """Qwen2-shaped (qkv bias, GQA 14:2 like Qwen2.5-0.5B), tiny: head_dim 8, 2 layers."""
    return save_tiny_decoder(tmp_path_factory.mktemp("qwen2_14h"), "qwen2", smollm2_dir, seed=2, hidden_size=112,
                             intermediate_size=224, num_attention_heads=14, num_key_value_heads=2)


@pytest.mark.slow
def test_qwen2_shaped_fourteen_heads_sp4_equals_sp1(qwen2_14_heads_dir, tmp_path):
    row = short_row(300, 4)
    _assert_sp_equals_reference(run_sp(qwen2_14_heads_dir, row, 4, tmp_path / "sp4"),
                                reference(qwen2_14_heads_dir, row))
