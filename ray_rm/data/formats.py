"""Normalize every supported preference-row format into one canonical ``PreferenceExample``.

Pure: it must not import Ray, torch or a tokenizer, read files, or filter for quality (``quality.py``).

Supported rows (JSON objects):
  * implicit prompt text pairs   ``{"chosen": str, "rejected": str}`` (HH-RLHF; the shared prefix is the prompt)
  * explicit prompt              ``{"prompt": str, "chosen": str, "rejected": str}``
  * conversational (TRL)         ``chosen``/``rejected`` as ``[{"role", "content"}, ...]``, optional ``prompt`` messages
  * optional ``margin``, ``score_chosen``/``score_rejected``, ``subset`` (RewardBench sections)
  * k-way                        ``{"prompt", "responses": [...], "ranking": [best index, ...]}`` or ``"scores"``
  * best-of-n (RewardBench 2)    ``{"id"?, "prompt", "chosen": [r, ...], "rejected": [r, ...], "subset"?}``: k chosen
                                 (tied best) and n rejected (tied worst); ``num_correct`` must equal k when given;
                                 the prompt is required (without it a list of strings is a malformed conversation)

A pair is the k = 2 case of a ranked group: responses are stored best first with ``ranks`` (0 = best,
equal ranks are ties), so pairwise and listwise losses read the same structure. Malformed rows raise
``DataError`` naming source, row and field. Pure Python: no Ray, no torch.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Union

from ray_rm.errors import DataError
from ray_rm.prefix import common_prefix_len

ROLES = ("system", "user", "assistant", "tool", "developer")

Message = tuple  # (role, content)
Content = Union[str, tuple]  # text, or a tuple of (role, content) messages


@dataclass(frozen=True)
class PreferenceExample:
    """One preference unit: a prompt and k >= 2 responses ordered best first."""

    example_id: str
    prompt: Content
    responses: tuple
    ranks: tuple
    margin: float | None = None
    scores: tuple | None = None
    subset: str | None = None
    row_id: str | None = None  # the row's own "id" (RewardBench 2's Ties pairs rows by it)

    @property
    def is_chat(self) -> bool:
        return isinstance(self.responses[0], tuple)

    @property
    def chosen(self) -> Content:
        return self.responses[0]

    @property
    def rejected(self) -> Content:
        return self.responses[-1]

    def full_texts(self) -> list:
        """The complete content of each response: prompt + response (text) or prompt + response messages."""
        if self.is_chat:
            return [tuple(self.prompt) + r for r in self.responses]
        return [self.prompt + r for r in self.responses]

    def to_record(self) -> dict:
        """JSON-safe dict (messages as role/content dicts); ``from_record`` inverts it exactly."""
        return {
            "example_id": self.example_id,
            "prompt": _content_to_json(self.prompt),
            "responses": [_content_to_json(r) for r in self.responses],
            "ranks": list(self.ranks),
            "margin": self.margin,
            "scores": None if self.scores is None else list(self.scores),
            "subset": self.subset,
            "row_id": self.row_id,
        }

    @classmethod
    def from_record(cls, rec: dict) -> "PreferenceExample":
        return cls(
            example_id=rec["example_id"],
            prompt=_content_from_json(rec["prompt"]),
            responses=tuple(_content_from_json(r) for r in rec["responses"]),
            ranks=tuple(rec["ranks"]),
            margin=rec.get("margin"),
            scores=None if rec.get("scores") is None else tuple(rec["scores"]),
            subset=rec.get("subset"),
            row_id=rec.get("row_id"),
        )


def _content_to_json(c: Content):
    return c if isinstance(c, str) else [{"role": r, "content": t} for r, t in c]


def _content_from_json(c) -> Content:
    return c if isinstance(c, str) else tuple((m["role"], m["content"]) for m in c)


# ----------------------------------------------------------------------------------------- parsing
class RowLocator:
    """Carries source/row so every check can name where it failed."""

    def __init__(self, source: str, row: int):
        self.source, self.row = source, row

    def error(self, field: str, message: str) -> DataError:
        return DataError(message, self.source, self.row, field)


def _describe(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _valid_unicode(where: RowLocator, field: str, value: str) -> str:
    """JSON escapes can smuggle in lone UTF-16 surrogates; tokenizers reject them with a bare TypeError."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise where.error(field, f"is not valid Unicode (unpaired surrogate {value[exc.start]!r} "
                                 f"at character {exc.start})") from None
    return value


def _text(where: RowLocator, field: str, value: Any, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise where.error(field, f"expected a string, got {_describe(value)}")
    if not allow_empty and not value.strip():
        raise where.error(field, "is empty or whitespace only")
    return _valid_unicode(where, field, value)


def _message_content(where: RowLocator, field: str, content: Any) -> str:
    if isinstance(content, str):
        return _valid_unicode(where, field, content)
    if isinstance(content, list):  # OpenAI-style content parts: keep the text parts
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise where.error(field, f"content parts must be {{'type': 'text', 'text': str}}, got {_describe(part)}")
            parts.append(part["text"])
        return _valid_unicode(where, field, "".join(parts))
    raise where.error(field, f"message content must be a string, got {_describe(content)}")


def _messages(where: RowLocator, field: str, value: Any) -> tuple:
    if not isinstance(value, list) or not value:
        raise where.error(field, f"expected a non-empty list of {{'role', 'content'}} messages, got {_describe(value)}")
    out = []
    for i, msg in enumerate(value):
        f = f"{field}[{i}]"
        if not isinstance(msg, dict):
            raise where.error(f, f"expected a {{'role', 'content'}} message, got {_describe(msg)}")
        if "role" not in msg:
            raise where.error(f, "message has no 'role'")
        if "content" not in msg:
            raise where.error(f, "message has no 'content'")
        role = msg["role"]
        if role not in ROLES:
            raise where.error(f, f"unknown role {_describe(role)}; expected one of {', '.join(ROLES)}")
        out.append((role, _message_content(where, f, msg["content"])))
    return tuple(out)


def _content(where: RowLocator, field: str, value: Any) -> Content:
    if isinstance(value, list):
        return _messages(where, field, value)
    if isinstance(value, str):
        return _text(where, field, value)
    raise where.error(field, f"expected a string or a list of {{'role', 'content'}} messages, got {_describe(value)}")


def _number(where: RowLocator, field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise where.error(field, f"expected a number, got {_describe(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise where.error(field, f"must be a finite number, got {value}")
    return value


def _split_text_prompt(a: str, b: str) -> int:
    """Where the implicit prompt of two texts ends: their common prefix, cut back to a word boundary."""
    if a == b:
        return 0  # identical texts: no split (the quality filter drops the pair)
    n = common_prefix_len((a, b))
    while n > 0 and not a[n - 1].isspace():
        n -= 1
    return n


def _split_message_prompt(responses: list[tuple]) -> int:
    """The turns every response shares, each keeping at least its own last turn."""
    return common_prefix_len(responses, keep_own=1)


def _check_response_turns(where: RowLocator, field: str, response: tuple) -> None:
    if response[-1][0] != "assistant":
        raise where.error(field, f"the last message must be from the assistant, got role '{response[-1][0]}'")
    if not response[-1][1].strip():
        raise where.error(field, "the last assistant message is empty or whitespace only")


def _ranked_order(where: RowLocator, raw: dict, k: int) -> tuple[list[int], list[int], list[float] | None]:
    """Order (best first) and ranks of k responses from ``ranking`` or ``scores``."""
    has_ranking, has_scores = "ranking" in raw, "scores" in raw
    if has_ranking == has_scores:
        raise where.error("ranking", "a 'responses' row needs exactly one of 'ranking' (indices, best first) or 'scores'")
    if has_ranking:
        ranking = raw["ranking"]
        if not isinstance(ranking, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ranking):
            raise where.error("ranking", f"expected a list of response indices, got {_describe(ranking)}")
        seen = set()
        for i in ranking:
            if not 0 <= i < k:
                raise where.error("ranking", f"index {i} is out of range for {k} responses")
            if i in seen:
                raise where.error("ranking", f"index {i} appears twice")
            seen.add(i)
        missing = sorted(set(range(k)) - seen)
        if missing:
            raise where.error("ranking", f"misses response indices {missing}")
        return list(ranking), list(range(k)), None
    scores = raw["scores"]
    if not isinstance(scores, list) or len(scores) != k:
        raise where.error("scores", f"expected {k} numbers (one per response), got {_describe(scores)}")
    values = [_number(where, f"scores[{i}]", s) for i, s in enumerate(scores)]
    order = sorted(range(k), key=lambda i: -values[i])
    distinct = sorted(set(values), reverse=True)
    ranks = [distinct.index(values[i]) for i in order]
    return order, ranks, [values[i] for i in order]


def normalize_row(raw: Any, source: str, row: int) -> PreferenceExample:
    """Turn one input row of any supported format into a ``PreferenceExample`` (or raise ``DataError``)."""
    where = RowLocator(source, row)
    if not isinstance(raw, dict):
        raise where.error("", f"expected a JSON object, got {_describe(raw)}")
    # Columnar sources (Parquet, saved datasets) give every row every column, null where a row has no
    # value; a null field means "absent", exactly as in a JSON row that omits the key.
    raw = {k: v for k, v in raw.items() if v is not None}
    example_id = f"{source}:{row}"
    subset = raw.get("subset")
    if subset is not None and not isinstance(subset, str):
        raise where.error("subset", f"expected a string, got {_describe(subset)}")

    if "responses" in raw:
        responses_raw = raw["responses"]
        if not isinstance(responses_raw, list) or len(responses_raw) < 2:
            raise where.error("responses", f"expected a list of at least 2 responses, got {_describe(responses_raw)}")
        responses = [_content(where, f"responses[{i}]", r) for i, r in enumerate(responses_raw)]
        order, ranks, scores = _ranked_order(where, raw, len(responses))
        responses = [responses[i] for i in order]
        prompt = _prompt(where, raw, responses)
        return PreferenceExample(example_id, prompt, tuple(responses), tuple(ranks),
                                 scores=None if scores is None else tuple(scores), subset=subset)

    # RewardBench 2 rows always carry a prompt; without one, a list of strings is a malformed conversation
    if "prompt" in raw and (_is_response_list(raw.get("chosen")) or _is_response_list(raw.get("rejected"))):
        return _best_of_n(where, raw, example_id, subset)
    for key in ("chosen", "rejected"):
        if key not in raw:
            raise where.error(key, "missing; a preference row needs 'chosen' and 'rejected' "
                                   "(or 'responses' with 'ranking' or 'scores')")
    chosen = _content(where, "chosen", raw["chosen"])
    rejected = _content(where, "rejected", raw["rejected"])
    if isinstance(chosen, tuple) != isinstance(rejected, tuple):
        raise where.error("rejected", "chosen and rejected must both be text or both be message lists")
    margin = None if raw.get("margin") is None else _number(where, "margin", raw["margin"])
    scores = None
    if "score_chosen" in raw or "score_rejected" in raw:
        for key in ("score_chosen", "score_rejected"):
            if raw.get(key) is None:
                raise where.error(key, "missing; score_chosen and score_rejected come together")
        scores = (_number(where, "score_chosen", raw["score_chosen"]),
                  _number(where, "score_rejected", raw["score_rejected"]))
    responses = [chosen, rejected]
    prompt = _prompt(where, raw, responses)
    return PreferenceExample(example_id, prompt, tuple(responses), (0, 1), margin, scores, subset)


def _is_response_list(value: Any) -> bool:
    """A list of responses (texts or message lists), as opposed to one conversation (a list of messages)."""
    return isinstance(value, list) and bool(value) and not isinstance(value[0], dict)


def _best_of_n(where: RowLocator, raw: dict, example_id: str, subset: str | None) -> PreferenceExample:
    """RewardBench 2's row: every chosen response is tied best (rank 0), every rejected tied worst (rank 1)."""
    groups = {}
    for key in ("chosen", "rejected"):
        value = raw.get(key)
        if not _is_response_list(value):
            raise where.error(key, f"expected a non-empty list of responses (like the other side), "
                                   f"got {_describe(value)}")
        groups[key] = [_content(where, f"{key}[{i}]", r) for i, r in enumerate(value)]
    k, n = len(groups["chosen"]), len(groups["rejected"])
    if raw.get("num_correct") is not None and raw["num_correct"] != k:
        raise where.error("num_correct", f"is {_describe(raw['num_correct'])} but 'chosen' has {k} responses")
    row_id = raw.get("id")
    if row_id is not None and not isinstance(row_id, (str, int)):
        raise where.error("id", f"expected a string or an integer, got {_describe(row_id)}")
    responses = groups["chosen"] + groups["rejected"]
    prompt = _prompt(where, raw, responses)
    return PreferenceExample(example_id, prompt, tuple(responses), (0,) * k + (1,) * n, subset=subset,
                             row_id=None if row_id is None else str(row_id))


def _prompt(where: RowLocator, raw: dict, responses: list) -> Content:
    """Resolve the prompt (explicit or implicit) and strip an implicit one from the responses in place."""
    chat = isinstance(responses[0], tuple)
    if any(isinstance(r, tuple) != chat for r in responses):
        raise where.error("responses", "responses must all be text or all be message lists")
    explicit = raw.get("prompt")
    if explicit is not None:
        if chat:
            prompt = ((("user", _text(where, "prompt", explicit)),) if isinstance(explicit, str)
                      else _messages(where, "prompt", explicit))
        elif isinstance(explicit, str):
            prompt = _text(where, "prompt", explicit, allow_empty=True)
        elif isinstance(explicit, list):
            raise where.error("prompt", "a message-list prompt needs message-list responses")
        else:
            raise where.error("prompt", f"expected a string or a list of messages, got {_describe(explicit)}")
    elif chat:
        cut = _split_message_prompt(responses)
        prompt = responses[0][:cut]
        responses[:] = [r[cut:] for r in responses]
    else:
        cut = min(_split_text_prompt(responses[0], r) for r in responses[1:])
        prompt = responses[0][:cut]
        responses[:] = [r[cut:] for r in responses]
    if chat:
        names = ["chosen", "rejected"] if len(responses) == 2 and "responses" not in raw else \
            [f"responses[{i}]" for i in range(len(responses))]
        for name, r in zip(names, responses):
            _check_response_turns(where, name, r)
    return prompt


def normalize_candidates(raw: Any, source: str, row: int, min_responses: int = 2) -> PreferenceExample:
    """An unranked ``{"prompt"?, "responses": [k]}`` row of candidates to be scored (relabeling, best-of-n).

    Responses keep their input order and are all tied (``ranks`` all 0) until a reward model ranks them;
    any ``ranking``/``scores`` in the row is ignored. Without a ``prompt`` the responses' common prefix
    is the prompt (as for pairs); a single response then needs an explicit prompt.
    """
    where = RowLocator(source, row)
    if not isinstance(raw, dict):
        raise where.error("", f"expected a JSON object, got {_describe(raw)}")
    # Columnar sources (Parquet, saved datasets) give every row every column, null where a row has no
    # value; a null field means "absent", exactly as in a JSON row that omits the key.
    raw = {k: v for k, v in raw.items() if v is not None}
    subset = raw.get("subset")
    if subset is not None and not isinstance(subset, str):
        raise where.error("subset", f"expected a string, got {_describe(subset)}")
    if "responses" not in raw:
        raise where.error("responses", "missing; a candidates row is {'prompt', 'responses': [...]}")
    responses_raw = raw["responses"]
    if not isinstance(responses_raw, list) or len(responses_raw) < max(1, min_responses):
        raise where.error("responses", f"expected a list of at least {max(1, min_responses)} responses, "
                                       f"got {_describe(responses_raw)}")
    responses = [_content(where, f"responses[{i}]", r) for i, r in enumerate(responses_raw)]
    if len(responses) == 1 and raw.get("prompt") is None:
        if isinstance(responses[0], tuple):  # a conversation: everything before the last turn is the prompt
            prompt, responses = responses[0][:-1], [responses[0][-1:]]
            _check_response_turns(where, "responses[0]", responses[0])
        else:
            raise where.error("prompt", "missing; a single text response needs an explicit 'prompt'")
    else:
        prompt = _prompt(where, raw, responses)
    return PreferenceExample(f"{source}:{row}", prompt, tuple(responses), (0,) * len(responses), subset=subset)


def parse_messages(value: Any, field: str = "messages") -> tuple:
    """Validate ``[{"role", "content"}, ...]`` from outside a data file (e.g. a scoring request).

    Same rules as rows (known roles, text or text-part content, valid Unicode); returns (role, content)
    tuples or raises ``DataError`` naming ``field``.
    """
    return _messages(RowLocator("", None), field, value)
