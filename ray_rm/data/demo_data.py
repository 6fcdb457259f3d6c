"""The built-in demo preference set: arithmetic questions with a correct and a plausibly wrong answer.

It ships inside the package, so the demo runs anywhere without ../shared or a hub. Labels are
verifiable (the chosen answer is correct), so a reward model that learns shows it in eval accuracy.
Row i depends only on (name, i): Ray Data tasks generate their row ranges independently.
Train and eval questions are disjoint by construction.
"""
from __future__ import annotations

import random

SETS = {"arithmetic": (0, 1), "arithmetic-eval": (1, 4)}  # (split id, size divisor)


def _question(rng: random.Random):
    op = rng.choice("+-+*")
    if op == "*":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        return a, op, b, a * b
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    if op == "-" and b > a:
        a, b = b, a
    return a, op, b, a + b if op == "+" else a - b


def _wrong(rng: random.Random, answer: int) -> int:
    delta = rng.choice([1, 2, 3, 10, -1, -2, -3, -10])
    wrong = answer + delta
    return wrong if wrong >= 0 else answer + abs(delta)


def _split_of(a: int, op: str, b: int) -> int:
    return 1 if (a * 7 + b * 3 + ord(op)) % 4 == 0 else 0


def make_row(name: str, index: int) -> dict:
    split, _ = SETS[name]
    rng = random.Random(f"ray_rm-{name}-{index}")
    while True:
        a, op, b, answer = _question(rng)
        if _split_of(a, op, b) == split:
            break
    wrong = _wrong(rng, answer)
    shown = "x" if op == "*" else op
    phrasing = rng.choice(["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "{a} {op} {b} = ?"])
    question = phrasing.format(a=a, op=shown, b=b)
    answer_text = "{a} {op} {b} = {r}."
    return {
        "prompt": [{"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": answer_text.format(a=a, op=shown, b=b, r=answer)}],
        "rejected": [{"role": "assistant", "content": answer_text.format(a=a, op=shown, b=b, r=wrong)}],
    }


def builtin_rows(source: str, size: int, start: int, stop: int, count_only: bool = False):
    """Rows [start, stop) of ``builtin:<name>``; with count_only, the number of rows."""
    name = source.split(":", 1)[1]
    if name not in SETS:
        from ray_rm.errors import DataError
        raise DataError(f"unknown built-in data set '{source}'; available: "
                        + ", ".join(f"builtin:{n}" for n in SETS))
    n = max(1, size // SETS[name][1])
    if count_only:
        return n
    return [make_row(name, i) for i in range(start, min(stop, n))]
