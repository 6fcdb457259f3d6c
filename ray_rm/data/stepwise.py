"""Normalize step-labelled rows (process reward model data) into one canonical ``StepExample``.

What this module is for: turning every supported stepwise row form into one structure that packing,
the PRM loss, serving and eval can read alike. What it must not do: tokenize (see ``step_layout``),
import Ray or torch, or guess at rows it cannot parse (malformed rows raise ``DataError`` naming
source, row and field, exactly like ``formats.normalize_row``).

Supported rows (JSON objects):
  * TRL stepwise supervision   ``{"prompt", "completions": [step, ...], "labels": [bool, ...]}``
    (TRL's ``PRMTrainer`` format; ``prompt`` is text or a list of messages). One solution.
  * Math-Shepherd              ``{"input", "label", "task"?}`` (peiyi9979/Math-Shepherd on the HF hub; its
    dataset card: "input" is the problem + a step-by-step solution where the step tag ``ки`` ends every
    step, and "label" is the same text with each ``ки`` replaced by ``+`` (good step) or ``-`` (bad
    step); "task" is GSM8K or MATH). The problem and the first step are not separated by a tag: the
    prompt ends where the first step marker (default ``Step 1:``, case-insensitive) begins, as in TRL's
    ``examples/datasets/math_shepherd.py`` converter. Steps are stripped of surrounding whitespace
    (the tag is written as `` ки\\n``). One solution. ``task`` becomes ``subset`` unless one is given.
  * several solutions          ``{"prompt", "solutions": [{"steps": [step, ...], "labels"?: [...]}, ...]}``
    k >= 1 solutions of one prompt (Best-of-N candidates, or PRM training data sharing a prompt).
All forms also take ``subset`` (str) and ``id`` (str or int, kept as ``row_id``).

Labels: ``true``/``false``; the integers 1/0 are accepted as the same (tools that write JSON from
pandas or C often emit 0/1; TRL itself uses bools); ``null`` marks one unlabelled step (PRM800K-style
data stops labelling after the first error; a loss masks such steps out). Any other value (a float
such as a soft Monte-Carlo estimate, a string, "+") is rejected rather than silently rounded. With
``require_labels=False`` (scoring, Best-of-N), a missing ``labels`` field gives an all-``None``
solution. Steps must be non-empty, non-whitespace strings; a step may contain the separator (the
step end is recorded by position, never found by searching the text).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ray_rm.data.formats import Content, _content, _content_from_json, _content_to_json, _describe, RowLocator, _text
from ray_rm.data import row_fields

MATH_SHEPHERD_TAG = "ки"
MATH_SHEPHERD_FIRST_STEP = r"(?i)step 1:"
_LABEL_CHARS = {"+": True, "-": False}


@dataclass(frozen=True)
class StepExample:
    """One prompt with k >= 1 solutions, each a tuple of step strings with one label per step.

    ``labels[s][i]`` is True (step i of solution s is correct), False (it is wrong) or None (unlabelled).
    """

    example_id: str
    prompt: Content
    solutions: tuple  # tuple[tuple[str, ...], ...]
    labels: tuple  # tuple[tuple[bool | None, ...], ...], same shape as solutions
    subset: str | None = None
    row_id: str | None = None

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, tuple)

    @property
    def num_labelled(self) -> int:
        """Steps that carry a label (what a step loss averages over)."""
        return sum(label is not None for sol in self.labels for label in sol)

    def to_record(self) -> dict:
        """JSON-safe dict (messages as role/content dicts); ``from_record`` inverts it exactly."""
        return {
            "example_id": self.example_id,
            "prompt": _content_to_json(self.prompt),
            "solutions": [list(steps) for steps in self.solutions],
            "labels": [list(labels) for labels in self.labels],
            "subset": self.subset,
            "row_id": self.row_id,
        }

    @classmethod
    def from_record(cls, rec: dict) -> "StepExample":
        return cls(
            example_id=rec["example_id"],
            prompt=_content_from_json(rec["prompt"]),
            solutions=tuple(tuple(steps) for steps in rec["solutions"]),
            labels=tuple(tuple(labels) for labels in rec["labels"]),
            subset=rec.get("subset"),
            row_id=rec.get("row_id"),
        )


# ----------------------------------------------------------------------------------------- parsing
def _steps(where: RowLocator, field: str, value: Any) -> tuple:
    if not isinstance(value, list) or not value:
        raise where.error(field, f"expected a non-empty list of step strings, got {_describe(value)}")
    return tuple(_text(where, f"{field}[{i}]", step) for i, step in enumerate(value))


def _label(where: RowLocator, field: str, value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise where.error(field, f"expected true, false, 0, 1 or null, got {_describe(value)}")


def _labels(where: RowLocator, field: str, value: Any, num_steps: int, steps_field: str,
            require: bool) -> tuple:
    if value is None:
        if require:
            raise where.error(field, f"missing; every step of '{steps_field}' needs a label "
                                     "(true = correct, false = wrong, null = unlabelled)")
        return (None,) * num_steps
    if not isinstance(value, list):
        raise where.error(field, f"expected a list of labels, got {_describe(value)}")
    if len(value) != num_steps:
        raise where.error(field, f"has {len(value)} labels but '{steps_field}' has {num_steps} steps")
    return tuple(_label(where, f"{field}[{i}]", v) for i, v in enumerate(value))


def _prompt(where: RowLocator, raw: dict) -> Content:
    if "prompt" not in raw:
        raise where.error("prompt", "missing; a stepwise row needs the problem as 'prompt' (text or messages)")
    return _content(where, "prompt", raw["prompt"])


def _trl_stepwise(where: RowLocator, raw: dict, require_labels: bool) -> tuple:
    prompt = _prompt(where, raw)
    steps = _steps(where, "completions", raw["completions"])
    labels = _labels(where, "labels", raw.get("labels"), len(steps), "completions", require_labels)
    return prompt, (steps,), (labels,)


def _several_solutions(where: RowLocator, raw: dict, require_labels: bool) -> tuple:
    prompt = _prompt(where, raw)
    value = raw["solutions"]
    if not isinstance(value, list) or not value:
        raise where.error("solutions", f"expected a non-empty list of {{'steps', 'labels'}} objects, "
                                       f"got {_describe(value)}")
    solutions, labels = [], []
    for s, sol in enumerate(value):
        field = f"solutions[{s}]"
        if not isinstance(sol, dict):
            raise where.error(field, f"expected a {{'steps', 'labels'}} object, got {_describe(sol)}")
        if sol.get("steps") is None:
            raise where.error(f"{field}.steps", "missing; each solution is {'steps': [...], 'labels': [...]}")
        steps = _steps(where, f"{field}.steps", sol["steps"])
        solutions.append(steps)
        labels.append(_labels(where, f"{field}.labels", sol.get("labels"), len(steps), f"{field}.steps",
                              require_labels))
    return prompt, tuple(solutions), tuple(labels)


def _math_shepherd(where: RowLocator, raw: dict, tag: str, first_step: str) -> tuple:
    """Split ``input`` at the tags; read each step's +/- from ``label`` at the place the tag held."""
    text = _text(where, "input", raw["input"])
    if "label" not in raw:
        raise where.error("label", "missing; a Math-Shepherd row is {'input': text with step tags, "
                                   "'label': the same text with '+'/'-' in place of each tag}")
    label_text = _text(where, "label", raw["label"])
    pieces = text.split(tag)
    if len(pieces) < 2:
        raise where.error("input", f"has no step tag {tag!r}; every step must end with it")
    if pieces[-1].strip():
        raise where.error("input", f"has text after the last step tag {tag!r}: {_describe(pieces[-1])}")
    labels, cursor = [], 0
    for i, piece in enumerate(pieces[:-1]):
        if label_text[cursor:cursor + len(piece)] != piece:
            raise where.error("label", f"does not match 'input' before step tag {i + 1} "
                                       f"(at character {cursor} of 'label')")
        cursor += len(piece)
        mark = label_text[cursor:cursor + 1]
        if mark not in _LABEL_CHARS:
            raise where.error("label", f"expected '+' or '-' in place of step tag {i + 1} "
                                       f"(character {cursor}), got {mark!r}")
        labels.append(_LABEL_CHARS[mark])
        cursor += 1
    if label_text[cursor:] != pieces[-1]:
        raise where.error("label", f"does not match 'input' after the last step tag (character {cursor})")
    marker = re.search(first_step, pieces[0])
    if marker is None:
        raise where.error("input", f"cannot find where the problem ends: no first-step marker "
                                   f"{first_step!r} before the first step tag")
    prompt = pieces[0][:marker.start()].strip()
    if not prompt:
        raise where.error("input", "the problem before the first step is empty")
    steps = tuple(s.strip() for s in [pieces[0][marker.start():]] + pieces[1:-1])
    for i, step in enumerate(steps):
        if not step:
            raise where.error("input", f"step {i + 1} is empty (nothing between two step tags)")
    return prompt, (steps,), (tuple(labels),)


def normalize_step_row(raw: Any, source: str, row: int, *, require_labels: bool = True,
                       step_tag: str = MATH_SHEPHERD_TAG,
                       first_step_marker: str = MATH_SHEPHERD_FIRST_STEP) -> StepExample:
    """Turn one stepwise row of any supported form into a ``StepExample`` (or raise ``DataError``).

    ``step_tag`` and ``first_step_marker`` (a regular expression) configure the Math-Shepherd form.
    """
    where = RowLocator(source, row)
    if not isinstance(raw, dict):
        raise where.error("", f"expected a JSON object, got {_describe(raw)}")
    # Columnar sources give every row every column, null where a row has no value: null means absent.
    raw = {k: v for k, v in raw.items() if v is not None}
    subset = row_fields.optional_string(where, raw, "subset")
    example_row_id = row_fields.row_id(where, raw)
    if "completions" in raw:
        prompt, solutions, labels = _trl_stepwise(where, raw, require_labels)
    elif "solutions" in raw:
        prompt, solutions, labels = _several_solutions(where, raw, require_labels)
    elif "input" in raw:
        prompt, solutions, labels = _math_shepherd(where, raw, step_tag, first_step_marker)
        if subset is None:
            subset = row_fields.optional_string(where, raw, "task")
    else:
        raise where.error("completions", "missing; a stepwise row is {'prompt', 'completions', 'labels'} "
                                         "(TRL), {'input', 'label'} (Math-Shepherd) or {'prompt', 'solutions'}")
    return StepExample(f"{source}:{row}", prompt, solutions, labels, subset, example_row_id)
