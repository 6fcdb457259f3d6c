"""Every input format and container normalizes to the same canonical rows and the same token ids.

The same three preferences are written in each supported row format (implicit-prompt text, explicit
prompt, conversational with and without a prompt, string prompt with messages, margin, scores, k-way
by ranking and by scores) and each format in each container (JSON Lines, JSON array, Parquet,
``datasets.save_to_disk`` folder); all must read back as one canonical ``PreferenceExample`` per row.
"""
from __future__ import annotations

import dataclasses
import json
import math

import pytest

from ray_rm.data.formats import PreferenceExample, normalize_row
from ray_rm.data.sources import plan_read_tasks, read_task_rows
from ray_rm.data.tokenize import SequenceEncoder, tokenize_examples
from ray_rm.errors import DataError

from conftest import HH_TRAIN

# (question, better answer, worse answer): the answers differ from their first character on.
PREFS = [("What is the capital of France?", "Paris is the capital.", "Lyon, I think."),
         ("Name a prime number.", "Seven.", "Nine, probably."),
         ("Say hello in Spanish.", "Hola.", "Bonjour.")]
MARGINS = [1.5, 0.25, 3]
SCORES = [(9.0, 2.0), (7.5, 7.0), (4, 1)]


def user(c):
    return {"role": "user", "content": c}


def assistant(c):
    return {"role": "assistant", "content": c}


def text_prompt(q):
    return f"\n\nHuman: {q}\n\nAssistant: "


TEXT_FORMATS = {
    "implicit": lambda q, c, r, i: {"chosen": text_prompt(q) + c, "rejected": text_prompt(q) + r},
    "explicit": lambda q, c, r, i: {"prompt": text_prompt(q), "chosen": c, "rejected": r},
    "kway_ranking": lambda q, c, r, i: {"prompt": text_prompt(q), "responses": [r, c], "ranking": [1, 0]},
    "kway_ranking_implicit": lambda q, c, r, i: {"responses": [text_prompt(q) + r, text_prompt(q) + c],
                                                 "ranking": [1, 0]},
}
CHAT_FORMATS = {
    "conv_implicit": lambda q, c, r, i: {"chosen": [user(q), assistant(c)], "rejected": [user(q), assistant(r)]},
    "conv_prompt": lambda q, c, r, i: {"prompt": [user(q)], "chosen": [assistant(c)], "rejected": [assistant(r)]},
    "conv_string_prompt": lambda q, c, r, i: {"prompt": q, "chosen": [assistant(c)], "rejected": [assistant(r)]},
    "conv_content_parts": lambda q, c, r, i: {"prompt": [{"role": "user", "content": [{"type": "text", "text": q}]}],
                                              "chosen": [assistant(c)], "rejected": [assistant(r)]},
    "conv_kway_ranking": lambda q, c, r, i: {"prompt": [user(q)], "responses": [[assistant(r)], [assistant(c)]],
                                             "ranking": [1, 0]},
}
# Formats that carry extra labels: same canonical rows, plus margin / scores.
LABELED = {
    "margin": lambda q, c, r, i: {**TEXT_FORMATS["explicit"](q, c, r, i), "margin": MARGINS[i]},
    "scores": lambda q, c, r, i: {**CHAT_FORMATS["conv_prompt"](q, c, r, i),
                                  "score_chosen": SCORES[i][0], "score_rejected": SCORES[i][1]},
    "kway_scores": lambda q, c, r, i: {"prompt": [user(q)], "responses": [[assistant(r)], [assistant(c)]],
                                       "scores": [SCORES[i][1], SCORES[i][0]]},
}
ALL_FORMATS = {**TEXT_FORMATS, **CHAT_FORMATS, **LABELED}
CONTAINERS = ("jsonl", "json_array", "parquet", "hf_disk")


def rows_of(fmt: str) -> list[dict]:
    return [ALL_FORMATS[fmt](q, c, r, i) for i, (q, c, r) in enumerate(PREFS)]


def write(rows: list[dict], container: str, base) -> str:
    if container == "jsonl":
        path = base.with_suffix(".jsonl")
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif container == "json_array":
        path = base.with_suffix(".json")
        path.write_text(json.dumps(rows, indent=2))
    elif container == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = base.with_suffix(".parquet")
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        import datasets

        path = base
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


def read_examples(path: str) -> list[PreferenceExample]:
    return [normalize_row(raw, task.source, rowno) for task in plan_read_tasks([path])
            for rowno, raw in read_task_rows(task)]


def canonical(ex: PreferenceExample) -> tuple:
    """What must agree across formats: prompt, responses best first, ranks."""
    return ex.prompt, ex.responses, ex.ranks


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> dict:
    """(format, container) -> the examples read back from that file."""
    import datasets

    datasets.disable_progress_bars()
    root = tmp_path_factory.mktemp("formats")
    out = {}
    for fmt in ALL_FORMATS:
        for container in CONTAINERS:
            path = write(rows_of(fmt), container, root / f"{fmt}_{container}")
            out[fmt, container] = read_examples(path)
    return out


@pytest.fixture(scope="module")
def encoder(smollm2_dir):
    from transformers import AutoTokenizer

    return SequenceEncoder(AutoTokenizer.from_pretrained(smollm2_dir))


def expected_text(i):
    q, c, r = PREFS[i]
    return text_prompt(q), (c, r), (0, 1)


def expected_chat(i):
    q, c, r = PREFS[i]
    return (("user", q),), ((("assistant", c),), (("assistant", r),)), (0, 1)


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("fmt", sorted(ALL_FORMATS))
def test_every_format_in_every_container_gives_the_canonical_rows(examples, fmt, container):
    got = examples[fmt, container]
    assert len(got) == len(PREFS)
    chat = fmt in CHAT_FORMATS or fmt in ("scores", "kway_scores")
    for i, ex in enumerate(got):
        assert canonical(ex) == (expected_chat(i) if chat else expected_text(i))
        assert ex.example_id.endswith(f":{i + 1}")  # 1-based rows in every container
        # every field, margins and scores included, agrees with the JSON Lines reading
        ref = examples[fmt, "jsonl"][i]
        assert dataclasses.replace(ex, example_id=ref.example_id) == ref


def test_margins_and_scores_are_carried(examples):
    for i in range(len(PREFS)):
        assert examples["margin", "parquet"][i].margin == float(MARGINS[i])
        assert examples["explicit", "parquet"][i].margin is None
        assert examples["scores", "hf_disk"][i].scores == tuple(map(float, SCORES[i]))
        # k-way scores are reordered best first together with the responses
        assert examples["kway_scores", "json_array"][i].scores == tuple(map(float, SCORES[i]))


@pytest.mark.parametrize("fmt", sorted(ALL_FORMATS))
def test_record_round_trip(examples, fmt):
    for container in CONTAINERS:
        for ex in examples[fmt, container]:
            rec = json.loads(json.dumps(ex.to_record()))
            assert PreferenceExample.from_record(rec) == ex


def test_same_token_ids_across_formats(examples, encoder):
    """One preference, any format or container: the same token sequences reach the model."""
    def ids(key):
        groups = tokenize_examples(encoder, examples[key], max_length=1024, overlength="drop")
        return [g.sequences for g in groups]

    for group in (list(TEXT_FORMATS) + ["margin"], list(CHAT_FORMATS) + ["scores", "kway_scores"]):
        reference = ids((group[0], "jsonl"))
        for fmt in group:
            for container in CONTAINERS:
                assert ids((fmt, container)) == reference, (fmt, container)


def test_text_rows_with_chat_template_always_match_conversations(examples, smollm2_dir, encoder):
    from transformers import AutoTokenizer

    always = SequenceEncoder(AutoTokenizer.from_pretrained(smollm2_dir), chat_template="always")
    text_rows = [normalize_row({"prompt": q, "chosen": c, "rejected": r}, "t", i) for i, (q, c, r) in enumerate(PREFS)]
    as_text = [g.sequences for g in tokenize_examples(always, text_rows, 1024, "drop")]
    as_chat = [g.sequences for g in tokenize_examples(encoder, examples["conv_prompt", "jsonl"], 1024, "drop")]
    assert as_text == as_chat


def test_kway_ties_and_order():
    ex = normalize_row({"prompt": "Q? ", "responses": ["a", "b", "c", "d"], "scores": [1, 3, 3, 0]}, "s", 1)
    assert ex.responses == ("b", "c", "a", "d") and ex.ranks == (0, 0, 1, 2) and ex.scores == (3.0, 3.0, 1.0, 0.0)
    assert (ex.chosen, ex.rejected) == ("b", "d")
    ex = normalize_row({"prompt": "Q? ", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]}, "s", 2)
    assert ex.responses == ("c", "a", "b") and ex.ranks == (0, 1, 2) and ex.scores is None
    pair = normalize_row({"prompt": "Q? ", "chosen": "c", "rejected": "a"}, "s", 3)
    kway = normalize_row({"prompt": "Q? ", "responses": ["a", "c"], "ranking": [1, 0]}, "s", 3)
    assert pair == kway


def test_implicit_prompt_of_real_hh_rows():
    """HH-RLHF pairs: the prompt is the shared conversation up to the last assistant turn, cut at a word."""
    lines = HH_TRAIN.read_text().splitlines()[:200]
    for i, line in enumerate(lines, start=1):
        raw = json.loads(line)
        ex = normalize_row(raw, "hh", i)
        assert ex.prompt + ex.chosen == raw["chosen"] and ex.prompt + ex.rejected == raw["rejected"]
        assert "\n\nAssistant:" in ex.prompt and ex.prompt[-1].isspace()
        assert ex.chosen.split()[:1] != ex.rejected.split()[:1] or not ex.chosen.strip()
        assert ex.full_texts() == [raw["chosen"], raw["rejected"]]


def test_implicit_prompt_edge_cases():
    # the texts agree on a first word: the prompt ends after it, at the word boundary
    ex = normalize_row({"chosen": "Q: hi A: I do", "rejected": "Q: hi A: I don't"}, "e", 1)
    assert ex.prompt == "Q: hi A: I " and ex.responses == ("do", "don't")
    # one text is a prefix of the other, mid-word: no prompt at all
    ex = normalize_row({"chosen": "Hello", "rejected": "Hello world"}, "e", 2)
    assert ex.prompt == "" and ex.responses == ("Hello", "Hello world")
    # conversations: the shared turns are the prompt; chosen and rejected keep their own last turn
    ex = normalize_row({"chosen": [user("a"), assistant("b"), user("c"), assistant("d")],
                        "rejected": [user("a"), assistant("b"), user("c"), assistant("e")]}, "e", 3)
    assert ex.prompt == (("user", "a"), ("assistant", "b"), ("user", "c"))
    assert ex.responses == ((("assistant", "d"),), (("assistant", "e"),))
    assert ex.full_texts()[0] == (("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"))


def test_errors_name_file_row_and_field(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"prompt": "Q", "chosen": "a", "rejected": "b"}) + "\n\n"
                    + json.dumps({"prompt": "Q", "chosen": "a", "rejected": "b", "margin": "big"}) + "\n")
    rows = list(read_task_rows(plan_read_tasks([str(path)])[0]))
    assert [r for r, _ in rows] == [1, 3]  # row numbers are line numbers: blank lines are not rows
    with pytest.raises(DataError) as info:
        normalize_row(rows[1][1], str(path), rows[1][0])
    exc = info.value
    assert (exc.source, exc.row, exc.field) == (str(path), 3, "margin")
    assert str(exc) == f"{path}, row 3, field 'margin': expected a number, got str 'big'"


@pytest.mark.parametrize("raw, field, fragment", [
    ({"chosen": "a"}, "rejected", "missing"),
    ({"chosen": "a", "rejected": "b", "margin": math.nan}, "margin", "finite"),
    ({"chosen": "a", "rejected": "b", "margin": -math.inf}, "margin", "finite"),
    ({"chosen": [user("q"), assistant("a")], "rejected": [user("q"), {"role": "narrator", "content": "b"}]},
     "rejected[1]", "unknown role"),
    ({"prompt": "q", "responses": ["a", "b", "c"], "ranking": [0, 1, 1]}, "ranking", "appears twice"),
    ({"prompt": "q", "responses": ["a", "b", "c"], "ranking": [2, 0]}, "ranking", "misses response indices [1]"),
])
def test_malformed_rows(raw, field, fragment):
    with pytest.raises(DataError) as info:
        normalize_row(raw, "data.jsonl", 7)
    assert info.value.field == field and fragment in str(info.value)
    assert str(info.value).startswith(f"data.jsonl, row 7, field '{field}': ")


def test_read_tasks_split_jsonl_gz_and_json_lines_named_json(tmp_path):
    """Read tasks seek to their first row: plain, gzip-compressed and '.json'-named JSON Lines all give
    every row once, numbered by line, whatever the task size."""
    import gzip

    rows = [{"prompt": f"Q{i}? ", "chosen": "yes", "rejected": "no"} for i in range(7)]
    body = "".join(json.dumps(r) + "\n" + ("\n" if i == 3 else "") for i, r in enumerate(rows))
    plain, named_json, packed = tmp_path / "a.jsonl", tmp_path / "b.json", tmp_path / "c.jsonl.gz"
    plain.write_text(body)
    named_json.write_text(body)
    packed.write_bytes(gzip.compress(body.encode()))
    expected = [(i + 1 + (i > 3), r) for i, r in enumerate(rows)]  # line 5 is blank
    for path in (plain, named_json, packed):
        for per_task in (1, 2, 3, 100):
            tasks = plan_read_tasks([str(path)], rows_per_task=per_task)
            assert {t.kind for t in tasks} == {"jsonl"}
            assert [x for t in tasks for x in read_task_rows(t)] == expected, (path.name, per_task)
