"""Serving an attribute reward model: /v1/score's "attributes" equal plain transformers' logits, "rewards" are the
model's weights (or a request's) times them, and /get_reward (OpenRLHF) answers the weighted reward."""
from __future__ import annotations

import asyncio
import json

import pytest
import torch

from ray_rm.config_schema import ModelConfig
from ray_rm.model.build import build_reward_model
from ray_rm.model.export import export_hf
from ray_rm.serve.config import ServeConfig
from ray_rm.serve.inputs import InputError, parse_openrlhf_request, parse_score_request

NAMES = ["helpfulness", "correctness", "verbosity"]
WEIGHTS = [1.0, 0.5, -0.25]
TEXTS = ["Q: what is 2 + 2?\nA: 4.", "Q: what is 2 + 2?\nA: Let me think. It is 5.", "Paris is in France."]


@pytest.fixture(scope="module")
def attribute_rm(tmp_path_factory, tiny_decoder_dir) -> str:
    cfg = ModelConfig(name_or_path=tiny_decoder_dir, head="attributes", attributes=NAMES, attribute_weights=WEIGHTS,
                      attribute_stds=[2.0, 2.0, 1.0], head_init_std=0.5)
    model = build_reward_model(cfg, seed=5).eval()
    return str(export_hf(model, tiny_decoder_dir, tmp_path_factory.mktemp("attr_rm") / "hf",
                         {"chat_template": "auto", "max_length": 256}))


@pytest.fixture(scope="module")
def engine(attribute_rm):
    from ray_rm.serve.scoring_engine import ScoringEngine

    eng = ScoringEngine(ServeConfig(model_path=attribute_rm))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def plain(attribute_rm) -> list[list[float]]:
    """Each text's logits from plain transformers: tokenizer(text), one sequence at a time."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(attribute_rm)
    clf = AutoModelForSequenceClassification.from_pretrained(attribute_rm, dtype=torch.float32).eval()
    with torch.no_grad():
        return [clf(**tok(t, return_tensors="pt")).logits[0].tolist() for t in TEXTS]


def score(engine, body: dict) -> dict:
    return asyncio.run(engine.score(parse_score_request(body, 16)))


def test_served_attributes_equal_plain_transformers_and_rewards_are_weighted(engine, plain):
    out = score(engine, {"inputs": [{"text": t} for t in TEXTS]})
    assert [list(a) for a in out["attributes"]] == [NAMES] * 3
    for got, ref, reward in zip(out["attributes"], plain, out["rewards"]):
        assert [got[n] for n in NAMES] == pytest.approx(ref, abs=1e-4)
        assert reward == pytest.approx(sum(w * v for w, v in zip(WEIGHTS, ref)), abs=1e-4)
    assert len({round(r, 6) for r in out["rewards"]}) == 3  # the weights make a difference per text
    assert engine.describe()["attributes"] == NAMES and engine.describe()["attribute_weights"] == WEIGHTS


def test_request_weights_replace_the_models(engine, plain):
    out = score(engine, {"inputs": [{"text": t} for t in TEXTS], "weights": {"correctness": 2.0, "verbosity": -1}})
    for reward, ref in zip(out["rewards"], plain):
        assert reward == pytest.approx(2.0 * ref[1] - ref[2], abs=1e-4)  # helpfulness not named: weight 0
    again = score(engine, {"inputs": [{"text": TEXTS[0]}]})  # the next request is back on the model's weights
    assert again["rewards"][0] == pytest.approx(sum(w * v for w, v in zip(WEIGHTS, plain[0])), abs=1e-4)
    with pytest.raises(InputError, match="'weights' names 'tone'.*helpfulness, correctness, verbosity"):
        score(engine, {"inputs": [{"text": TEXTS[0]}], "weights": {"tone": 1}})
    with pytest.raises(InputError, match="finite number"):
        parse_score_request({"inputs": [{"text": "x"}], "weights": {"correctness": "high"}}, 4)


def test_get_reward_answers_the_weighted_reward(engine, plain):
    out = asyncio.run(engine.score(parse_openrlhf_request({"query": TEXTS[:2]}, 4)))
    assert out["rewards"] == pytest.approx([sum(w * v for w, v in zip(WEIGHTS, ref)) for ref in plain[:2]], abs=1e-4)


def test_weights_on_a_scalar_model_are_refused(exported_tiny_rm):
    from ray_rm.serve.scoring_engine import ScoringEngine

    eng = ScoringEngine(ServeConfig(model_path=exported_tiny_rm))
    try:
        with pytest.raises(InputError, match="attribute reward models only"):
            score(eng, {"inputs": [{"text": "hi"}], "weights": {"a": 1}})
        assert "attributes" not in score(eng, {"inputs": [{"text": "hi"}]})
    finally:
        eng.close()


def test_export_check_compares_every_attribute(attribute_rm):
    from ray_rm.model.export_check import check_export

    report = check_export(attribute_rm)
    assert report.passed, report.format()
    assert report.items >= 5


# ---------------------------------------------------------------------------------------------- relabel and eval
PROMPT = "Q: what is 2 + 2?\nA:"
ANSWERS = [" 4.", " Let me think. It is 5.", " Four, I am sure of it."]


def _plain_logits(attribute_rm, texts) -> list[list[float]]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(attribute_rm)
    clf = AutoModelForSequenceClassification.from_pretrained(attribute_rm, dtype=torch.float32).eval()
    with torch.no_grad():
        return [clf(**tok(t, return_tensors="pt")).logits[0].tolist() for t in texts]


def test_relabel_writes_every_attribute(tmp_path, attribute_rm):
    import pyarrow.parquet as pq

    from ray_rm.data.sources import plan_read_tasks
    from ray_rm.relabel.config import RelabelConfig
    from ray_rm.relabel.task import relabel_task, write_task
    from ray_rm.scoring import RewardScorer

    f = tmp_path / "cands.jsonl"
    f.write_text(json.dumps({"prompt": PROMPT, "responses": ANSWERS}) + "\n")
    (task,) = plan_read_tasks([str(f)])
    scorer = RewardScorer(attribute_rm, dtype="float32")
    ref = _plain_logits(attribute_rm, [PROMPT + a for a in ANSWERS])
    rewards = [sum(w * v for w, v in zip(WEIGHTS, r)) for r in ref]
    for mode in ("best-of-n", "pairs-from-candidates"):
        out = relabel_task(task, scorer, RelabelConfig(mode=mode, input_files=[str(f)]))
        (rec,) = out.records
        if mode == "best-of-n":
            best = max(range(3), key=lambda i: rewards[i])
            assert rec["best_index"] == best and rec["scores"] == pytest.approx(rewards, abs=1e-4)
            assert [rec["attributes"][n] for n in NAMES] == pytest.approx(ref[best], abs=1e-4)
            got = [c[n] for c in rec["candidate_attributes"] for n in NAMES]
            assert got == pytest.approx([v for r in ref for v in r], abs=1e-4)
        else:
            best, worst = max(range(3), key=lambda i: rewards[i]), min(range(3), key=lambda i: rewards[i])
            assert [rec["attributes_chosen"][n] for n in NAMES] == pytest.approx(ref[best], abs=1e-4)
            assert [rec["attributes_rejected"][n] for n in NAMES] == pytest.approx(ref[worst], abs=1e-4)
        write_task(tmp_path / mode, 0, task, out, RelabelConfig(mode=mode), {})
        table = pq.read_table(tmp_path / mode / "data" / "part-00000.parquet")
        column = "attributes" if mode == "best-of-n" else "attributes_chosen"
        assert [f.name for f in table.schema.field(column).type] == NAMES


def test_eval_reports_per_attribute_metrics_and_the_combined_rewards_pairs(tmp_path, attribute_rm):
    from ray_rm.data.sources import plan_read_tasks
    from ray_rm.eval.attribute_eval import attribute_section
    from ray_rm.eval.runner import score_task
    from ray_rm.scoring import RewardScorer

    rows = [{"prompt": PROMPT, "response": a, "helpfulness": h, "correctness": c}
            for a, h, c in zip(ANSWERS, (4, 1, 3), (4, 0, 4))]
    rows.append({"prompt": PROMPT, "chosen": ANSWERS[0], "rejected": ANSWERS[1]})
    f = tmp_path / "eval.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (task,) = plan_read_tasks([str(f)])
    rated: list = []
    pairs, report = score_task(task, RewardScorer(attribute_rm, dtype="float32"), "raise", rated=rated)
    ref = _plain_logits(attribute_rm, [PROMPT + a for a in ANSWERS])
    assert report.rows_read == 4 and report.rows_kept == 4
    assert [v for r in rated for v in r.predicted] == pytest.approx([v for r in ref for v in r], abs=1e-4)
    assert [r.gold for r in rated] == [[4, 4, None], [1, 0, None], [3, 4, None]]
    (pair,) = pairs
    assert pair.rewards == pytest.approx([sum(w * v for w, v in zip(WEIGHTS, ref[i])) for i in (0, 1)], abs=1e-4)
    section = attribute_section(rated, NAMES)
    rmse = (sum((ref[i][0] - g) ** 2 for i, g in enumerate((4, 1, 3))) / 3) ** 0.5
    assert section["rows"] == 3 and section["per_attribute"]["helpfulness"]["rmse"] == pytest.approx(rmse, rel=1e-4)
    assert section["per_attribute"]["verbosity"]["count"] == 0
