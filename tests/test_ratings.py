"""Rated rows: HelpSteer-style flat columns and nested ``scores`` give the same ``RatedExample``; the schema
is fixed once and checked on every row; a missing attribute is masked (None), never zero."""
from __future__ import annotations

import json
import math

import pytest

from ray_rm.data.ratings import AttributeSchema, RatedExample, normalize_rated_row
from ray_rm.data.sources import plan_read_tasks, read_task_rows
from ray_rm.errors import DataError

HELPSTEER = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
RATED = [("What is 2 + 2?", "4.", (3, 4, 4, 0, 1)),
         ("Name a colour.", "Blue, a calm colour of the sky and the sea.", (4, 4, 4, 1, 2)),
         ("Translate 'cat' to French.", "Chien.", (0, 0, 3, 0, 0))]


def flat(q, r, values, names=HELPSTEER):
    return {"prompt": q, "response": r, **dict(zip(names, values))}


def nested(q, r, values, names=HELPSTEER):
    return {"prompt": q, "response": r, "scores": dict(zip(names, values))}


SCHEMA = AttributeSchema(HELPSTEER)


def test_schema_from_first_row_keeps_the_row_order_and_skips_metadata():
    raw = {"prompt": "Q", "response": "A", "verbosity": 1, "source": "web", "correctness": 4.5,
           "is_safe": True, "id": 3, "subset": "s"}
    assert AttributeSchema.from_row(raw).names == ("verbosity", "correctness")
    assert AttributeSchema.from_row(nested("Q", "A", (1, 2, 3, 4, 0))).names == HELPSTEER
    with pytest.raises(DataError, match="no attribute found"):
        AttributeSchema.from_row({"prompt": "Q", "response": "A", "note": "x"}, "r.jsonl", 1)


@pytest.mark.parametrize("form", [flat, nested])
def test_flat_and_nested_rows_give_the_same_examples(form):
    for i, (q, r, values) in enumerate(RATED):
        ex = normalize_rated_row(form(q, r, values), "h.jsonl", i + 1, SCHEMA)
        assert (ex.prompt, ex.response, ex.names) == (q, r, HELPSTEER)
        assert ex.values == tuple(float(v) for v in values) and all(isinstance(v, float) for v in ex.values)
        assert ex.example_id == f"h.jsonl:{i + 1}"


def test_missing_and_null_attributes_are_masked_not_zero():
    raw = {"prompt": "Q", "response": "A", "helpfulness": 2, "coherence": None}
    ex = normalize_rated_row(raw, "h", 1, SCHEMA)
    assert ex.values == (2.0, None, None, None, None)
    ex = normalize_rated_row({"prompt": "Q", "response": "A", "scores": {"verbosity": 0}}, "h", 2, SCHEMA)
    assert ex.values == (None, None, None, None, 0.0)  # a real zero stays zero


def test_messages_and_record_round_trip():
    raw = {"prompt": [{"role": "user", "content": "Hi"}], "response": [{"role": "assistant", "content": "Hello!"}],
           "helpfulness": 4, "id": 12, "subset": "chat"}
    ex = normalize_rated_row(raw, "h", 1, SCHEMA)
    assert ex.prompt == (("user", "Hi"),) and ex.response == (("assistant", "Hello!"),)
    assert (ex.subset, ex.row_id) == ("chat", "12")
    # a text prompt with a message response is one user message, as for pairs
    ex2 = normalize_rated_row({**raw, "prompt": "Hi"}, "h", 1, SCHEMA)
    assert ex2 == ex
    for e in (ex, normalize_rated_row(flat(*RATED[0]), "h", 2, SCHEMA)):
        assert RatedExample.from_record(json.loads(json.dumps(e.to_record()))) == e


def test_extra_attributes_can_be_ignored_by_the_schema():
    two = AttributeSchema(("helpfulness", "verbosity"), extra="ignore")
    ex = normalize_rated_row(flat(*RATED[1]), "h", 1, two)
    assert ex.names == ("helpfulness", "verbosity") and ex.values == (4.0, 2.0)
    with pytest.raises(DataError) as info:
        normalize_rated_row(flat(*RATED[1]), "h", 1, AttributeSchema(("helpfulness", "verbosity")))
    assert info.value.field == "correctness"


def test_parquet_with_null_attributes(tmp_path):
    """Columnar files hold every column in every row: null ratings are masked, as in JSON."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [flat(*RATED[0]), {**flat(*RATED[1]), "complexity": None, "verbosity": None}]
    path = tmp_path / "rated.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    got = [normalize_rated_row(raw, str(path), rowno, SCHEMA) for task in plan_read_tasks([str(path)])
           for rowno, raw in read_task_rows(task)]
    assert got[0].values == (3.0, 4.0, 4.0, 0.0, 1.0)
    assert got[1].values == (4.0, 4.0, 4.0, None, None) and got[1].example_id == f"{path}:2"


@pytest.mark.parametrize("raw, field, fragment", [
    ({**flat(*RATED[0]), "harmlessness": 2}, "harmlessness", "is not one of the attributes"),
    ({**nested(*RATED[0]), "scores": {"helpfulness": 1, "style": 2}}, "scores.style", "is not one of"),
    ({**flat(*RATED[0]), "correctness": "4"}, "correctness", "expected a number, got str"),
    ({**flat(*RATED[0]), "correctness": True}, "correctness", "expected a number, got bool"),
    ({**flat(*RATED[0]), "correctness": math.nan}, "correctness", "finite"),
    ({**flat(*RATED[0]), "verbosity": math.inf}, "verbosity", "finite"),
    ({**nested(*RATED[0]), "scores": {"helpfulness": "high"}}, "scores.helpfulness", "expected a number"),
    ({**nested(*RATED[0]), "scores": [1, 2]}, "scores", "expected an object"),
    ({"prompt": "Q", "response": "A"}, "helpfulness", "rates none of the attributes"),
    ({"prompt": "Q", "response": "A", "scores": {}}, "scores", "rates none of the attributes"),
    ({"prompt": "Q", "helpfulness": 1}, "response", "missing"),
    ({"response": "A", "helpfulness": 1}, "prompt", "missing"),
    ({"prompt": "Q", "response": " ", "helpfulness": 1}, "response", "empty"),
    ({"prompt": [{"role": "user", "content": "Q"}], "response": "A", "helpfulness": 1}, "prompt",
     "needs a message-list response"),
    ({"prompt": "Q", "response": [{"role": "user", "content": "A"}], "helpfulness": 1}, "response",
     "last message must be from the assistant"),
    ({"prompt": "Q", "response": "A", "helpfulness": 1, "subset": 5}, "subset", "expected a string"),
    ({"prompt": "Q", "response": "A", "helpfulness": 1, "id": [1]}, "id", "string or an integer"),
    ("Q", "", "expected a JSON object"),
])
def test_malformed_rows_name_source_row_and_field(raw, field, fragment):
    with pytest.raises(DataError) as info:
        normalize_rated_row(raw, "rated.jsonl", 4, SCHEMA)
    assert info.value.field == field, str(info.value)
    assert fragment in str(info.value)
    assert str(info.value).startswith("rated.jsonl, row 4")


@pytest.mark.parametrize("names, fragment", [((), "at least one"), (("a", "a"), "repeat"),
                                             (("a", "prompt"), "invalid attribute names"),
                                             (("a", ""), "invalid attribute names")])
def test_schema_validation(names, fragment):
    with pytest.raises(ValueError, match=fragment):
        AttributeSchema(names)
    with pytest.raises(ValueError, match="extra"):
        AttributeSchema(("a",), extra="drop")
