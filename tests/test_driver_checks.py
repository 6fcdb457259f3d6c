"""Training settings that only the model's config can check are refused before Ray starts or data is read."""
from __future__ import annotations

import pytest

from ray_rm.errors import UserError
from train_helpers import tiny_config


def test_sequence_parallel_beyond_the_head_count_fails_before_ray_starts(tiny_decoder_dir, tmp_path):
    import ray

    from ray_rm.train.driver import run_training

    assert not ray.is_initialized()
    cfg = tiny_config(tiny_decoder_dir, tmp_path / "x", **{"train.num_workers": 8, "train.sequence_parallel_size": 8})
    with pytest.raises(UserError, match=r"sequence_parallel_size \(8\) is larger than .* num_attention_heads \(4\)"):
        run_training(cfg)
    cfg = tiny_config(tiny_decoder_dir, tmp_path / "x", **{"train.sequence_parallel_size": 2,
                                                           "model.attn_implementation": "sdpa"})
    with pytest.raises(UserError, match="sequence_parallel_size=2 needs ray_rm.s varlen attention"):
        run_training(cfg)
    assert not ray.is_initialized() and not (tmp_path / "x").exists()


def test_heads_that_sequence_parallelism_does_not_divide_are_accepted(smollm2_dir, tmp_path):
    from transformers import AutoConfig

    from ray_rm.train.driver import validate_model

    hf_config = AutoConfig.from_pretrained(smollm2_dir)
    assert hf_config.num_attention_heads == 9
    for sp in (2, 4, 9):
        validate_model(tiny_config(smollm2_dir, tmp_path, **{"train.sequence_parallel_size": sp,
                                                             "train.num_workers": sp}), hf_config)
