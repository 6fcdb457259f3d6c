"""Built-in multi-attribute demo data: answers whose correctness and verbosity are known by construction.

What this module is for: HelpSteer-style rated rows (``ratings``' flat form) where two attributes vary
independently, so a test and the demo can show an attribute model separating them, plus preference
pairs derived from the same answers for the mixed rated + pairs case. It must stay pure and
deterministic: row i depends only on (set name, i).

Each row takes a question from ``demo_data``'s checkable families (case, first letter, spelling,
larger number; train and eval use disjoint words and numbers) and answers it right or wrong (a fair
coin), padded with v in 0..4 filler sentences (uniform, independent of correctness). Ratings on
HelpSteer's 0-4 scale:
    correctness  = 4 if the answer is right else 0
    verbosity    = v (the number of filler sentences)
    helpfulness  = max(0, correctness - max(0, v - 1))   a right, terse answer is the most helpful
Sets: ``attributes`` / ``attributes-eval`` (rated rows only) and ``attributes-mixed`` / ``-mixed-eval`` (every 4th row,
i % 4 == 3, is a preference pair whose chosen answer has the higher helpfulness; rated rows with
i % 8 == 1 omit helpfulness, to exercise masking; row 0 is a complete rated row, so the attribute
names can be read from it).
"""
from __future__ import annotations

import random

from ray_rm.data.demo_data import _MAKERS, FAMILIES

SETS = {"attributes": (0, 1), "attributes-eval": (1, 4), "attributes-mixed": (0, 1),
        "attributes-mixed-eval": (1, 4)}  # (split id, divisor)
ATTRIBUTES = ("helpfulness", "correctness", "verbosity")
MAX_VERBOSITY = 4
FILLERS = ("Let me think about this.", "Good question.", "Here is what I found.", "I checked it twice.",
           "I hope this helps.", "Feel free to ask more.", "That is my answer.", "Thanks for asking.")


def ratings(correct: bool, verbosity: int) -> dict:
    """The known HelpSteer-style ratings of an answer (see the module docstring)."""
    correctness = 4 if correct else 0
    return {"helpfulness": max(0, correctness - max(0, verbosity - 1)), "correctness": correctness,
            "verbosity": verbosity}


def pad(rng: random.Random, answer: str, verbosity: int) -> str:
    """The answer with ``verbosity`` distinct filler sentences, about half before it and half after."""
    fillers = rng.sample(FILLERS, verbosity)
    before = (verbosity + 1) // 2
    return " ".join(fillers[:before] + [answer] + fillers[before:])


def _question(name: str, index: int, rng: random.Random) -> tuple[str, str, str, str]:
    split, _ = SETS[name]
    family = FAMILIES[index % len(FAMILIES)]
    question, right, wrong = _MAKERS[family](rng, split)
    return family, question, right, wrong


def _rated(name: str, index: int, rng: random.Random) -> dict:
    family, question, right, wrong = _question(name, index, rng)
    correct = rng.random() < 0.5
    verbosity = rng.randrange(MAX_VERBOSITY + 1)
    row = {"prompt": [{"role": "user", "content": question}],
           "response": [{"role": "assistant", "content": pad(rng, right if correct else wrong, verbosity)}],
           **ratings(correct, verbosity), "subset": family}
    if name.startswith("attributes-mixed") and index % 8 == 1:
        del row["helpfulness"]
    return row


def _pair(name: str, index: int, rng: random.Random) -> dict:
    """Two answers to one question with different helpfulness; the more helpful one is chosen."""
    family, question, right, wrong = _question(name, index, rng)
    while True:
        a = (rng.random() < 0.5, rng.randrange(MAX_VERBOSITY + 1))
        b = (rng.random() < 0.5, rng.randrange(MAX_VERBOSITY + 1))
        if ratings(*a)["helpfulness"] != ratings(*b)["helpfulness"]:
            break
    better, worse = sorted((a, b), key=lambda x: -ratings(*x)["helpfulness"])
    texts = [pad(rng, right if c else wrong, v) for c, v in (better, worse)]
    return {"prompt": [{"role": "user", "content": question}],
            "chosen": [{"role": "assistant", "content": texts[0]}],
            "rejected": [{"role": "assistant", "content": texts[1]}], "subset": family}


def make_row(name: str, index: int) -> dict:
    rng = random.Random(f"ray_rm-{name}-{index}")
    if name.startswith("attributes-mixed") and index % 4 == 3:
        return _pair(name, index, rng)
    return _rated(name, index, rng)
