"""The built-in demo preference set: questions whose answers a program can check.

It must stay pure and deterministic (no Ray, no torch, no files): row i depends only on (set name, i).

It ships inside the package, so the demo runs anywhere without ../shared or a hub. Each row has a
correct answer (chosen) and a plausibly wrong one (rejected), from four families:
  case          "Write the word 'river' in capital letters."        RIVER                     vs river / River
  first_letter  "What is the first letter of the word 'garden'?"   The first letter is 'g'.  vs ... 'k'.
  spell         "Spell the word 'needle' letter by letter."        n-e-e-d-l-e               vs n-e-e-l-d-e
  larger        "Which is larger, 38 or 83?"                        83 is larger.             vs 38 is larger.
(Small-number addition and parity were tried and dropped: SmolLM2-135M + LoRA stays at chance on them
within the demo's budget, so they would not show learning.)
Labels are verifiable, so a reward model that learns shows it in eval accuracy (per family in the
demo's report via the ``subset`` field). Row i depends only on (name, i), so Ray Data tasks generate
their ranges independently; train and eval use disjoint words and numbers.
"""
from __future__ import annotations

import random
import zlib

SETS = {"verifiable": (0, 1), "verifiable-eval": (1, 4)}  # (split id, size divisor)
FAMILIES = ("case", "first_letter", "spell", "larger")
WORDS = ("river", "apple", "garden", "window", "silver", "planet", "forest", "pencil", "rocket", "bridge",
         "candle", "harbor", "meadow", "button", "castle", "dragon", "island", "jacket", "kitten", "ladder",
         "marble", "needle", "orange", "pepper", "rabbit", "saddle", "tunnel", "violin", "wallet", "yellow",
         "anchor", "basket", "carpet", "dinner", "engine", "feather", "guitar", "helmet", "insect", "jungle")


def _split_of(key: str) -> int:
    return 1 if zlib.crc32(key.encode()) % 5 == 0 else 0


def _case(rng: random.Random, split: int):
    word = rng.choice([w for w in WORDS if _split_of(w) == split])
    if rng.random() < 0.5:
        wrong = rng.choice([word, word.capitalize()])
        return f"Write the word '{word}' in capital letters.", word.upper(), wrong
    wrong = rng.choice([word.upper(), word.capitalize()])
    return f"Write the word '{word.upper()}' in lowercase letters.", word, wrong


def _larger(rng: random.Random, split: int):
    while True:
        a, b = rng.sample(range(10, 100), 2)
        if _split_of(f"l{min(a, b)}-{max(a, b)}") == split:
            break
    return f"Which is larger, {a} or {b}?", f"{max(a, b)} is larger.", f"{min(a, b)} is larger."


def _first_letter(rng: random.Random, split: int):
    word = rng.choice([w for w in WORDS if _split_of(w) == split])
    wrong = rng.choice([c for c in "abcdefghijklmnoprstuvwy" if c != word[0]])
    return (f"What is the first letter of the word '{word}'?", f"The first letter is '{word[0]}'.",
            f"The first letter is '{wrong}'.")


def _spell(rng: random.Random, split: int):
    word = rng.choice([w for w in WORDS if _split_of(w) == split])
    letters = list(word)
    i = rng.randrange(len(letters) - 1)
    while letters[i] == letters[i + 1]:
        i = rng.randrange(len(letters) - 1)
    swapped = letters[:]
    swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
    return f"Spell the word '{word}' letter by letter.", "-".join(letters), "-".join(swapped)


_MAKERS = {"case": _case, "first_letter": _first_letter, "spell": _spell, "larger": _larger}


def make_row(name: str, index: int) -> dict:
    split, _ = SETS[name]
    family = FAMILIES[index % len(FAMILIES)]
    rng = random.Random(f"ray_rm-{name}-{index}")
    question, right, wrong = _MAKERS[family](rng, split)
    return {
        "prompt": [{"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": right}],
        "rejected": [{"role": "assistant", "content": wrong}],
        "subset": family,
    }

