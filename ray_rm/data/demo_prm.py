"""Built-in process-reward demo data: running-total arithmetic whose every step a program can check.

What this module is for: stepwise rows (the ``{"prompt", "solutions": [...]}`` form of ``stepwise``) with
known per-step labels, so a test and the demo can show a PRM finding the first wrong step on held-out
problems, and Best-of-N picking a correct solution. It must stay pure and deterministic: row i depends
only on (set name, i), so Ray Data tasks generate their ranges independently.

A problem applies 3-5 operations to a starting number; a solution writes one step per operation::

    prompt   "Start with 17, add 8, subtract 5, then multiply by 3."
    steps    "17 + 8 = 25"   "25 - 5 = 20"   "20 * 3 = 60"

Each row has ``K`` solutions in random order, at least one fully correct; every other solution is
correct with probability 1/4, else one step (uniformly chosen) holds one error of a kind drawn
uniformly from ``ERROR_KINDS``, and every later step computes correctly from that step's (wrong) result:
  * ``carry``   the step starts from a number that is not the previous step's result (not the starting
                number, for the first step), 3-30 away from it, and computes correctly from it:
                ``25 - 5 = 20`` written as ``28 - 5 = 23``;
  * ``operand`` the step uses an operand other than the prompt's (3-20 away from it; a multiplier
                becomes 4-6) and computes correctly with it: ``25 - 5 = 20`` written as ``25 - 17 = 8``;
  * ``result``  the step's result is far off: ten times the right one plus a digit, or 40-90 away from
                it: ``25 - 5 = 20`` written as ``25 - 5 = 203`` or ``25 - 5 = 71``.
Every written number stays >= 0 (a negative running total would give the error away). Why these
kinds and not off-by-one arithmetic (this module's first version): a PRM on SmolLM2-135M must be able
to see the error in the text within the demo's budget. A linear probe on the frozen model's last
hidden state at the step ends (60 problems to fit, 30 held out, 2026-11-30) separated the wrong step
from good steps with ROC AUC 0.98 for ``carry``, 0.92 for ``operand`` and 0.87 for ``result``
(copying a number from the prompt or the line above, or a result of the wrong size), but only 0.61 for
results off by 1 or 2, and 0.69 for a swapped operation; LoRA training in the demo's few minutes then
starts from features that already carry the signal. So the demo shows a PRM catching copying slips
and gross miscalculations, not subtle arithmetic.
Labels follow Math-Shepherd / ProcessBench: True before the first error, False from it on (a step
built on a wrong value cannot lead to the right answer, so it is not a good step even when its own
arithmetic holds). Rows also carry ``answer`` (the true result; ignored by the normalizer), ``subset``
("<n>-steps") and ``error_kinds`` (per solution: the kind, or null for a correct one; ignored too).
The correct solutions of one prompt are the same text (the arithmetic has one right way to be written).
Train and eval draw starting numbers from disjoint sets, so no eval problem appears in training.
The prompt carries a short system message (``SYSTEM``): without one, SmolLM2's chat template inserts
its default system prompt, ~12 more tokens per problem that tell the PRM nothing.
Sizes (SmolLM2 tokenizer, ``step_layout`` rule, "\\n" separator; tests/test_demo_heads.py): a solution
is at most 72 tokens, prompt + solution at most 120 with the chat template (a group of four ~220).
"""
from __future__ import annotations

import random

from ray_rm.data.demo_data import _split_of

SETS = {"arith-steps": (0, 1), "arith-steps-eval": (1, 4)}  # (split id, size divisor)
K = 4  # solutions per prompt
P_EXTRA_CORRECT = 0.25
ERROR_KINDS = ("carry", "operand", "result")
SYSTEM = "Check each step."
_OPS = {"add": ("+", "add"), "sub": ("-", "subtract"), "mul": ("*", "multiply by")}


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "add" else a - b if op == "sub" else a * b


def _operations(rng: random.Random, start: int, n: int) -> list[tuple[str, int]]:
    """n (op, operand) pairs whose true running total stays non-negative and under 1000 (short numbers)."""
    ops, total = [], start
    for _ in range(n):
        choice = rng.choice(("add", "add", "sub", "sub", "mul"))
        if choice == "mul" and total <= 60:
            b = rng.choice((2, 3))
        elif choice == "sub" and total >= 12:
            b = rng.randrange(2, min(30, total - 1))
        else:
            choice, b = "add", rng.randrange(2, 30)
        ops.append((choice, b))
        total = _apply(choice, total, b)
    return ops


def _question(start: int, ops: list[tuple[str, int]]) -> str:
    parts = [f"{_OPS[op][1]} {b}" for op, b in ops]
    return f"Start with {start}, {', '.join(parts[:-1])}, then {parts[-1]}."


def _wrong(rng: random.Random, kind: str, op: str, a: int, b: int) -> tuple[int, int, int]:
    """(first operand, operand, result) of a step holding one error of ``kind`` (see the module docstring)."""
    if kind == "carry":
        a = max(0, a + rng.choice((-1, 1)) * rng.randrange(3, 31))
    elif kind == "operand":
        b = rng.randrange(4, 7) if op == "mul" else max(2, b + rng.choice((-1, 1)) * rng.randrange(3, 21))
    result = _apply(op, a, b)
    if kind == "result":
        far = result * 10 + rng.randrange(10) if rng.random() < 0.5 else result + rng.choice((-1, 1)) * rng.randrange(40, 91)
        result = far if far != result else result + 50
    return a, b, result


def _written(rng: random.Random, start: int, ops: list, error_at: int | None, kind: str) -> list[tuple]:
    """Each step's (first operand, operand, result) as written; step ``error_at`` holds the error and later
    steps compute correctly from its result."""
    rows, total = [], start
    for i, (op, b) in enumerate(ops):
        a, b, result = _wrong(rng, kind, op, total, b) if i == error_at else (total, b, _apply(op, total, b))
        rows.append((a, b, result))
        total = result
    return rows


def _solution(rng: random.Random, start: int, ops: list, error_at: int | None, kind: str | None):
    """Steps and labels; with ``error_at`` = i, step i holds an error of ``kind`` and later steps build on it.

    Redraws the error until every written number is >= 0 and the step really differs from the right one."""
    right = _written(rng, start, ops, None, "")
    written = right
    while error_at is not None:
        written = _written(rng, start, ops, error_at, kind)
        if min(n for step in written for n in step) >= 0 and written[error_at] != right[error_at]:
            break
    steps = [f"{a} {_OPS[op][0]} {b} = {c}" for (op, _), (a, b, c) in zip(ops, written)]
    labels = [error_at is None or i < error_at for i in range(len(ops))]
    return steps, labels


def _start(rng: random.Random, split: int) -> int:
    while True:
        start = rng.randrange(10, 100)
        if _split_of(f"arith-{start}") == split:
            return start


def make_row(name: str, index: int) -> dict:
    split, _ = SETS[name]
    rng = random.Random(f"ray_rm-{name}-{index}")
    n = 3 + index % 3
    start = _start(rng, split)
    ops = _operations(rng, start, n)
    solutions = []
    for s in range(K):
        kind = None if s == 0 or rng.random() < P_EXTRA_CORRECT else rng.choice(ERROR_KINDS)
        steps, labels = _solution(rng, start, ops, None if kind is None else rng.randrange(n), kind)
        solutions.append(({"steps": steps, "labels": labels}, kind))
    rng.shuffle(solutions)
    return {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": _question(start, ops)}],
            "solutions": [s for s, _ in solutions], "error_kinds": [k for _, k in solutions],
            "answer": _final(start, ops), "subset": f"{n}-steps"}


def _final(start: int, ops: list) -> int:
    total = start
    for op, b in ops:
        total = _apply(op, total, b)
    return total
