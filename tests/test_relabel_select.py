"""Fast tests of the relabel rules: candidate parsing, pair selection, rejudge, best-of-n, one task end to end."""
from __future__ import annotations

import itertools
import json

import pytest

from ray_rm.data.formats import normalize_candidates
from ray_rm.data.sources import plan_read_tasks
from ray_rm.errors import DataError
from ray_rm.relabel import select
from ray_rm.relabel.config import RelabelConfig
from ray_rm.relabel.task import relabel_task


def cands(k: int, prompt="Q: ", chat=False):
    if chat:
        return normalize_candidates({"prompt": [{"role": "user", "content": "hi"}],
                                     "responses": [[{"role": "assistant", "content": f"r{i}"}] for i in range(k)]},
                                    "f.jsonl", 1)
    return normalize_candidates({"prompt": prompt, "responses": [f"r{i}" for i in range(k)]}, "f.jsonl", 7)


def test_normalize_candidates_forms_and_errors():
    ex = normalize_candidates({"responses": ["Q: hi there", "Q: hi you"]}, "f", 1)
    assert ex.prompt == "Q: hi " and ex.responses == ("there", "you") and ex.ranks == (0, 0)
    chat = normalize_candidates({"responses": [[{"role": "user", "content": "x"},
                                                {"role": "assistant", "content": "y"}]]}, "f", 2, min_responses=1)
    assert chat.prompt == (("user", "x"),) and chat.responses == ((("assistant", "y"),),)
    with pytest.raises(DataError, match=r"f, row 3, field 'responses': expected a list of at least 2"):
        normalize_candidates({"prompt": "p", "responses": ["only"]}, "f", 3)
    with pytest.raises(DataError, match=r"row 4, field 'responses\[1\]'"):
        normalize_candidates({"prompt": "p", "responses": ["a", 5]}, "f", 4)
    with pytest.raises(DataError, match="field 'prompt'"):
        normalize_candidates({"responses": ["only"]}, "f", 5, min_responses=1)


def test_best_vs_worst_ties_and_margin():
    ex = cands(4)
    sel = select.pairs_from_candidates(ex, [0.5, 2.0, -1.0, 2.0], "best_vs_worst", 0.0)
    (rec,) = sel.records
    assert (rec["chosen"], rec["rejected"]) == ("r1", "r2") and rec["margin"] == 3.0  # first of the tied best
    assert rec["prompt"] == "Q: " and rec["example_id"] == "f.jsonl:7"
    assert select.pairs_from_candidates(ex, [1.0] * 4, "best_vs_worst", 0.0).drop[0] == "tie"
    assert select.pairs_from_candidates(ex, [1.0, 1.2, 1.1, 1.0], "best_vs_worst", 0.5).drop[0] == "under_margin"


def test_best_vs_random_is_valid_and_deterministic():
    ex = cands(5)
    scores = [3.0, 1.0, 2.9, 0.0, 3.0]
    picks = {select.pairs_from_candidates(ex, scores, "best_vs_random", 0.5, seed=s).records[0]["rejected"]
             for s in range(40)}
    assert picks == {"r1", "r3"}  # only candidates at least min_margin below the best
    again = [select.pairs_from_candidates(ex, scores, "best_vs_random", 0.5, seed=3).records[0] for _ in range(3)]
    assert again[0] == again[1] == again[2]


def test_all_pairs_matches_brute_force():
    ex = cands(5)
    scores = [0.3, 1.5, 1.5, -2.0, 0.9]
    sel = select.pairs_from_candidates(ex, scores, "all_pairs", 0.7)
    got = {(r["chosen"], r["rejected"]) for r in sel.records}
    want = {(f"r{i}", f"r{j}") for i, j in itertools.permutations(range(5), 2) if scores[i] - scores[j] >= 0.7}
    assert got == want and all(r["score_chosen"] > r["score_rejected"] for r in sel.records)
    assert sel.counts["pairs_tied"] == 1 and sel.counts["pairs_under_margin"] == 10 - 1 - len(want)
    assert select.pairs_from_candidates(ex, [1.0] * 5, "all_pairs", 0.0).drop[0] == "tie"


def test_rejudge_policies():
    ex = normalize_candidates({"prompt": "p", "responses": ["good", "bad"]}, "f", 1)
    keep = select.rejudge(ex, [-1.0, 2.0], "keep", 0.0).records[0]
    assert keep["agree"] is False and keep["swapped"] is False and keep["chosen"] == "good"
    swap = select.rejudge(ex, [-1.0, 2.0], "swap", 0.0)
    assert swap.records[0]["chosen"] == "bad" and swap.records[0]["score_chosen"] == 2.0
    assert swap.records[0]["swapped"] and swap.counts["swapped"] == 1 and swap.counts["disagree"] == 1
    assert select.rejudge(ex, [-1.0, 2.0], "drop", 0.0).drop[0] == "disagree"
    assert select.rejudge(ex, [1.0, 1.0], "swap", 0.0).drop[0] == "tie"
    assert select.rejudge(ex, [1.0, 1.0], "keep", 0.0).records[0]["agree"] is False
    assert select.rejudge(ex, [1.2, 1.0], "keep", 0.5).drop[0] == "under_margin"
    assert select.rejudge(ex, [3.0, 1.0], "drop", 0.5).records[0]["agree"] is True


def test_best_of_n_and_chat_schema():
    ex = cands(3, chat=True)
    rec = select.best_of_n(ex, [0.1, 0.7, 0.7]).records[0]
    assert rec["best_index"] == 1 and rec["response"] == [{"role": "assistant", "content": "r1"}]
    assert rec["prompt"] == [{"role": "user", "content": "hi"}] and rec["scores"] == [0.1, 0.7, 0.7]
    import pyarrow as pa

    table = pa.Table.from_pylist([rec], schema=select.output_schema("best-of-n", chat=True))
    assert table.to_pylist()[0] == rec


def test_task_accounting_and_strict_mode(tmp_path, exported_tiny_rm):
    """One task without Ray: every row read is written or dropped with its reason; raise mode names the row."""
    from ray_rm.scoring import RewardScorer

    src = tmp_path / "c.jsonl"
    rows = [{"prompt": "Q: 2+2? A: ", "responses": ["4", "5", "22"]},
            "not json",
            {"prompt": "Q: x", "responses": ["same", "same"]},
            {"prompt": "Q: 3+3? A: ", "responses": ["6", "7"]},
            {"responses": "oops"}]
    src.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    scorer = RewardScorer(exported_tiny_rm)
    (task,) = plan_read_tasks([str(src)])
    out = relabel_task(task, scorer, RelabelConfig(mode="pairs-from-candidates"))
    assert out.report.rows_read == 5 and out.report.rows_kept == 2 and len(out.records) == 2
    assert dict(out.report.dropped) == {"invalid:row": 1, "tie": 1, "invalid:responses": 1}
    for rec in out.records:
        assert rec["score_chosen"] > rec["score_rejected"]
        assert rec["margin"] == pytest.approx(rec["score_chosen"] - rec["score_rejected"])
    with pytest.raises(DataError, match=r"c.jsonl, row 2: invalid JSON"):
        relabel_task(task, scorer, RelabelConfig(mode="pairs-from-candidates", on_error="raise"))


def test_a_task_refuses_a_row_whose_schema_differs_from_its_first_row():
    """A part file holds text or message-list prompts, never both: the row that switches is named."""
    parse = select.OneSchemaParser(normalize_candidates, "rows", "responses")
    assert parse.chat is None
    text = {"prompt": "Q: ", "responses": ["a", "b"]}
    chat = {"prompt": [{"role": "user", "content": "hi"}],
            "responses": [[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}]]}
    assert parse(text, "in.jsonl", 1).responses == ("a", "b") and parse.chat is False
    assert parse(text, "in.jsonl", 2).prompt == "Q: "
    with pytest.raises(DataError, match=r"in\.jsonl.*row 3.*responses.*mixes text and message-list rows"):
        parse(chat, "in.jsonl", 3)
    chat_first = select.OneSchemaParser(normalize_candidates, "rows", "responses")
    assert chat_first(chat, "c.jsonl", 1).is_chat and chat_first.chat is True
    with pytest.raises(DataError, match="mixes text and message-list rows"):
        chat_first(text, "c.jsonl", 2)
