"""``classify_row`` is conservative: every row that parses as a preference today stays a "pair".

Checked on every row form of tests/test_formats.py, every row of the bad-data corpus (committed and
generated files; their errors must still come from ``normalize_row``), real HH-RLHF rows, and the
built-in demo sets; stepwise and rated rows go to their own normalizers, including in one mixed file.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from ray_rm.data.builtin_sets import builtin_rows
from ray_rm.data.formats import normalize_row
from ray_rm.data.ratings import AttributeSchema, normalize_rated_row
from ray_rm.data.row_kinds import classify_row
from ray_rm.data.sources import plan_read_tasks, read_task_rows
from ray_rm.data.stepwise import normalize_step_row
from ray_rm.errors import DataError

from conftest import HH_TRAIN
from test_formats import ALL_FORMATS, PREFS

DATA_DIR = Path(__file__).parent / "data"


def test_every_preference_format_is_a_pair():
    for fmt, make in ALL_FORMATS.items():
        for i, (q, c, r) in enumerate(PREFS):
            raw = make(q, c, r, i)
            assert classify_row(raw) == "pair", fmt
            normalize_row(raw, fmt, i + 1)  # and it still parses


def test_real_hh_rows_and_builtin_preference_sets_are_pairs():
    for line in HH_TRAIN.read_text().splitlines()[:200]:
        assert classify_row(json.loads(line)) == "pair"
    for raw in builtin_rows("builtin:verifiable", 40, 0, 40):
        assert classify_row(raw) == "pair"


def _corpus_rows(root: Path):
    """(file, row) for every row of every readable file in the corpus (unreadable files are skipped)."""
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name not in ("cases.json", "generated.txt")):
        try:
            for task in plan_read_tasks([str(path)]):
                for _, raw in read_task_rows(task):
                    if not isinstance(raw, DataError):
                        yield path.name, raw
        except DataError:
            continue


def test_bad_data_corpus_rows_stay_pairs(tmp_path):
    sys.path.insert(0, str(DATA_DIR))
    try:
        import make_bad_corpus
    finally:
        sys.path.remove(str(DATA_DIR))
    root = tmp_path / "bad"
    shutil.copytree(DATA_DIR / "bad", root)
    make_bad_corpus.build(root)
    rows = list(_corpus_rows(root))
    assert len({name for name, _ in rows}) >= 40
    for name, raw in rows:
        assert classify_row(raw) == "pair", (name, raw)


STEPWISE_ROWS = [
    {"prompt": "Q", "completions": ["a"], "labels": [True]},
    {"prompt": "Q", "solutions": [{"steps": ["a"], "labels": [False]}]},
    {"input": "Q Step 1: a ки", "label": "Q Step 1: a +", "task": "MATH"},
]
RATED_ROWS = [
    {"prompt": "Q", "response": "A", "helpfulness": 3},
    {"prompt": "Q", "response": "A", "scores": {"helpfulness": 3}},
]


def test_stepwise_and_rated_rows():
    assert [classify_row(r) for r in STEPWISE_ROWS] == ["stepwise"] * 3
    assert [classify_row(r) for r in RATED_ROWS] == ["rated"] * 2
    # a pair key wins: the row is a (possibly malformed) preference, as today
    assert classify_row({"prompt": "Q", "chosen": "a", "response": "b", "completions": ["x"]}) == "pair"
    # null columns count as absent (Parquet): a rated row with a null 'chosen' column is rated
    assert classify_row({"prompt": "Q", "response": "A", "helpfulness": 1, "chosen": None}) == "rated"
    # 'input' alone (no 'label') is not Math-Shepherd; unknown shapes stay pairs and fail there
    assert classify_row({"input": "Q"}) == "pair"
    assert classify_row({"question": "Q", "answer": "A"}) == "pair"
    assert classify_row(["a", "b"]) == "pair"


def test_one_mixed_file_dispatches_every_row(tmp_path):
    """Rated rows and preference pairs in one JSON Lines file (the built-in mixed demo set) each reach
    their normalizer; the schema comes from the first rated row."""
    rows = builtin_rows("builtin:attributes-mixed", 24, 0, 24)
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    schema, kinds = None, []
    for task in plan_read_tasks([str(path)]):
        for rowno, raw in read_task_rows(task):
            kind = classify_row(raw)
            kinds.append(kind)
            if kind == "rated":
                schema = schema or AttributeSchema.from_row(raw, str(path), rowno)
                ex = normalize_rated_row(raw, str(path), rowno, schema)
                assert ex.names == ("helpfulness", "correctness", "verbosity")
            elif kind == "pair":
                assert normalize_row(raw, str(path), rowno).ranks == (0, 1)
            else:
                pytest.fail(f"row {rowno} classified {kind}")
    assert kinds == ["pair" if i % 4 == 3 else "rated" for i in range(24)]


def test_builtin_stepwise_rows_are_stepwise():
    for raw in builtin_rows("builtin:arith-steps", 12, 0, 12):
        assert classify_row(raw) == "stepwise"
        normalize_step_row(raw, "builtin:arith-steps", 1)
