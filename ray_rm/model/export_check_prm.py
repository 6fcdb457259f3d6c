"""Export self-test for process reward models: does plain ``AutoModelForTokenClassification`` give ray_rm's
per-step scores?

What this module is for: the PRM counterpart of ``export_check.check_export`` (which dispatches here for
``ray_rm.head == "prm"`` checkpoints). For each (prompt, steps) item it tokenizes by the rule the export
records (``config.json`` ``ray_rm.step_separator``, ``data/step_layout.py``), runs the plain transformers
token classifier (batch 1, and right-padded batch N) and compares the logits at the step-end tokens with
ray_rm's packed step scorer, in fp32; a difference above ``TOLERANCE`` fails, naming item and step.
It also checks that every step end holds ``ray_rm.step_tag_id`` (the token vLLM's STEP pooling reads).
It must not fix anything: it loads the folder as a consumer does and reports.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ray_rm.model.export_check import TOLERANCE, CheckReport

BUILTIN_STEP_ITEMS = [
    ("text prompt", "Compute 2 + 3 * 4.\n", ["3 * 4 = 12", "2 + 12 = 14"]),
    ("chat prompt", (("user", "Start with 17, add 8, then subtract 5."),), ["17 + 8 = 25", "25 - 5 = 20"]),
    ("a step holding the separator", "Solve x + 1 = 3.\n", ["Subtract 1:\nx = 3 - 1", "x = 2", "Check: 2 + 1 = 3"]),
    ("one step", "What is 7 * 6?\n", ["7 * 6 = 42"]),
]


@torch.no_grad()
def _hf_step_scores(clf, tokenizer, tokens: list, batch: int) -> list[list[float]]:
    out = []
    for i in range(0, len(tokens), batch):
        chunk = tokens[i:i + batch]
        enc = tokenizer.pad({"input_ids": [t.input_ids for t in chunk]}, padding=True, padding_side="right",
                            return_tensors="pt")
        logits = clf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[..., 0].float()
        out += [logits[j, t.step_ends].tolist() for j, t in enumerate(chunk)]
    return out


def _compare(report: CheckReport, check: str, names: list, ours: list, theirs: list) -> None:
    for name, a_steps, b_steps in zip(names, ours, theirs):
        for s, (a, b) in enumerate(zip(a_steps, b_steps)):
            diff = abs(a - b) if math.isfinite(a) and math.isfinite(b) else math.inf
            report.max_abs_diff = max(report.max_abs_diff, diff)
            if diff > TOLERANCE:
                report.failures.append(f"{check}: item '{name}' step {s}: score {b:.6f} vs ray_rm {a:.6f} "
                                       f"(difference {diff:.2e})")


def check_prm_export(path: str | Path, items: list[tuple] | None = None) -> CheckReport:
    """Check a PRM export; ``items`` are (name, prompt, steps) (default: ``BUILTIN_STEP_ITEMS``)."""
    from transformers import AutoModelForTokenClassification

    from ray_rm.scoring import RewardScorer
    from ray_rm.scoring.steps import encode_steps, score_step_groups

    start = time.perf_counter()
    report = CheckReport(str(path))
    scorer = RewardScorer(str(path), dtype="float32")
    items = items if items is not None else BUILTIN_STEP_ITEMS
    tokens = encode_steps(scorer, [(prompt, steps) for _, prompt, steps in items])
    names = [name for name, _, _ in items]
    report.items = len(items)
    tag = scorer.meta.get("step_tag_id")
    for name, t in zip(names, tokens):
        bad = [s for s, e in enumerate(t.step_ends) if t.input_ids[e] != tag]
        if bad:
            report.failures.append(f"step tag: item '{name}' steps {bad} do not end with ray_rm.step_tag_id {tag}")
    ours = [g[0] for g in score_step_groups(scorer, [[t] for t in tokens])]
    clf = AutoModelForTokenClassification.from_pretrained(str(path), dtype=torch.float32).eval()
    for batch in (1, len(tokens)):
        _compare(report, f"AutoModelForTokenClassification right padding, batch {batch}", names, ours,
                 _hf_step_scores(clf, scorer.tokenizer, tokens, batch))
    grouped = score_step_groups(scorer, [tokens])[0]  # all items as one prompt-shared group where they share
    _compare(report, "ray_rm grouped vs alone", names, ours, grouped)
    report.seconds = time.perf_counter() - start
    return report
