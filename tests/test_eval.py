"""End-to-end eval job on a real local Ray cluster: scores and accuracy against a plain
``AutoModelForSequenceClassification`` run pair by pair, metrics against an independent numpy computation."""
from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from scipy import optimize, stats

from conftest import HH_TEST
from ray_rm.config import load_config
from ray_rm.eval.config import EvalJobConfig

pytestmark = pytest.mark.slow
SUBSETS = ["alpacaeval-easy", "mt-bench-hard", "math-prm", "hep-go", "my-own-set"]


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory):
    """HH pairs with RewardBench subsets, TRL conversational pairs, k-way rankings and one malformed row."""
    rows = [json.loads(line) for line in HH_TEST.read_text().splitlines()[:40]]
    for i, r in enumerate(rows):
        r["subset"] = SUBSETS[i % len(SUBSETS)]
    for i in range(4):
        rows.append({"chosen": [{"role": "user", "content": f"What is {i}+{i}?"},
                                {"role": "assistant", "content": f"It is {2 * i}."}],
                     "rejected": [{"role": "user", "content": f"What is {i}+{i}?"},
                                  {"role": "assistant", "content": f"Maybe {2 * i + 3}, not sure."}]})
    for i in range(3):
        rows.append({"prompt": f"Human: name a colour ({i})\n\nAssistant:",
                     "responses": [" Red.", " Blue, a calm colour.", " I cannot.", " Green"],
                     "ranking": [[1, 0, 3, 2], [0, 1, 2, 3], [3, 2, 1, 0]][i]})
    lines = [json.dumps(r) for r in rows]
    lines.insert(10, json.dumps({"chosen": "only chosen"}))
    path = tmp_path_factory.mktemp("eval_in") / "eval.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, rows


@pytest.fixture(scope="module")
def report(ray_local, tmp_path_factory, eval_file, exported_tiny_rm):
    from ray_rm.eval.runner import run_eval

    out = tmp_path_factory.mktemp("eval_out")
    job = load_config(EvalJobConfig, None, [f"eval.model_path={exported_tiny_rm}", f"data.eval_files={eval_file[0]}",
                                            f"output_dir={out}", "data.rows_per_read_task=16", "eval.progress=false"])
    return run_eval(job), out


def _hf_reward(model, tokenizer, messages_or_text) -> float:
    """How a TRL-style consumer scores: the checkpoint's own rules, one unpadded sequence per forward."""
    if isinstance(messages_or_text, list):
        ids = tokenizer.apply_chat_template(messages_or_text, tokenize=True)["input_ids"]
    else:
        ids = tokenizer(messages_or_text)["input_ids"]
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, 0].item()


def test_accuracy_equals_hf_pair_by_pair(report, eval_file, exported_tiny_rm):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rep, out = report
    _, rows = eval_file
    model = AutoModelForSequenceClassification.from_pretrained(exported_tiny_rm).eval()
    tokenizer = AutoTokenizer.from_pretrained(exported_tiny_rm)
    pair_rows = [r for r in rows if "chosen" in r]
    hf = [(_hf_reward(model, tokenizer, r["chosen"]), _hf_reward(model, tokenizer, r["rejected"])) for r in pair_rows]
    scores = pq.read_table(out / "scores.parquet").to_pylist()
    ours = [s["rewards"] for s in scores if len(s["rewards"]) == 2]
    assert len(ours) == len(hf) == 44
    np.testing.assert_allclose(np.array(ours), np.array(hf), atol=1e-4)
    # k-way rows: each full text scored alone, then compared in the row's gold order
    kway = [s for s in scores if len(s["rewards"]) == 4]
    hf_margins = [c - r for c, r in hf]
    for s, r in zip(kway, [r for r in rows if "responses" in r]):
        texts = [r["prompt"] + r["responses"][i] for i in r["ranking"]]
        want = [_hf_reward(model, tokenizer, t) for t in texts]
        np.testing.assert_allclose(s["rewards"], want, atol=1e-4)
        hf_margins += [want[i] - want[j] for i in range(4) for j in range(i + 1, 4)]
    assert rep["accuracy"] == pytest.approx(np.mean(np.array(hf_margins) > 0))
    assert rep["metrics"]["num_pairs"] == 44 + 3 * 6
    assert rep["drops"]["rows_read"] == len(rows) + 1 and rep["drops"]["dropped"] == {"invalid:rejected": 1}


def test_metrics_equal_independent_numpy(report):
    rep, out = report
    m = rep["metrics"]
    scores = pq.read_table(out / "scores.parquet").to_pylist()
    d, sub, lens = [], [], []
    for s in scores:
        r = s["rewards"]
        for i in range(len(r)):
            for j in range(i + 1, len(r)):  # gold order is best first with distinct ranks here
                d.append(r[i] - r[j])
                sub.append(s["subset"])
                lens.append((s["lengths"][i] + s["lengths"][j]) / 2)
    d = np.array(d)
    assert m["accuracy"] == pytest.approx(np.mean(d > 0)) and m["mean_margin"] == pytest.approx(d.mean())

    def ece(T):
        p = 1 / (1 + np.exp(-d / T))
        conf, correct = np.maximum(p, 1 - p), d > 0
        edges = np.linspace(0.5, 1, 11)
        total = 0.0
        for lo, hi in zip(edges[:-1], edges[1:]):
            sel = (conf >= lo) & ((conf < hi) if hi < 1 else (conf <= hi))
            if sel.any():
                total += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
        return total

    assert m["ece"] == pytest.approx(ece(1.0), abs=1e-9)
    T = optimize.minimize_scalar(lambda t: np.mean(np.log1p(np.exp(-d / t))), bounds=(0.01, 100),
                                 method="bounded", options={"xatol": 1e-10}).x
    assert m["temperature"] == pytest.approx(T, rel=1e-3)
    assert m["ece_temperature_scaled"] == pytest.approx(ece(m["temperature"]), abs=1e-9)
    taus = [stats.kendalltau(s["rewards"], [-x for x in s["ranks"]]).statistic for s in scores if len(s["rewards"]) > 2]
    assert m["ranking"]["kendall_tau"] == pytest.approx(np.mean(taus))
    # RewardBench sections (counts from RewardBench v1; math-prm counts as 984)
    acc = {n: np.mean([x > 0 for x, s in zip(d, sub) if s == n]) for n in SUBSETS}
    rb = m["rewardbench"]
    assert rb["sections"]["Chat"] == pytest.approx(acc["alpacaeval-easy"])
    assert rb["sections"]["Chat Hard"] == pytest.approx(acc["mt-bench-hard"])
    assert rb["sections"]["Reasoning"] == pytest.approx((984 * acc["math-prm"] + 164 * acc["hep-go"]) / 1148)
    assert rb["sections"]["Other"] == pytest.approx(acc["my-own-set"])
    assert rb["pairs_without_subset"] == 4 + 18
    edges = np.quantile(lens, [0, .25, .5, .75, 1])
    bucket = np.searchsorted(edges[1:-1], lens, side="right")
    for b, row in enumerate(m["length_buckets"]):
        assert row["accuracy"] == pytest.approx(np.mean(d[bucket == b] > 0)) and row["count"] == np.sum(bucket == b)
    assert not math.isnan(m["length_bias"]["rm_prefers_longer_rate"])


def test_report_files(report):
    rep, out = report
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["accuracy"] == rep["accuracy"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "RewardBench-style sections" in html
    for name in ("reliability.png", "reward_histogram.png", "length_buckets.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_pair_is_scored_over_length_ones_left_truncated_and_counted(ray_local, tmp_path, exported_tiny_rm,
                                                                         capsys):
    """With a 256-token limit many HH pairs are too long: all are still scored (their last 256 tokens, where
    the reward is read), the report counts them, and the job ends with a WARNING; eval.overlength=drop
    drops exactly those pairs instead, counted."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ray_rm.eval.runner import run_eval

    limit, n = 256, 40
    rows = [json.loads(line) for line in HH_TEST.read_text().splitlines()[:n]]
    tok = AutoTokenizer.from_pretrained(exported_tiny_rm)
    ids = [[tok(r[k])["input_ids"] for k in ("chosen", "rejected")] for r in rows]
    long = [i for i, seqs in enumerate(ids) if max(map(len, seqs)) > limit]
    assert 0.05 * n < len(long) < n

    def run(*extra):
        job = load_config(EvalJobConfig, None, [f"eval.model_path={exported_tiny_rm}", f"data.eval_files={HH_TEST}",
                                                f"data.limit={n}", f"eval.pack_tokens={limit}", "eval.progress=false",
                                                f"output_dir={tmp_path / str(len(extra))}", *extra])
        return run_eval(job)

    rep = run()
    assert rep["metrics"]["num_pairs"] == n and rep["drops"]["rows_dropped"] == 0
    assert rep["truncated"]["examples"] == len(long)
    assert "WARNING eval data: 40 of 40 rows used, 0 dropped" in capsys.readouterr().out
    scores = pq.read_table(tmp_path / "0" / "scores.parquet").to_pylist()
    assert [i for i, s in enumerate(scores) if s["truncated"]] == long
    model = AutoModelForSequenceClassification.from_pretrained(exported_tiny_rm).eval()
    first = long[0]
    with torch.no_grad():
        want = [model(input_ids=torch.tensor([seq[-limit:]])).logits[0, 0].item() for seq in ids[first]]
    np.testing.assert_allclose(scores[first]["rewards"], want, atol=1e-4)
    assert scores[first]["lengths"] == [len(s) for s in ids[first]]  # the untruncated lengths

    dropped = run("eval.overlength=drop")
    assert dropped["metrics"]["num_pairs"] == n - len(long)
    assert dropped["drops"]["dropped"] == {"over_length": len(long)} and dropped["truncated"]["examples"] == 0
