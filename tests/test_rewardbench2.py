"""RewardBench 2 scoring against hand-computed cases (fast), and end to end through the eval job (slow):
RB2 rows flow through the data formats, get scored on Ray, and report.json's ``rewardbench2`` equals the
official rules, written out plainly in this file, applied to the per-response rewards in scores.parquet."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ray_rm.data.formats import PreferenceExample, normalize_row
from ray_rm.errors import DataError
from ray_rm.eval import metrics as M
from ray_rm.eval.rewardbench2 import best_of_n, rewardbench2_scores, section_of, ties_score


def _ex(subset, rewards, k=1, row_id=None):
    return M.ScoredExample(f"x:{row_id}", list(rewards), [0] * k + [1] * (len(rewards) - k), [1] * len(rewards),
                           subset, row_id)


@pytest.mark.parametrize("scores, expected", [
    ([2.0, 1.0, 0.0, -1.0], 1.0),    # chosen beats all three rejected
    ([1.0, 2.0, 0.0, 0.0], 0.0),     # one rejected is higher
    ([2.0, 2.0, 0.0, 1.0], 0.5),     # 2-way tie at the top: half a point
    ([3.0, 3.0, 3.0, 3.0], 0.25),    # 4-way tie
    ([0.0, 0.0, 1.0], 0.0),          # tied with a rejected one, but another is higher
])
def test_best_of_n_rule(scores, expected):
    assert best_of_n(scores) == expected


TIES_ROWS = [  # (row id, scores chosen first, number chosen)
    ("ref:1", [3.0, 1.0, 2.0], 1),        # accurate, gap 3-2 = 1
    ("tied:1", [4.0, 3.5, 1.0, 3.0], 2),  # accurate, gap 3.5-3 = 0.5, spread 0.5
    ("ref:2", [0.0, 1.0], 1),             # wrong, gap -1
    ("tied:2", [5.0, 4.0, 0.0], 2),       # accurate, gap 4, spread 1
    ("tied:3", [1.0, 1.0, 2.0], 2),       # wrong (no ref:3: accuracy only)
    ("ref:4", [2.0, 1.0], 1),             # accurate (no tied:4)
]


def test_ties_formula_hand_computed():
    t = ties_score(TIES_ROWS)
    assert t["ref_accuracy"] == pytest.approx(2 / 3) and t["tied_accuracy"] == pytest.approx(2 / 3)
    assert t["paired_prompts"] == 2 and t["rows_skipped"] == 0
    # prompt 1: hard = min(1, .5) = .5; .5 > .5 no; .5 > .5 no; tanh(.5/.5 - 1) = 0
    # prompt 2: hard = min(-1, 4) = -1; 4 > 1 yes; -1 > 1 no; tanh(-1/1 - 1) = tanh(-2)
    assert t["correctness_preferred"] == 0.5 and t["correctness_preferred_hard"] == 0.0
    assert t["correctness_margin_score"] == pytest.approx(math.tanh(-2) / 2)
    want = 0.3 * 2 / 3 + 0.3 * 2 / 3 + 0.2 * 0.5 + 0.2 * 0.0 + 0.01 * math.tanh(-2) / 2
    assert t["score"] == pytest.approx(want) and t["score"] == pytest.approx(0.49518, abs=1e-5)


def test_ties_zero_spread_and_unpairable_rows():
    # prompt 5: spread 0, hard = min(2, 1) = 1 -> tanh(+inf) = 1; prompt 6: gap 0 and spread 0 -> 0/0 counts 0
    t = ties_score([("ref:5", [2.0, 0.0], 1), ("tied:5", [1.0, 1.0, 0.0], 2),
                    ("ref:6", [1.0, 1.0], 1), ("tied:6", [2.0, 2.0, 2.0], 2),
                    ("weird-id", [1.0, 0.0], 1), ("tied:7", [1.0, 0.0], 2)])  # skipped: no ref/tied id; no rejected
    assert t["rows_skipped"] == 2 and t["paired_prompts"] == 2
    assert (t["ref_accuracy"], t["tied_accuracy"]) == (0.5, 0.5)
    assert (t["correctness_preferred"], t["correctness_preferred_hard"], t["correctness_margin_score"]) == \
        (0.5, 0.5, 0.5)
    assert t["score"] == pytest.approx(0.15 + 0.15 + 0.1 + 0.1 + 0.005)
    assert ties_score([("ref:1", [1.0, 0.0], 1)])["score"] is None  # no ref/tied pair: no Ties score


def test_sections_overall_and_completeness():
    rows = [_ex("Factuality", [2, 1, 0, 1]), _ex("Factuality", [2, 2, 0, 1]), _ex("Math", [0, 1, 0, 0]),
            _ex("precise if", [1, 1, 1, 1]), _ex("not-rb2", [1, 0])]
    rows += [_ex("Ties", s, k, rid) for rid, s, k in TIES_ROWS]
    rb = rewardbench2_scores(rows)
    assert list(rb["sections"]) == ["Factuality", "Precise IF", "Math", "Ties"]  # leaderboard order
    assert rb["sections"]["Factuality"] == 0.75 and rb["sections"]["Math"] == 0.0
    assert rb["sections"]["Precise IF"] == 0.25 and rb["sections"]["Ties"] == pytest.approx(0.49518, abs=1e-5)
    assert rb["counts"] == {"Factuality": 2, "Precise IF": 1, "Math": 1, "Ties": 6}
    assert rb["overall"] == pytest.approx((0.75 + 0.25 + 0.0 + rb["sections"]["Ties"]) / 4)
    assert rb["complete"] is False
    full = rewardbench2_scores(rows + [_ex("Safety", [1, 0]), _ex("Focus", [0, 1, 2, 3])])
    assert full["complete"] is True and full["overall"] == pytest.approx(
        (0.75 + 0.25 + 0.0 + 1.0 + 0.0 + rb["sections"]["Ties"]) / 6)
    assert rewardbench2_scores([_ex("alpacaeval-easy", [1, 0])]) is None
    assert section_of(" SAFETY ") == "Safety" and section_of(None) is None


def test_rewardbench_v1_mean_is_over_its_sections_and_ignores_rb2_rows():
    exs = [_ex("alpacaeval-easy", [1, 0]), _ex("custom", [0, 1]), _ex("Math", [1, 0, 2])]
    rb = M.compute_metrics(exs)["rewardbench"]
    assert set(rb["sections"]) == {"Chat", "Other"} and rb["score"] == 1.0  # Other (0.0) is not averaged in
    assert "Math" not in rb["subsets"]
    assert M.compute_metrics([_ex("Math", [1, 0])])["rewardbench"] is None


# ------------------------------------------------------------------------------------------ formats
def test_rewardbench2_rows_normalize_to_tied_ranks():
    row = {"id": "tied:7", "prompt": "Name a prime.", "chosen": ["2", "3"], "rejected": ["4", "6", "8"],
           "subset": "Ties", "num_correct": 2, "total_completions": 5, "models": ["a", "b"]}
    ex = normalize_row(row, "rb2.jsonl", 3)
    assert ex.responses == ("2", "3", "4", "6", "8") and ex.ranks == (0, 0, 1, 1, 1)
    assert ex.prompt == "Name a prime." and ex.subset == "Ties" and ex.row_id == "tied:7"
    assert PreferenceExample.from_record(json.loads(json.dumps(ex.to_record()))) == ex
    chat = normalize_row({"prompt": [{"role": "user", "content": "hi"}],
                          "chosen": [[{"role": "assistant", "content": "hello"}]],
                          "rejected": [[{"role": "assistant", "content": "go away"}]], "id": 5}, "f", 0)
    assert chat.is_chat and chat.ranks == (0, 1) and chat.row_id == "5"


@pytest.mark.parametrize("row, field, fragment", [
    ({"prompt": "p", "chosen": ["a"], "rejected": "b"}, "rejected", "non-empty list of responses"),
    ({"prompt": "p", "chosen": ["a"], "rejected": []}, "rejected", "non-empty list of responses"),
    ({"prompt": "p", "chosen": ["a", 3], "rejected": ["b"]}, "chosen[1]", "expected a string"),
    ({"prompt": "p", "chosen": ["a"], "rejected": ["  "]}, "rejected[0]", "empty"),
    ({"prompt": "p", "chosen": ["a"], "rejected": ["b"], "num_correct": 2}, "num_correct", "'chosen' has 1"),
    ({"prompt": "p", "chosen": ["a"], "rejected": ["b"], "id": {"x": 1}}, "id", "string or an integer"),
])
def test_bad_rewardbench2_rows_name_file_row_and_field(row, field, fragment):
    with pytest.raises(DataError) as err:
        normalize_row(row, "rb2.jsonl", 9)
    text = str(err.value)
    assert "rb2.jsonl" in text and "row 9" in text and f"'{field}'" in text and fragment in text


# ------------------------------------------------------------------------------------------ end to end
def _rb2_rows() -> list[dict]:
    rows = []
    for i, section in enumerate(["Factuality", "Precise IF", "Math", "Safety", "Focus"]):
        for j in range(2):
            rows.append({"id": f"{section}-{j}", "prompt": f"Question {i}.{j}: what is {i} + {j}?",
                         "chosen": [f"It is {i + j}."],
                         "rejected": [f"It is {i + j + 1}.", "I do not know.", f"Maybe {i * j + 7}, or more."],
                         "subset": section})
    for p in range(2):
        rows.append({"id": f"ref:{p}", "prompt": f"Name a colour ({p}).", "chosen": ["Red."],
                     "rejected": ["Seven.", "A number."], "subset": "Ties", "num_correct": 1})
        rows.append({"id": f"tied:{p}", "prompt": f"Name a colour ({p}).", "chosen": ["Red.", "Blue.", "Green."],
                     "rejected": ["Seven.", "A number."], "subset": "Ties", "num_correct": 3})
    return rows


def _official(rows: list[dict], rewards: list[list[float]]) -> dict:
    """The official rules written out plainly over independent rewards (loops, no ray_rm code)."""
    per, ties = {}, {"ref": {}, "tied": {}}
    for row, s in zip(rows, rewards):
        if row["subset"] != "Ties":
            top = max(s)
            per.setdefault(row["subset"], []).append((1 / s.count(top)) if s[0] == top else 0.0)
            continue
        kind, pid = row["id"].split(":")
        k = len(row["chosen"])
        corr, inc = s[:k], s[k:]
        ties[kind][pid] = (min(corr) - max(inc) > 0, max(corr) - min(corr), min(corr) - max(inc))
    ref, tied = ties["ref"], ties["tied"]
    pids = sorted(set(ref) & set(tied))
    hard = [min(ref[p][2], tied[p][2]) for p in pids]
    score = (0.3 * np.mean([v[0] for v in tied.values()]) + 0.3 * np.mean([v[0] for v in ref.values()])
             + 0.2 * np.mean([tied[p][2] > tied[p][1] for p in pids])
             + 0.2 * np.mean([h > tied[p][1] for h, p in zip(hard, pids)])
             + 0.01 * np.mean([math.tanh(h / tied[p][1] - 1) for h, p in zip(hard, pids)]))
    sections = {name: float(np.mean(v)) for name, v in per.items()}
    sections["Ties"] = float(score)
    return sections


@pytest.mark.slow
def test_eval_job_reports_rewardbench2(ray_local, tmp_path, exported_tiny_rm):
    import pyarrow.parquet as pq

    from ray_rm.config import load_config
    from ray_rm.eval.config import EvalJobConfig
    from ray_rm.eval.runner import run_eval

    rows = _rb2_rows()
    lines = [json.dumps(r) for r in rows]
    lines.insert(3, json.dumps({"id": "bad", "prompt": "p", "chosen": ["a"], "rejected": "b", "subset": "Math"}))
    data = tmp_path / "rb2.jsonl"
    data.write_text("\n".join(lines) + "\n")
    job = load_config(EvalJobConfig, None, [f"eval.model_path={exported_tiny_rm}", f"data.eval_files={data}",
                                            f"output_dir={tmp_path / 'out'}", "eval.progress=false"])
    report = run_eval(job)
    # the rewards ray_rm gave each response (test_eval checks those against a plain HF forward), by row id
    scored = {r["row_id"]: r for r in pq.read_table(tmp_path / "out" / "scores.parquet").to_pylist()}
    assert all(scored[r["id"]]["ranks"] == [0] * len(r["chosen"]) + [1] * len(r["rejected"]) for r in rows)
    rewards = [scored[r["id"]]["rewards"] for r in rows]
    for p in range(2):  # the same prompt + response in a ref and a tied row gets the same reward (order kept)
        ref, tied = scored[f"ref:{p}"]["rewards"], scored[f"tied:{p}"]["rewards"]
        assert ref[0] == pytest.approx(tied[0], abs=1e-5) and ref[1:] == pytest.approx(tied[3:], abs=1e-5)
    want = _official(rows, rewards)
    rb2 = json.loads((tmp_path / "out" / "report.json").read_text())["rewardbench2"]
    assert rb2 == report["rewardbench2"] and rb2["complete"] is True
    assert list(rb2["sections"]) == ["Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties"]
    for name, value in want.items():
        assert rb2["sections"][name] == pytest.approx(value, abs=1e-6), name
    assert rb2["overall"] == pytest.approx(np.mean(list(want.values())), abs=1e-6)
    assert rb2["counts"]["Ties"] == 4 and rb2["counts"]["Math"] == 2
    assert report["drops"]["dropped"] == {"invalid:rejected": 1}
    assert report["metrics"]["rewardbench"] is None  # RB2 subsets are not v1 subsets
    html = (tmp_path / "out" / "report.html").read_text()
    assert "RewardBench 2 (overall" in html and "Precise IF" in html and "correctness_preferred_hard" in html
