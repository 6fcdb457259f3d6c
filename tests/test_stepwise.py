"""Every stepwise row form normalizes to the same canonical ``StepExample``; every bad-row class names its field.

The same solutions are written as TRL stepwise rows, Math-Shepherd rows (tag and +/- label text, as on
peiyi9979/Math-Shepherd's dataset card) and several-solutions rows, in JSON Lines and in one Parquet file
(where every row gets every column, null where it has none); all must read back identically.
"""
from __future__ import annotations

import json

import pytest

from ray_rm.data.sources import plan_read_tasks, read_task_rows
from ray_rm.data.stepwise import StepExample, normalize_step_row
from ray_rm.errors import DataError

# (problem, steps, labels)
PROBLEMS = [
    ("Tom has 3 apples and buys 4 more. How many does he have?",
     ("Step 1: 3 + 4 = 7.", "Step 2: The answer is 7."), (True, True)),
    ("A box holds 12 eggs. How many eggs are in 3 boxes?",
     ("Step 1: 12 * 3 = 38.", "Step 2: So 3 boxes hold 38 eggs.", "Step 3: The answer is 38."),
     (True, False, False)),
]


def trl_row(q, steps, labels):
    return {"prompt": q, "completions": list(steps), "labels": list(labels)}


def shepherd_row(q, steps, labels, tag="ки"):
    """The dataset card's layout: problem, then 'Step i: ... ки' lines; label = input with +/- for each tag."""
    body = "".join(f"{s} {tag}\n" for s in steps)
    label = "".join(f"{s} {'+' if ok else '-'}\n" for s, ok in zip(steps, labels))
    return {"input": f"{q} {body}", "label": f"{q} {label}", "task": "GSM8K"}


def solutions_row(q, steps, labels):
    return {"prompt": q, "solutions": [{"steps": list(steps), "labels": list(labels)}], "subset": "GSM8K"}


FORMS = {"trl": trl_row, "math_shepherd": shepherd_row, "solutions": solutions_row}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_each_form_gives_the_canonical_example(form):
    for i, (q, steps, labels) in enumerate(PROBLEMS):
        ex = normalize_step_row(FORMS[form](q, steps, labels), "f.jsonl", i + 1)
        assert (ex.prompt, ex.solutions, ex.labels) == (q, (steps,), (labels,))
        assert ex.example_id == f"f.jsonl:{i + 1}" and ex.num_labelled == len(steps)
        assert ex.subset == (None if form == "trl" else "GSM8K")


def test_math_shepherd_dataset_card_example():
    """The instance printed on peiyi9979/Math-Shepherd's card (steps joined by 'ки\\n', labels + then -)."""
    q = ("If Buzz bought a pizza with 78 slices at a restaurant and then decided to share it with the waiter "
         "in the ratio of 5:8, with Buzz's ratio being 5, what's twenty less the number of slices of pizza "
         "that the waiter ate?")
    steps = ["Step 1: The total ratio representing the pizza is 5+8 = <<5+8=13>>13.",
             "Step 2: The waiter ate 13 x 8 / 13 = <<13*8/13=6>>6 slices of the pizza.",
             "Step 3: Buzz ate 78 - 6 = <<78-6=72>>72 slices of the pizza.",
             "Step 4: The waiter ate 20 less than the number of slices that Buzz ate which is 72 - 20 = 52.",
             "Step 5: The waiter ate 52 slices of the pizza. The answer is: 52"]
    raw = {"input": q + " " + " ки\n".join(steps) + " ки",
           "label": q + " " + " +\n".join(steps[:1]) + " +\n" + " -\n".join(steps[1:]) + " -", "task": "GSM8K"}
    ex = normalize_step_row(raw, "ms.jsonl", 1)
    assert ex.prompt == q and ex.solutions == (tuple(steps),)
    assert ex.labels == ((True, False, False, False, False),) and ex.subset == "GSM8K"


def test_math_shepherd_tag_and_marker_are_configurable():
    raw = {"input": "Q? first <e> second <e>", "label": "Q? first + second -"}
    ex = normalize_step_row(raw, "s", 1, step_tag="<e>", first_step_marker=r"first")
    assert ex.prompt == "Q?" and ex.solutions == (("first", "second"),) and ex.labels == ((True, False),)


def test_messages_prompt_labels_as_integers_and_unlabelled_steps():
    raw = {"prompt": [{"role": "user", "content": "2 + 2?"}], "completions": ["2 + 2 = 4", "So 4."],
           "labels": [1, None], "id": 7}
    ex = normalize_step_row(raw, "s", 1)
    assert ex.prompt == (("user", "2 + 2?"),) and ex.is_chat
    assert ex.labels == ((True, None),) and ex.num_labelled == 1 and ex.row_id == "7"
    assert isinstance(ex.labels[0][0], bool)


def test_several_solutions_and_scoring_rows_without_labels():
    raw = {"prompt": "Q", "solutions": [{"steps": ["a", "b"], "labels": [True, False]}, {"steps": ["c"]}]}
    with pytest.raises(DataError) as info:
        normalize_step_row(raw, "s", 3)
    assert info.value.field == "solutions[1].labels"
    ex = normalize_step_row(raw, "s", 3, require_labels=False)
    assert ex.solutions == (("a", "b"), ("c",)) and ex.labels == ((True, False), (None,))
    ex = normalize_step_row({"prompt": "Q", "completions": ["a", "b"]}, "s", 4, require_labels=False)
    assert ex.labels == ((None, None),) and ex.num_labelled == 0


def test_record_round_trip():
    rows = [FORMS[f](*p) for f in FORMS for p in PROBLEMS]
    rows.append({"prompt": [{"role": "user", "content": "Q"}], "completions": ["a"], "labels": [None], "id": "x"})
    for i, raw in enumerate(rows):
        ex = normalize_step_row(raw, "s", i + 1, require_labels=False)
        assert StepExample.from_record(json.loads(json.dumps(ex.to_record()))) == ex


def test_all_forms_in_jsonl_and_one_parquet_file(tmp_path):
    """Parquet gives each row every column (null where absent): null columns must read as absent."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [FORMS[f](*p) for f in sorted(FORMS) for p in PROBLEMS]
    jsonl, parquet = tmp_path / "steps.jsonl", tmp_path / "steps.parquet"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    keys = sorted({k for r in rows for k in r})  # from_pylist would keep only the first row's keys
    pq.write_table(pa.table({k: [r.get(k) for r in rows] for k in keys}), parquet)
    got = {}
    for path in (jsonl, parquet):
        got[path.suffix] = [normalize_step_row(raw, "x", rowno) for task in plan_read_tasks([str(path)])
                            for rowno, raw in read_task_rows(task)]
    assert got[".jsonl"] == got[".parquet"]
    expected = [(q, (s,), (lab,)) for _ in FORMS for q, s, lab in PROBLEMS]
    assert [(e.prompt, e.solutions, e.labels) for e in got[".parquet"]] == expected


SHEPHERD_OK = shepherd_row(*PROBLEMS[1])


@pytest.mark.parametrize("raw, field, fragment", [
    ({"prompt": "Q", "completions": ["a", "b"], "labels": [True]}, "labels", "has 1 labels but 'completions' has 2"),
    ({"prompt": "Q", "completions": ["a", "  "], "labels": [True, True]}, "completions[1]", "empty or whitespace"),
    ({"prompt": "Q", "completions": ["a", ""], "labels": [True, True]}, "completions[1]", "empty or whitespace"),
    ({"prompt": "Q", "completions": ["a", 3], "labels": [True, True]}, "completions[1]", "expected a string"),
    ({"prompt": "Q", "completions": [], "labels": []}, "completions", "non-empty list"),
    ({"prompt": "Q", "completions": "a\nb", "labels": [True]}, "completions", "non-empty list"),
    ({"prompt": "Q", "completions": ["a"], "labels": ["true"]}, "labels[0]", "expected true, false, 0, 1 or null"),
    ({"prompt": "Q", "completions": ["a"], "labels": [0.7]}, "labels[0]", "float 0.7"),
    ({"prompt": "Q", "completions": ["a"], "labels": [2]}, "labels[0]", "int 2"),
    ({"prompt": "Q", "completions": ["a"], "labels": "+"}, "labels", "expected a list"),
    ({"prompt": "Q", "completions": ["a"]}, "labels", "missing"),
    ({"completions": ["a"], "labels": [True]}, "prompt", "missing"),
    ({"prompt": "  ", "completions": ["a"], "labels": [True]}, "prompt", "empty"),
    ({"prompt": [{"role": "wizard", "content": "Q"}], "completions": ["a"], "labels": [True]}, "prompt[0]",
     "unknown role"),
    ({"prompt": "Q", "completions": ["a"], "labels": [True], "subset": 3}, "subset", "expected a string"),
    ({"prompt": "Q", "completions": ["a"], "labels": [True], "id": 1.5}, "id", "string or an integer"),
    ({"prompt": "Q", "solutions": []}, "solutions", "non-empty list"),
    ({"prompt": "Q", "solutions": [["a"]]}, "solutions[0]", "object"),
    ({"prompt": "Q", "solutions": [{"labels": [True]}]}, "solutions[0].steps", "missing"),
    ({"prompt": "Q", "solutions": [{"steps": ["a", "b"], "labels": [True, "no"]}]}, "solutions[0].labels[1]",
     "expected true"),
    ({"prompt": "Q", "solutions": [{"steps": ["a"], "labels": [True, False]}]}, "solutions[0].labels",
     "has 2 labels"),
    ({"input": SHEPHERD_OK["input"]}, "label", "missing"),
    ({**SHEPHERD_OK, "label": SHEPHERD_OK["label"].replace("-", "?", 1)}, "label", "expected '+' or '-'"),
    ({**SHEPHERD_OK, "label": SHEPHERD_OK["label"].replace("38", "39", 1)}, "label", "does not match 'input'"),
    ({**SHEPHERD_OK, "label": SHEPHERD_OK["label"] + " +"}, "label", "after the last step tag"),
    # the dataset card's first version kept the tag in 'label' ("... ки +"): the tag is not replaced
    ({**SHEPHERD_OK, "label": SHEPHERD_OK["input"].replace("ки", "ки +")}, "label", "got 'к'"),
    ({"input": "Q? Step 1: a.", "label": "Q? Step 1: a."}, "input", "no step tag"),
    ({"input": "Q? Step 1: a. ки trailing", "label": "Q? Step 1: a. + trailing"}, "input", "text after the last"),
    ({"input": "Q? First: a. ки", "label": "Q? First: a. +"}, "input", "cannot find where the problem ends"),
    ({"input": "Q? ки Step 1: a. ки", "label": "Q? + Step 1: a. +"}, "input", "cannot find where the problem ends"),
    ({"input": "Step 1: a. ки", "label": "Step 1: a. +"}, "input", "problem before the first step is empty"),
    ({"input": "Q? Step 1: a. ки ки", "label": "Q? Step 1: a. + +"}, "input", "step 2 is empty"),
    ({"question": "Q", "answer": "a"}, "completions", "missing; a stepwise row is"),
    (["Q", "a"], "", "expected a JSON object"),
])
def test_malformed_rows_name_source_row_and_field(raw, field, fragment):
    with pytest.raises(DataError) as info:
        normalize_step_row(raw, "steps.jsonl", 9)
    assert info.value.field == field, str(info.value)
    assert fragment in str(info.value)
    assert str(info.value).startswith("steps.jsonl, row 9" + (f", field '{field}': " if field else ": "))
