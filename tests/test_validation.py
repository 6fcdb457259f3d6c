"""The one validation pass (ray_rm/validation.py): every job's config rules, refused before Ray starts or data
is read, naming the keys; rules that need the model read only its config.json."""
from __future__ import annotations

import dataclasses

import pytest

from ray_rm.config import ConfigError, load_config
from ray_rm.config_schema import DataConfig
from ray_rm.errors import UserError
from ray_rm.validation import validate, validate_with_model
from train_helpers import tiny_config


def test_sequence_parallel_beyond_the_head_count_fails_before_ray_starts(tiny_decoder_dir, tmp_path, monkeypatch):
    import ray_rm.ray_utils
    from ray_rm.train.driver import run_training

    def tripwire(cfg):  # the test session may already hold a Ray connection: watch the job's own start instead
        raise AssertionError("the job reached Ray before its config was validated")

    monkeypatch.setattr(ray_rm.ray_utils, "init_ray", tripwire)
    cfg = tiny_config(tiny_decoder_dir, tmp_path / "x", **{"train.num_workers": 8, "train.sequence_parallel_size": 8})
    with pytest.raises(UserError, match=r"sequence_parallel_size \(8\) is larger than .* num_attention_heads \(4\)"):
        run_training(cfg)
    cfg = tiny_config(tiny_decoder_dir, tmp_path / "x", **{"train.sequence_parallel_size": 2,
                                                           "model.attn_implementation": "sdpa"})
    with pytest.raises(UserError, match="sequence_parallel_size=2 needs ray_rm.s varlen attention"):
        run_training(cfg)
    assert not (tmp_path / "x").exists()


def test_heads_that_sequence_parallelism_does_not_divide_are_accepted(smollm2_dir, tmp_path):
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(smollm2_dir)
    assert hf_config.num_attention_heads == 9
    for sp in (2, 4, 9):
        validate_with_model(tiny_config(smollm2_dir, tmp_path, **{"train.sequence_parallel_size": sp,
                                                                  "train.num_workers": sp}), hf_config)


def test_pooling_must_suit_the_model_kind(tiny_decoder_dir, tmp_path):
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(tiny_decoder_dir)
    validate_with_model(tiny_config(tiny_decoder_dir, tmp_path, **{"model.pooling": "last"}), hf_config)
    with pytest.raises(UserError, match="model.pooling 'cls' is not available for a decoder"):
        validate_with_model(tiny_config(tiny_decoder_dir, tmp_path, **{"model.pooling": "cls"}), hf_config)


def test_a_loss_the_head_does_not_take_is_refused(tmp_path):
    from ray_rm.model.heads import HEADS, SCALAR, register_head

    register_head(dataclasses.replace(SCALAR, name="bt_only_test", losses=("bt",)))
    try:
        validate(tiny_config("m", tmp_path, **{"model.head": "bt_only_test"}))
        with pytest.raises(ConfigError, match="train.loss 'mse' does not train a model.head=bt_only_test head; it "
                                              "takes bt"):
            validate(tiny_config("m", tmp_path, **{"model.head": "bt_only_test", "train.loss": "mse"}))
    finally:
        del HEADS["bt_only_test"]


@pytest.mark.parametrize("overrides,match", [
    ({"train.num_workers": 3, "train.sequence_parallel_size": 2}, "train.num_workers \\(3\\) must be a positive"),
    ({"train.micro_steps_per_update": 0}, "train.micro_steps_per_update must be >= 1"),
    ({"data.train_files": ""}, "data.train_files is empty"),
    ({"data.max_length": 1024, "data.pack_tokens": 2000}, "data.pack_tokens \\(2000\\) must be at least 2 x"),
    ({"data.max_length": -1}, "data.max_length' must be positive"),
    ({"train.prm_cut_at_first_error": True}, "train.prm_cut_at_first_error needs model.head=prm"),
    ({"train.prm_pos_weight": 0.5}, "train.prm_pos_weight needs model.head=prm"),
    ({"model.head": "prm", "train.loss": "step_bce", "train.prm_pos_weight": 0.0}, "train.prm_pos_weight must be > 0"),
])
def test_train_rules(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        validate(tiny_config("m", tmp_path, **overrides))


def test_configs_built_in_code_are_checked_against_their_choices_too(tmp_path):
    cfg = tiny_config("m", tmp_path)
    with pytest.raises(ConfigError, match="config key 'data.overlength' must be one of drop | truncate_left"):
        validate(dataclasses.replace(cfg, data=DataConfig(overlength="cut")))


def test_every_job_config_is_dispatched_to_its_rules(tmp_path, exported_tiny_rm):
    from ray_rm.data.stats import InspectDataConfig
    from ray_rm.eval.config import EvalJobConfig
    from ray_rm.relabel.config import RelabelJobConfig
    from ray_rm.serve.config import ServeConfig, ServeJobConfig

    good = {RelabelJobConfig: [f"relabel.model_path={exported_tiny_rm}", "relabel.input_files=x.jsonl"],
            EvalJobConfig: [f"eval.model_path={exported_tiny_rm}"], ServeJobConfig: [f"serve.model_path={exported_tiny_rm}"],
            InspectDataConfig: []}
    bad = {RelabelJobConfig: ("relabel.min_margin=-1", "relabel.min_margin must be >= 0"),
           EvalJobConfig: ("eval.num_bins=0", "eval.num_bins and eval.length_buckets must be positive"),
           ServeJobConfig: ("serve.route_prefix=api", "serve.route_prefix must start with '/'"),
           InspectDataConfig: ("data.pack_tokens=1", "data.pack_tokens' must be at least 2")}
    for cls, overrides in good.items():
        validate(load_config(cls, None, overrides))
        override, match = bad[cls]
        with pytest.raises(ConfigError, match=match):
            validate(load_config(cls, None, overrides + [override]))
    with pytest.raises(ConfigError, match="reward model checkpoint '/nonexistent/rm' does not exist"):
        validate(ServeConfig(model_path="/nonexistent/rm"))
    with pytest.raises(TypeError, match="no validation rules for dict"):
        validate({})
