"""model.head=prm end to end on a real local Ray cluster, tiny model: the train job runs 2 workers on
builtin:arith-steps, the step loss falls, the export passes its per-step self-test (plain transformers
== ray_rm), and the eval job reports step metrics and writes the per-position reliability plot."""
from __future__ import annotations

import math

import pytest

from ray_rm.train.driver import run_training
from train_helpers import read_metrics, tiny_config

pytestmark = pytest.mark.slow


def test_prm_trains_exports_and_evaluates(ray_local, tiny_decoder_dir, tmp_path):
    from ray_rm.config import load_config
    from ray_rm.eval.config import EvalJobConfig
    from ray_rm.eval.runner import run_eval

    out = tmp_path / "run"
    cfg = tiny_config(tiny_decoder_dir, out, **{
        "model.head": "prm", "train.loss": "step_bce", "data.train_files": "builtin:arith-steps",
        "data.eval_files": "builtin:arith-steps-eval", "data.builtin_size": 24, "data.limit": 0,
        "data.pack_tokens": 512, "data.max_length": 256, "train.max_steps": 4})
    summary = run_training(cfg)
    assert summary["steps"] == 4
    assert summary["export_check"]["passed"] and summary["export_check"]["max_abs_diff"] <= 1e-4
    losses = [m["train/rm/loss"] for m in read_metrics(out) if "train/rm/loss" in m]
    assert losses[-1] < losses[0] and all(math.isfinite(x) for x in losses)
    report = run_eval(load_config(EvalJobConfig, None, [
        f"output_dir={tmp_path / 'eval'}", f"eval.model_path={summary['hf_checkpoint']}",
        "data.eval_files=builtin:arith-steps-eval", "data.builtin_size=24", "eval.actors=1"]))
    assert report["head"] == "prm" and report["solutions"] == 6 * 4
    assert 0 <= report["step_accuracy"] <= 1 and report["processbench"]["num_correct"] > 0
    assert (tmp_path / "eval" / "prm_reliability.png").stat().st_size > 1000
