"""End-to-end training on a real local Ray cluster: Ray Train TorchTrainer + DeepSpeed on CPU (gloo)."""
import json
import os
from pathlib import Path

import pytest
import torch

from ray_rm.scoring import RewardScorer
from ray_rm.train.driver import run_training
from conftest import HH_TEST, HH_TRAIN
from train_helpers import all_weights, eval_accuracy_by_transformers, head_weight, read_metrics, tiny_config

pytestmark = pytest.mark.slow


def epoch_losses(metrics):
    by_epoch: dict = {}
    for m in metrics:
        if "train/rm/loss" in m:
            by_epoch.setdefault(m["epoch"], []).append(m["train/rm/loss"])
    return [sum(v) / len(v) for _, v in sorted(by_epoch.items())]


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_two_workers_zero_loss_falls_and_export_reproduces_rewards(ray_local, tiny_decoder_dir, tmp_path, zero_stage):
    out = tmp_path / f"zero{zero_stage}"
    summary = run_training(tiny_config(tiny_decoder_dir, out, **{"train.zero_stage": zero_stage,
                                                                  "train.num_epochs": 5}))
    losses = epoch_losses(read_metrics(out))
    assert len(losses) == 5 and losses[-1] < losses[0] - 0.05, losses
    kept = summary["data"]["drop_report"]["train"]["rows_kept"]
    # 2 data-parallel workers streaming uneven shards, 1 row per step each: an epoch lasts as long as the longer
    per_rank = summary["data"]["train_rows_per_dp_rank"]
    assert len(per_rank) == 2 and sum(per_rank) == summary["data"]["train_rows_packed"]
    steps_per_epoch = max(per_rank)
    assert 40 <= kept <= 48 and summary["steps"] == 5 * steps_per_epoch and summary["pairs_seen"] == 5 * kept
    accuracy, pairs = eval_accuracy_by_transformers(tiny_config(tiny_decoder_dir, out), out / "hf")
    assert pairs >= 40 and summary["final_metrics"]["eval/rm/accuracy"] == pytest.approx(accuracy, abs=1.01 / pairs)
    assert json.loads((out / "summary.json").read_text())["hf_checkpoint"] == str(out / "hf")
    check = summary["export_check"]  # the self-test ran on training examples + the built-in ones
    assert check["passed"] and check["items"] >= 8 and check["max_abs_diff"] < 1e-4, check
    assert_curves_match_logged_metrics(out, summary)

    # the exported checkpoint, loaded by plain transformers, gives ray_rm's rewards for the same text
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    scorer = RewardScorer(str(out / "hf"))
    items = [("\n\nHuman: How do I bake bread?\n\nAssistant:", " Mix flour, water, yeast and salt."),
             ((("user", "hi"),), (("assistant", "hello there"),)), ("", "short")]
    ours = scorer.score(items)
    tok = AutoTokenizer.from_pretrained(out / "hf")
    clf = AutoModelForSequenceClassification.from_pretrained(out / "hf").eval()
    assert tok.pad_token_id != tok.eos_token_id
    texts = [tok.decode(ids) for ids in scorer.encode(items)]
    batch = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = clf(**batch).logits[:, 0].tolist()
    assert max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-4
    meta = clf.config.ray_rm
    assert meta["reward_std"] > 0 and meta["contract"] == "no_hidden_tokens" and "append_eos" not in meta


def assert_curves_match_logged_metrics(out: Path, summary: dict):
    """summary.json's curves: every step's train loss/accuracy as metrics.jsonl logged it, the final eval as Ray
    Train reported it; train_curves.png is a real PNG of the planned size."""
    saved = json.loads((out / "summary.json").read_text())["curves"]
    logged = [(m["global_step"], m["train/rm/loss"], m["train/rm/accuracy"]) for m in read_metrics(out)
              if "train/rm/loss" in m]
    assert len(logged) == summary["steps"]
    assert list(zip(saved["train"]["step"], saved["train"]["loss"], saved["train"]["accuracy"])) == logged
    final = summary["final_metrics"]  # eval_every=0: the final eval is the only one
    assert saved["eval"] == {"step": [summary["steps"]], "loss": [final["eval/rm/loss"]],
                             "accuracy": [final["eval/rm/accuracy"]]}
    png = (out / "train_curves.png").read_bytes()
    assert summary["curves_png"] == str(out / "train_curves.png") and len(png) > 1000
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (1000, 400)  # 10 x 4 in, 100 dpi


def test_lora_checkpoint_holds_the_value_head_and_export_merges(ray_local, tiny_decoder_dir, tmp_path):
    from ray_rm.config_schema import ModelConfig
    from ray_rm.model.build import build_reward_model

    out = tmp_path / "lora"
    summary = run_training(tiny_config(tiny_decoder_dir, out, **{"train.lora.r": 4, "train.checkpoint_every": 2,
                                                                  "train.lr": 5e-3}))
    init_head = build_reward_model(ModelConfig(name_or_path=tiny_decoder_dir), seed=42).head.weight
    trained_head = head_weight(out / "hf")
    assert not torch.allclose(trained_head, init_head)  # the head trained and was exported
    # the DeepSpeed checkpoint (frozen base excluded) still carries the value head and the adapters
    # (Ray Train keeps the newest 2: a mid-run one, every 2 steps, and the final one)
    ckpt = min((out / "ray_storage").glob("*/step_*"))
    assert int(ckpt.name.removeprefix("step_")) % 2 == 0 and int(ckpt.name.removeprefix("step_")) < summary["steps"]
    state = torch.load(next(ckpt.glob("ds/mp_rank_00_model_states.pt")), map_location="cpu", weights_only=False)
    keys = set(state["module"])
    assert "head.weight" in keys and any("lora_A" in k for k in keys)
    assert not any(k.endswith("q_proj.base_layer.weight") for k in keys)
    # merged export: the backbone differs from the base model (LoRA merged), no peft names remain
    exported = all_weights(out / "hf")
    assert not any("lora" in k for k in exported)
    base = build_reward_model(ModelConfig(name_or_path=tiny_decoder_dir)).backbone.state_dict()
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(exported[q], base[q.removeprefix("model.")])


def test_encoder_reward_model_trains_and_exports(ray_local, tiny_encoder_dir, tmp_path, monkeypatch):
    """Also: the model and data paths are given relative to the directory the job starts in, as users type them;
    Ray Train runs its workers in another working directory."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "encoder"
    monkeypatch.chdir(tmp_path)
    relative = {"data.train_files": os.path.relpath(HH_TRAIN), "data.eval_files": os.path.relpath(HH_TEST)}
    summary = run_training(tiny_config(os.path.relpath(tiny_encoder_dir), out,
                                       **{"data.max_length": 256, "train.zero_stage": 1, **relative}))
    assert summary["steps"] == max(summary["data"]["train_rows_per_dp_rank"])  # one epoch, 2 workers, 1 row each
    clf = AutoModelForSequenceClassification.from_pretrained(out / "hf").eval()
    assert type(clf).__name__ == "BertForSequenceClassification"
    scorer = RewardScorer(str(out / "hf"))
    items = [("Is the sky blue?", " Yes, on a clear day."), ("", "No.")]
    tok = AutoTokenizer.from_pretrained(out / "hf")
    batch = tok([p + r for p, r in items], padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = clf(**batch).logits[:, 0].tolist()
    assert max(abs(a - b) for a, b in zip(scorer.score(items), theirs)) < 1e-4


def test_bad_settings_fail_before_any_worker_starts(ray_local, tiny_decoder_dir, tmp_path):
    from ray_rm.errors import UserError

    with pytest.raises(UserError, match="train.loss"):
        run_training(tiny_config(tiny_decoder_dir, tmp_path / "x", **{"train.loss": "hinge"}))
    with pytest.raises(UserError, match="sequence_parallel_size"):
        run_training(tiny_config(tiny_decoder_dir, tmp_path / "x", **{"train.sequence_parallel_size": 3}))
    with pytest.raises(UserError, match="GPU"):
        run_training(tiny_config(tiny_decoder_dir, tmp_path / "x", **{"train.lora.r": 4,
                                                                       "train.lora.quantize_4bit": True}))
    assert not Path(tmp_path / "x" / "ray_storage").exists()
