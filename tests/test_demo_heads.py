"""The built-in PRM and attribute demo sets: labels and ratings agree with independent checkers.

Each generated row is re-checked by code that knows nothing of the generator: step labels against the
arithmetic written in the steps, ratings against the answer text (is it the right answer to the
question? how many filler sentences does it carry?).
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from ray_rm.data import demo_attributes, demo_prm
from ray_rm.data.builtin_sets import BUILTIN_SETS, builtin_rows
from ray_rm.data.formats import normalize_row
from ray_rm.data.ratings import AttributeSchema, normalize_rated_row
from ray_rm.data.sources import plan_read_tasks, read_task_rows
from ray_rm.data.step_layout import step_end_token_positions
from ray_rm.data.stepwise import normalize_step_row
from ray_rm.errors import DataError

STEP = re.compile(r"^(\d+) ([-+*]) (\d+) = (\d+)$")  # no negative numbers
QUESTION = re.compile(r"^Start with (\d+), (.*), then (.*)\.$")
WORDS = {"add": "+", "subtract": "-", "multiply by": "*"}


def parse_question(text: str) -> tuple[int, list[tuple[str, int]]]:
    start, middle, last = QUESTION.match(text).groups()
    ops = []
    for part in middle.split(", ") + [last]:
        word, number = part.rsplit(" ", 1)
        ops.append((WORDS[word], int(number)))
    return int(start), ops


def read_step(step: str) -> tuple[int, str, int, int]:
    a, op, b, result = STEP.match(step).groups()
    return int(a), op, int(b), int(result)


def compute(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def check_solution(start: int, ops: list, steps: list[str]) -> tuple[list[bool], str | None]:
    """Labels and the first error's kind, from the written steps and the question alone: a step is good
    until the first step that starts from a number other than the previous result ("carry"), applies
    another operation or operand than the question's ("operand"; the generator never swaps the
    operation) or writes a result its own operands do not give ("result"); every step from that one on
    is bad."""
    labels, total, kind = [], start, None
    for (sym, b), step in zip(ops, steps, strict=True):
        a, op, b2, result = read_step(step)
        assert op == sym
        problems = [name for name, wrong in (("carry", a != total), ("operand", b2 != b),
                                             ("result", result != compute(a, op, b2))) if wrong]
        if kind is None and problems:
            assert len(problems) == 1, (step, problems)  # exactly one error per wrong step
            kind = problems[0]
            if kind == "result":  # far off, never a near miss: ten times the right one + a digit, or 40-90 away
                right = compute(a, op, b2)
                assert result // 10 == right or 40 <= abs(result - right) <= 90, step
        elif kind is not None:
            assert not problems, step  # later steps compute correctly from the wrong value
        labels.append(kind is None)
        total = result
    return labels, kind


def user_question(prompt) -> str:
    (role, text), = [m for m in prompt if m[0] == "user"]
    return text


@pytest.mark.parametrize("name", ["arith-steps", "arith-steps-eval"])
def test_prm_labels_match_the_arithmetic(name):
    first_errors, num_correct, num_solutions = set(), 0, 0
    kinds = {k: 0 for k in demo_prm.ERROR_KINDS}
    for i in range(200):
        raw = demo_prm.make_row(name, i)
        assert raw == demo_prm.make_row(name, i)  # row i depends only on (name, i)
        ex = normalize_step_row(raw, f"builtin:{name}", i + 1)
        assert ex.prompt[0] == ("system", demo_prm.SYSTEM)  # short system prompt, not SmolLM2's default
        start, ops = parse_question(user_question(ex.prompt))
        assert len(ops) == 3 + i % 3 and ex.subset == f"{len(ops)}-steps"
        assert len(ex.solutions) == demo_prm.K
        correct_here = 0
        for steps, labels, generated_kind in zip(ex.solutions, ex.labels, raw["error_kinds"]):
            want, kind = check_solution(start, ops, list(steps))
            assert list(labels) == want and kind == generated_kind
            assert (read_step(steps[-1])[3] == raw["answer"]) == all(labels)  # an error changes the final answer
            if all(labels):
                correct_here += 1
            else:
                first_errors.add(list(labels).index(False))
                kinds[kind] += 1
        assert correct_here >= 1  # Best-of-N always has a right answer to find
        num_correct += correct_here
        num_solutions += len(ex.solutions)
    assert first_errors == {0, 1, 2, 3, 4}
    assert 0.35 < num_correct / num_solutions < 0.55  # 1/4 + 3/4 * 1/4 = 0.44 expected
    assert min(kinds.values()) > 0.25 * sum(kinds.values())  # the three kinds drawn uniformly


def test_prm_train_and_eval_problems_are_disjoint():
    def starts(name, n):
        return {parse_question(demo_prm.make_row(name, i)["prompt"][-1]["content"])[0] for i in range(n)}

    train, evaluation = starts("arith-steps", 600), starts("arith-steps-eval", 150)
    assert train and evaluation and not train & evaluation


def test_prm_sequences_are_short(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    longest_solution = longest_total = 0
    for name in ("arith-steps", "arith-steps-eval"):
        for i in range(200):
            ex = normalize_step_row(demo_prm.make_row(name, i), name, i + 1)
            for steps in ex.solutions:
                st = step_end_token_positions(tok, ex.prompt, steps, "\n")
                longest_solution = max(longest_solution, len(st.solution_ids))
                longest_total = max(longest_total, len(st.input_ids))
    assert longest_solution <= 72 and longest_total <= 120, (longest_solution, longest_total)


def right_answer(question: str) -> str:
    """The correct answer to a demo_data question, computed from the question text alone."""
    if m := re.match(r"Write the word '(\w+)' in capital letters\.", question):
        return m.group(1).upper()
    if m := re.match(r"Write the word '(\w+)' in lowercase letters\.", question):
        return m.group(1).lower()
    if m := re.match(r"What is the first letter of the word '(\w+)'\?", question):
        return f"The first letter is '{m.group(1)[0]}'."
    if m := re.match(r"Spell the word '(\w+)' letter by letter\.", question):
        return "-".join(m.group(1))
    a, b = map(int, re.match(r"Which is larger, (\d+) or (\d+)\?", question).groups())
    return f"{max(a, b)} is larger."


def judge(question: str, response: str) -> tuple[bool, int]:
    """(is the answer right, number of filler sentences) read from the response text."""
    fillers = [f for f in demo_attributes.FILLERS if f in response]
    answer = response
    for f in fillers:
        answer = answer.replace(f, "")
    return answer.strip() == right_answer(question), len(fillers)


@pytest.mark.parametrize("name", ["attributes", "attributes-eval"])
def test_attribute_ratings_match_the_answers(name):
    schema = AttributeSchema.from_row(demo_attributes.make_row(name, 0))
    assert schema.names == demo_attributes.ATTRIBUTES
    correctness, verbosity = [], []
    for i in range(400):
        raw = demo_attributes.make_row(name, i)
        ex = normalize_rated_row(raw, name, i + 1, schema)
        right, fillers = judge(ex.prompt[0][1], ex.response[0][1])
        helpfulness = max(0, (4 if right else 0) - max(0, fillers - 1))
        assert ex.values == (helpfulness, 4.0 if right else 0.0, float(fillers))
        correctness.append(ex.values[1])
        verbosity.append(ex.values[2])
    # the two attributes vary independently, so a model must tell them apart
    assert abs(np.corrcoef(correctness, verbosity)[0, 1]) < 0.1
    assert 0.4 < np.mean(np.array(correctness) > 0) < 0.6 and set(verbosity) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("name", ["attributes-mixed", "attributes-mixed-eval"])
def test_attribute_mixed_set_pairs_prefer_the_more_helpful_answer(name):
    schema = AttributeSchema.from_row(demo_attributes.make_row(name, 0))
    for i in range(200):
        raw = demo_attributes.make_row(name, i)
        if i % 4 == 3:
            ex = normalize_row(raw, "mixed", i + 1)
            q = ex.prompt[0][1]
            scores = [max(0, (4 if r else 0) - max(0, v - 1)) for r, v in
                      (judge(q, ex.chosen[0][1]), judge(q, ex.rejected[0][1]))]
            assert scores[0] > scores[1]
        else:
            ex = normalize_rated_row(raw, "mixed", i + 1, schema)
            assert (ex.values[0] is None) == (i % 8 == 1)  # masked helpfulness on some rows


def test_attribute_train_and_eval_questions_are_disjoint():
    def questions(name, n):
        return {demo_attributes.make_row(name, i)["prompt"][0]["content"] for i in range(n)}

    assert not questions("attributes", 800) & questions("attributes-eval", 200)
    assert not questions("attributes-mixed", 800) & questions("attributes-mixed-eval", 200)


def test_builtin_sets_read_through_sources():
    for name in ("arith-steps-eval", "attributes-mixed", "verifiable"):
        tasks = plan_read_tasks([f"builtin:{name}"], rows_per_task=7, builtin_size=40)
        rows = [row for t in tasks for row in read_task_rows(t)]
        _, divisor = BUILTIN_SETS[name]
        assert [r for r, _ in rows] == list(range(1, 40 // divisor + 1))
        assert [raw for _, raw in rows] == builtin_rows(f"builtin:{name}", 40, 0, 40)
    with pytest.raises(DataError, match="builtin:arith-steps, builtin:arith-steps-eval"):
        builtin_rows("builtin:nope", 10, 0, 10)
