"""Validate scoring requests (HTTP bodies and handle payloads) into typed items, or say exactly what is wrong.

What this module is for: the one place where a request's items are checked, for every route: ``/v1/score``
and handle calls (``parse_score_request``), OpenRLHF (``parse_openrlhf_request``) and the vLLM-compatible
pooling routes (``parse_pooling_input``, called by ``vllm_api``). What it must not do: tokenize, check
token ids against a model (the scoring engine does, once per item), or import Ray or torch (hostile inputs
are cheap to test). Every problem raises ``InputError`` with an HTTP status: 400 unreadable body,
413 too large, 422 well-formed but invalid.
An item is one of:
  * ``{"messages": [{"role", "content"}, ...]}``   the RM's chat template is applied
  * ``{"prompt": str | messages, "response": str | messages}``   tokenized like training rows
  * ``{"text": str}``                                scored as given: ``tokenizer(text)``, nothing appended
                                                     (vLLM's ``add_special_tokens: false``: without special tokens)
  * ``{"input_ids": [int, ...]}``                    only for callers that use the RM's own tokenizer
  * ``{"prompt": str | messages, "steps": [str, ...]}`` or ``{"messages", "steps"}``  a solution scored step
                                                     by step by a process reward model (model.head=prm)
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Union

from ray_rm.data.formats import parse_messages
from ray_rm.errors import DataError, UserError

Content = Union[str, tuple]
FORMS = "one of {'messages'}, {'prompt', 'response'}, {'text'} or {'input_ids'}"
MAX_TOKEN_ID = 2**31 - 1


class InputError(UserError):
    """A request the server refuses; ``status`` is the HTTP code to answer with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Item:
    """One thing to score: (prompt, response) content for the RM's tokenizer, or the RM's token ids."""

    prompt: Content = ""
    response: Content = ""
    input_ids: tuple | None = None
    add_special_tokens: bool = True  # plain text only: tokenizer(text, add_special_tokens=...)
    steps: tuple | None = None  # process reward models: the solution's steps (prompt holds the problem)


@dataclass(frozen=True)
class ScoreRequest:
    items: tuple
    normalize: bool
    clip: float  # 0 = off
    field: str = "inputs"  # how error messages name the item list
    weights: dict | None = None  # attribute models: {attribute: weight} replacing the model's (serve/attribute_answers)
    aggregate: str | None = None  # process reward models: min | prod | last | mean (None: the server's default)


def parse_json(body: bytes, max_bytes: int) -> Any:
    """Decode a request body; oversize, non-UTF-8, invalid or absurdly nested JSON is a 4xx."""
    if len(body) > max_bytes:
        raise InputError(f"request body is {len(body)} bytes; the limit is {max_bytes}", 413)
    if not body.strip():
        raise InputError("request body is empty; expected a JSON object", 400)
    try:
        return json.loads(body)
    except RecursionError:
        raise InputError("request body is nested too deeply", 400) from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise InputError(f"request body is not valid JSON: {str(exc)[:200]}", 400) from None


def kind_of(value: Any) -> str:
    """How error messages name a JSON value's type."""
    return type(value).__name__ if value is not None else "null"


def _check_text(value: Any, field: str, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise InputError(f"{field}: expected a string, got {kind_of(value)}")
    if not allow_empty and not value:
        raise InputError(f"{field}: is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{field}: is not valid Unicode (unpaired surrogate at character {exc.start})") from None
    return value


def _check_messages(value: Any, field: str) -> tuple:
    try:
        return parse_messages(value, field)
    except DataError as exc:
        raise InputError(str(exc)) from None


def _content(value: Any, field: str, allow_empty: bool) -> Content:
    if isinstance(value, list):
        return _check_messages(value, field)
    if isinstance(value, str):
        return _check_text(value, field, allow_empty)
    raise InputError(f"{field}: expected a string or a list of {{'role', 'content'}} messages, got {kind_of(value)}")


def _token_ids(value: Any, field: str) -> tuple:
    if not isinstance(value, list) or not value:
        raise InputError(f"{field}: expected a non-empty list of token ids, got {kind_of(value)}")
    for j, t in enumerate(value):
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= MAX_TOKEN_ID:
            raise InputError(f"{field}[{j}]: token ids are non-negative integers, got {t!r:.40}")
    return tuple(value)


def parse_item(raw: Any, field: str) -> Item:
    """One request item -> ``Item``; unknown keys are refused so typos do not score the wrong text."""
    if not isinstance(raw, dict):
        raise InputError(f"{field}: expected an object, {FORMS}; got {kind_of(raw)}")
    keys = set(raw)
    if keys == {"messages"}:
        return Item((), _check_messages(raw["messages"], f"{field}.messages"))
    if keys == {"text"}:
        return Item("", _check_text(raw["text"], f"{field}.text", allow_empty=False))
    if keys == {"input_ids"}:
        return Item(input_ids=_token_ids(raw["input_ids"], f"{field}.input_ids"))
    if keys in ({"prompt", "steps"}, {"messages", "steps"}):
        return _step_item(raw, field)
    if keys == {"prompt", "response"}:
        prompt = _content(raw["prompt"], f"{field}.prompt", allow_empty=True)
        response = _content(raw["response"], f"{field}.response", allow_empty=True)
        if isinstance(prompt, tuple) != isinstance(response, tuple):  # mixed: the text side becomes one turn
            if isinstance(prompt, str):
                prompt = (("user", prompt),) if prompt else ()
            else:
                response = (("assistant", response),)
        if not prompt and not response:
            raise InputError(f"{field}: prompt and response are both empty")
        return Item(prompt, response)
    shown = ", ".join(sorted(repr(k)[:40] for k in list(keys)[:8]))
    raise InputError(f"{field}: expected {FORMS}; got keys {{{shown}}}")


def _step_item(raw: dict, field: str) -> Item:
    """A process reward model's item: the problem (text or messages) and the solution's steps."""
    if "messages" in raw:
        prompt = _check_messages(raw["messages"], f"{field}.messages")
    else:
        prompt = _content(raw["prompt"], f"{field}.prompt", allow_empty=True)
    steps = raw["steps"]
    if not isinstance(steps, list) or not steps:
        raise InputError(f"{field}.steps: expected a non-empty list of step strings, got {kind_of(steps)}")
    return Item(prompt, "", steps=tuple(_check_text(s, f"{field}.steps[{j}]", allow_empty=False)
                                        for j, s in enumerate(steps)))


def _aggregate(body: dict) -> str | None:
    from ray_rm.eval.prm_metrics import AGGREGATIONS

    how = body.get("aggregate")
    if how is not None and how not in AGGREGATIONS:
        raise InputError(f"'aggregate' must be one of {', '.join(AGGREGATIONS)}, got {how!r:.40}")
    return how


def _items(raw: Any, field: str, max_items: int) -> list:
    if not isinstance(raw, list):
        raise InputError(f"'{field}' must be a list, got {kind_of(raw)}")
    if not raw:
        raise InputError(f"'{field}' is empty; send at least one item")
    if len(raw) > max_items:
        raise InputError(f"'{field}' has {len(raw)} items; the limit is {max_items} per request "
                         "(RewardClient splits large batches for you)", 413)
    return raw


def _options(body: dict, default_normalize: bool, default_clip: float) -> tuple[bool, float]:
    normalize = body.get("normalize", default_normalize)
    if normalize is None:
        normalize = default_normalize
    if not isinstance(normalize, bool):
        raise InputError(f"'normalize' must be true or false, got {kind_of(normalize)}")
    clip = body.get("clip", default_clip)
    if clip is None:
        clip = default_clip
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not math.isfinite(clip) or clip < 0:
        raise InputError(f"'clip' must be a non-negative number (0 = off), got {clip!r:.40}")
    return normalize, float(clip)


def parse_score_request(body: Any, max_items: int, default_normalize: bool = False,
                        default_clip: float = 0.0) -> ScoreRequest:
    """``{"inputs": [item, ...], "normalize"?: bool, "clip"?: number}`` (POST /v1/score, handle calls)."""
    if not isinstance(body, dict):
        raise InputError(f"expected a JSON object {{'inputs': [...]}}, got {kind_of(body)}")
    unknown = set(body) - {"inputs", "normalize", "clip", "weights", "aggregate"}
    if unknown:
        raise InputError(f"unknown field(s) {', '.join(sorted(repr(k)[:40] for k in unknown)[:5])}; "
                         "expected 'inputs', 'normalize', 'clip', 'weights', 'aggregate'")
    if "inputs" not in body:
        raise InputError("missing 'inputs': a list of items, each " + FORMS)
    raw_items = _items(body["inputs"], "inputs", max_items)
    normalize, clip = _options(body, default_normalize, default_clip)
    return ScoreRequest(tuple(parse_item(x, f"inputs[{i}]") for i, x in enumerate(raw_items)), normalize, clip,
                        weights=_weights(body.get("weights")), aggregate=_aggregate(body))


def _weights(value: Any) -> dict | None:
    """``"weights": {attribute: number}`` (attribute reward models), or None."""
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise InputError(f"'weights' must be a non-empty object {{attribute: number}}, got {kind_of(value)}")
    for name, w in value.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise InputError(f"'weights'[{name!r:.40}] must be a finite number, got {w!r:.40}")
    return dict(value)


def parse_openrlhf_request(body: Any, max_items: int, default_normalize: bool = False,
                           default_clip: float = 0.0) -> ScoreRequest:
    """OpenRLHF's remote RM body ``{"query": [text, ...], "prompts"?, "labels"?}``; queries are scored as given.

    Extra keys are ignored on purpose: OpenRLHF sends ``prompts``/``labels`` that a plain RM does not use.
    """
    if not isinstance(body, dict):
        raise InputError(f"expected a JSON object {{'query': [text, ...]}}, got {kind_of(body)}")
    if "query" not in body:
        raise InputError("missing 'query': a list of texts (prompt + response, already formatted)")
    queries = _items(body["query"], "query", max_items)
    normalize, clip = _options(body, default_normalize, default_clip)
    items = tuple(Item("", _check_text(q, f"query[{i}]", allow_empty=False)) for i, q in enumerate(queries))
    return ScoreRequest(items, normalize, clip, "query")


def parse_pooling_input(body: dict, max_items: int) -> tuple:
    """The items of a vLLM pooling body: ``input`` (a text, texts, one tokenized prompt, or token-id lists)
    or ``messages``, with vLLM's ``add_special_tokens`` (texts only; default true)."""
    if ("input" in body) == ("messages" in body):
        raise InputError("send exactly one of 'input' (text, texts or token ids) or 'messages'")
    special = body.get("add_special_tokens")
    if special is not None and not isinstance(special, bool):
        raise InputError(f"'add_special_tokens' must be true or false, got {kind_of(special)}")
    special = True if special is None else special
    if "messages" in body:
        return (parse_item({"messages": body["messages"]}, "messages"),)
    raw = body["input"]
    if isinstance(raw, str):
        return (Item("", _check_text(raw, "input", allow_empty=False), add_special_tokens=special),)
    raw = _items(raw, "input", max_items)
    if all(isinstance(x, int) and not isinstance(x, bool) for x in raw):  # one tokenized prompt
        return (Item(input_ids=_token_ids(raw, "input")),)
    items = []
    for i, x in enumerate(raw):
        if isinstance(x, list):
            items.append(Item(input_ids=_token_ids(x, f"input[{i}]")))
        else:
            items.append(Item("", _check_text(x, f"input[{i}]", allow_empty=False), add_special_tokens=special))
    return tuple(items)
