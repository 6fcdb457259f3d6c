"""A real attribute-head training run (model.head=attributes): rated rows mixed with preference pairs, 2 workers,
the names read from the data, the export self-tested against plain transformers on every attribute."""
from __future__ import annotations

import json
import math

import pytest

from ray_rm.train.driver import run_training
from train_helpers import read_metrics, tiny_config

pytestmark = pytest.mark.slow


def test_mixed_rated_and_pair_rows_train_and_export_every_attribute(ray_local, tiny_decoder_dir, tmp_path):
    from transformers import AutoConfig

    out = tmp_path / "attrs"
    summary = run_training(tiny_config(tiny_decoder_dir, out, **{
        "model.head": "attributes", "train.loss": "attribute_mse_bt", "model.attribute_weights": "[1.0,0.5,-0.25]",
        "data.train_files": "[builtin:attributes-mixed]", "data.eval_files": "[builtin:attributes-eval]",
        "data.builtin_size": 64, "data.limit": 0, "data.max_length": 256, "data.pack_tokens": 512,
        "train.max_steps": 3}))
    assert summary["export_check"]["passed"], summary["export_check"]
    config = AutoConfig.from_pretrained(summary["hf_checkpoint"])
    assert config.id2label == {0: "helpfulness", 1: "correctness", 2: "verbosity"}
    assert config.ray_rm["attribute_weights"] == [1.0, 0.5, -0.25] and config.ray_rm["loss"] == "attribute_mse_bt"
    drops = json.loads((out / "drop_report.json").read_text())["train"]
    # max_steps=3 may end the run before the epoch's stream does: every row is still accounted for
    assert drops["rows_read"] + drops["rows_not_read"] == 64 and drops["rows_kept"] == drops["rows_read"] > 0
    losses = [m["train/rm/loss"] for m in read_metrics(out) if "train/rm/loss" in m]
    assert losses and all(math.isfinite(v) for v in losses)
