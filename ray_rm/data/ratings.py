"""Normalize attribute-rated rows (multi-objective reward model data) into one canonical ``RatedExample``.

What this module is for: HelpSteer-style ratings of one response on several named attributes, with the
attribute names fixed once (``AttributeSchema``) and checked on every row. It must not tokenize,
import Ray or torch, or turn a missing rating into a number: a missing attribute is ``None`` (masked
out of the loss), never 0.

Supported rows (JSON objects):
  * HelpSteer / HelpSteer2     ``{"prompt", "response", "helpfulness": 3, "correctness": 4, ...}``: every
                               numeric top-level field (bools excluded) is an attribute; non-numeric fields
                               other than prompt/response/subset/id are metadata and ignored
  * nested scores              ``{"prompt", "response", "scores": {"name": value, ...}}``: every key of
                               ``scores`` is an attribute, and only those (top-level fields are metadata)
Both take ``subset`` (str) and ``id`` (str or int). ``prompt`` and ``response`` are text, or messages
(``response``: the assistant turn(s)); a text prompt with a message response becomes one user message,
and a message prompt with a text response is an error, as for preference pairs in ``formats``.

Attribute names: configured (``AttributeSchema(names)``), or read from the first rated row
(``AttributeSchema.from_row``), in that row's order (its numeric fields or ``scores`` keys; configure the
names when the first row lacks one or carries a numeric metadata column). On every row, an attribute outside the schema is a
``DataError`` naming it (unless the schema says ``extra="ignore"``), a value that is not a finite number
(a string, a bool, NaN, inf) is a ``DataError`` naming the field, ``null`` or an absent attribute is
``None``, and a row with no attribute value at all is a ``DataError``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray_rm.data.formats import (Content, _check_response_turns, _content, _content_from_json, _content_to_json,
                                 _describe, _messages, _number, RowLocator, _text)
from ray_rm.data import row_fields

RESERVED_FIELDS = ("prompt", "response", "subset", "id", "scores")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class AttributeSchema:
    """The ordered attribute names every rated row is read against; ``extra``: error | ignore."""

    names: tuple
    extra: str = "error"

    def __post_init__(self):
        names = tuple(self.names)
        object.__setattr__(self, "names", names)
        if not names:
            raise ValueError("an attribute schema needs at least one attribute name")
        if len(set(names)) != len(names):
            raise ValueError(f"attribute names repeat: {list(names)}")
        bad = [n for n in names if not isinstance(n, str) or not n or n in RESERVED_FIELDS]
        if bad:
            raise ValueError(f"invalid attribute names {bad}: names are non-empty strings other than "
                             f"{', '.join(RESERVED_FIELDS)}")
        if self.extra not in ("error", "ignore"):
            raise ValueError(f"extra must be 'error' or 'ignore', got {self.extra!r}")

    @classmethod
    def from_row(cls, raw: Any, source: str = "", row: int | None = None) -> "AttributeSchema":
        """The attribute names of one rated row (the first row of a file), in the row's order."""
        where = RowLocator(source, row)
        if not isinstance(raw, dict):
            raise where.error("", f"expected a JSON object, got {_describe(raw)}")
        names = list(_raw_attributes(where, raw))
        if not names:
            raise where.error("scores", "no attribute found: expected numeric fields (HelpSteer style) "
                                        "or a 'scores' object to read the attribute names from")
        return cls(tuple(names))


@dataclass(frozen=True)
class RatedExample:
    """One prompt and response rated on ``names``; ``values[i]`` is None where attribute i is missing."""

    example_id: str
    prompt: Content
    response: Content
    names: tuple
    values: tuple
    subset: str | None = None
    row_id: str | None = None

    def to_record(self) -> dict:
        """JSON-safe dict; ``from_record`` inverts it exactly."""
        return {
            "example_id": self.example_id,
            "prompt": _content_to_json(self.prompt),
            "response": _content_to_json(self.response),
            "names": list(self.names),
            "values": list(self.values),
            "subset": self.subset,
            "row_id": self.row_id,
        }

    @classmethod
    def from_record(cls, rec: dict) -> "RatedExample":
        return cls(rec["example_id"], _content_from_json(rec["prompt"]), _content_from_json(rec["response"]),
                   tuple(rec["names"]), tuple(rec["values"]), rec.get("subset"), rec.get("row_id"))


def _raw_attributes(where: RowLocator, raw: dict, names: tuple = ()) -> dict:
    """name -> (field, raw value) of every attribute the row carries.

    Nested form: every key of ``scores``. Flat form: every numeric top-level field, plus any field named
    in ``names`` whatever its value (so a known attribute holding "4" or true is an error, not metadata).
    """
    if raw.get("scores") is not None:
        scores = raw["scores"]
        if not isinstance(scores, dict):
            raise where.error("scores", f"expected an object of attribute name -> number, got {_describe(scores)}")
        return {str(k): (f"scores.{k}", v) for k, v in scores.items()}
    return {k: (k, v) for k, v in raw.items()
            if k not in RESERVED_FIELDS and (k in names or _is_number(v))}


def _prompt_and_response(where: RowLocator, raw: dict) -> tuple:
    for key in ("prompt", "response"):
        if raw.get(key) is None:
            raise where.error(key, "missing; a rated row is {'prompt', 'response', <attribute>: number, ...}")
    response = _content(where, "response", raw["response"])
    explicit = raw["prompt"]
    if isinstance(response, str):
        if isinstance(explicit, list):
            raise where.error("prompt", "a message-list prompt needs a message-list response")
        return _text(where, "prompt", explicit, allow_empty=True), response
    prompt = (("user", _text(where, "prompt", explicit)),) if isinstance(explicit, str) else \
        _messages(where, "prompt", explicit)
    _check_response_turns(where, "response", response)
    return prompt, response


def normalize_rated_row(raw: Any, source: str, row: int, schema: AttributeSchema) -> RatedExample:
    """Turn one rated row into a ``RatedExample`` over ``schema.names`` (or raise ``DataError``)."""
    where = RowLocator(source, row)
    if not isinstance(raw, dict):
        raise where.error("", f"expected a JSON object, got {_describe(raw)}")
    subset = row_fields.optional_string(where, raw, "subset")
    example_row_id = row_fields.row_id(where, raw)
    prompt, response = _prompt_and_response(where, raw)
    found = _raw_attributes(where, raw, schema.names)
    if schema.extra == "error":
        for name, (field, _) in found.items():
            if name not in schema.names:
                raise where.error(field, f"is not one of the attributes {list(schema.names)} "
                                         "(configure the attribute names, or drop the field)")
    values = []
    for name in schema.names:
        field, value = found.get(name, (name, None))
        values.append(None if value is None else _number(where, field, value))
    if all(v is None for v in values):
        raise where.error("scores" if "scores" in raw else schema.names[0],
                          f"the row rates none of the attributes {list(schema.names)}")
    return RatedExample(f"{source}:{row}", prompt, response, schema.names, tuple(values), subset, example_row_id)
