"""Built-in process-reward demo data: running-total arithmetic whose every step a program can check.

What this module is for: stepwise rows (the ``{"prompt", "solutions": [...]}`` form of ``stepwise``) with
known per-step labels, so a test and the demo can show a PRM finding the first wrong step on held-out
problems, and Best-of-N picking a correct solution. It must stay pure and deterministic: row i depends
only on (set name, i), so Ray Data tasks generate their ranges independently.

A problem applies 3-5 operations to a starting number; a solution writes one step per operation::

    prompt   "Start with 17, add 8, subtract 5, then multiply by 3."
    steps    "17 + 8 = 25"   "25 - 5 = 20"   "20 * 3 = 60"

Each row has ``K`` solutions in random order, at least one fully correct; every other solution is
correct with probability 1/4, else one step (uniformly chosen) gets a wrong result (off by 1, 2 or 10,
keeping every number >= 0) and every later step computes correctly from that wrong value. Labels follow
Math-Shepherd / ProcessBench: True before the first error, False from it on (a step built on a wrong
value cannot lead to the right answer, so it is not a good step even when its own arithmetic holds).
Rows also carry ``answer`` (the true result; ignored by the normalizer) and ``subset`` ("<n>-steps").
The correct solutions of one prompt are the same text (the arithmetic has one right way to be written).
Train and eval draw starting numbers from disjoint sets, so no eval problem appears in training.
Sizes (SmolLM2 tokenizer, ``step_layout`` rule, "\n" separator; tests/test_demo_heads.py): a solution
is at most 64 tokens, prompt + solution at most 126 with the chat template (about 30 of them SmolLM2's
default system prompt).
"""
from __future__ import annotations

import random

from ray_rm.data.demo_data import _split_of

SETS = {"arith-steps": (0, 1), "arith-steps-eval": (1, 4)}  # (split id, size divisor)
K = 4  # solutions per prompt
P_EXTRA_CORRECT = 0.25
ERROR_DELTAS = (-10, -2, -1, 1, 2, 10)
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


def _totals(start: int, ops: list, error_at: int | None = None, delta: int = 0) -> list[int]:
    """Each step's written result; with ``error_at`` = i, step i's is off by ``delta`` and later steps
    compute correctly from it."""
    totals, total = [], start
    for i, (op, b) in enumerate(ops):
        total = _apply(op, total, b) + (delta if i == error_at else 0)
        totals.append(total)
    return totals


def _solution(rng: random.Random, start: int, ops: list, error_at: int | None) -> tuple[list[str], list[bool]]:
    """Steps and labels; with ``error_at`` = i, step i's result is wrong and later steps build on it.

    The error is an offset from ``ERROR_DELTAS`` that keeps every written number >= 0 (a negative
    running total would give the error away); +1 always qualifies."""
    totals = _totals(start, ops)
    if error_at is not None:
        for delta in rng.sample(ERROR_DELTAS, len(ERROR_DELTAS)):
            totals = _totals(start, ops, error_at, delta)
            if min(totals) >= 0:
                break
    steps = [f"{a} {_OPS[op][0]} {b} = {c}" for (op, b), a, c in zip(ops, [start] + totals[:-1], totals)]
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
        correct = s == 0 or rng.random() < P_EXTRA_CORRECT
        steps, labels = _solution(rng, start, ops, None if correct else rng.randrange(n))
        solutions.append({"steps": steps, "labels": labels})
    rng.shuffle(solutions)
    return {"prompt": [{"role": "user", "content": _question(start, ops)}], "solutions": solutions,
            "answer": _totals(start, ops)[-1], "subset": f"{n}-steps"}
