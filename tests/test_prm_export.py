"""A PRM export loads with plain transformers (AutoModelForTokenClassification, the step separator in its
config) and gives ray_rm's per-step scores (<= 1e-4, fp32); a trained-looking head (random weights,
non-zero bias-free outputs) makes the comparison meaningful."""
from __future__ import annotations

import json

import pytest
import torch

from ray_rm.config_schema import ModelConfig
from ray_rm.model.build import build_reward_model
from ray_rm.model.export import export_hf
from ray_rm.model.export_check import check_export
from ray_rm.model.export_check_prm import BUILTIN_STEP_ITEMS


@pytest.fixture(scope="module")
def prm_export(tiny_decoder_dir, tmp_path_factory):
    model = build_reward_model(ModelConfig(name_or_path=tiny_decoder_dir, head="prm", step_separator="\n",
                                           head_init_std=0.5), seed=5).eval()
    out = tmp_path_factory.mktemp("prm") / "hf"
    export_hf(model, tiny_decoder_dir, out, {"chat_template": "auto", "max_length": 512})
    return model, str(out)


def test_export_is_a_token_classifier_with_the_step_separator_in_its_config(prm_export, tokenizer_dir):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    _, path = prm_export
    cfg = json.loads(open(f"{path}/config.json").read())
    from transformers import AutoConfig

    assert cfg["architectures"] == ["LlamaForTokenClassification"] and AutoConfig.from_pretrained(path).num_labels == 1
    meta = cfg["ray_rm"]
    assert meta["head"] == "prm" and meta["step_separator"] == "\n"
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert meta["step_tag_id"] == tok("\n", add_special_tokens=False)["input_ids"][-1]
    clf = AutoModelForTokenClassification.from_pretrained(path)
    assert clf.score.bias is None


def test_plain_transformers_step_scores_equal_ray_rms(prm_export):
    from transformers import AutoModelForTokenClassification

    from ray_rm.scoring import RewardScorer
    from ray_rm.scoring.steps import encode_steps, score_steps

    model, path = prm_export
    report = check_export(path)
    assert report.passed, report.format()
    assert report.items == len(BUILTIN_STEP_ITEMS) and report.max_abs_diff <= 1e-4
    # independently of the check: the trained model itself, the export through ray_rm, and plain HF agree
    scorer = RewardScorer(path, dtype="float32")
    items = [(prompt, steps) for _, prompt, steps in BUILTIN_STEP_ITEMS]
    ours = score_steps(scorer, items)
    clf = AutoModelForTokenClassification.from_pretrained(path, dtype=torch.float32).eval()
    for t, got in zip(encode_steps(scorer, items), ours):
        with torch.no_grad():
            hf = clf(input_ids=torch.tensor([t.input_ids])).logits[0, t.step_ends, 0]
            trained = model._head(model.backbone(input_ids=torch.tensor([t.input_ids]),
                                                 use_cache=False).last_hidden_state[0][t.step_ends])
        assert got == pytest.approx(hf.tolist(), abs=1e-4)
        assert got == pytest.approx(trained.tolist(), abs=1e-4)
    assert len({round(s, 3) for steps in ours for s in steps}) > 3  # scores differ: the comparison means something


def test_check_fails_when_the_recorded_separator_is_not_what_step_ends_hold(prm_export, tmp_path):
    import shutil

    _, path = prm_export
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["ray_rm"]["step_separator"] = " "  # ray_rm now reads other tokens than the ones the tag id names
    (broken / "config.json").write_text(json.dumps(cfg))
    report = check_export(broken)
    assert not report.passed and any("step tag" in f for f in report.failures)
