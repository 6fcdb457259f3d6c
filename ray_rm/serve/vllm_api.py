"""vLLM-compatible pooling routes: ``POST /classify``, ``/v1/embeddings`` and ``/pooling`` bodies and answers.

Why: verl's reward loop (``RewardLoopWorker.compute_score_disrm``) talks to a discriminative RM through
vLLM's ``/classify`` (``{"model", "input", "use_activation": false}`` -> ``data[-1].probs[-1]``) and, with
SGLang, through ``/v1/embeddings`` (-> ``data[-1].embedding[-1]``). These routes let such clients point at
ray_rm unchanged. Schemas follow vLLM >= 0.11 (``ClassificationRequest``/``ClassificationResponse``:
``id, object, created, model, data[{index, label, probs, num_classes}], usage``).

Activation, as vLLM resolves it: ``softmax``, else ``activation``, else ``use_activation`` (the first two
are vLLM's deprecated spellings); when all are absent vLLM's classify default is ``use_activation=True``,
and for a one-label classifier its activation is the sigmoid. So ``probs = [sigmoid(reward)]`` by default
and ``[reward]`` (the same number ``/v1/score`` returns as ``rewards``) when activation is off.
``/v1/embeddings`` always returns the raw reward, as SGLang does for a reward model.

What this module must not do: tokenize, apply a chat template, or check items itself: ``serve.inputs``
(``parse_pooling_input``) does. A text ``input`` is already in the RM's chat template (verl renders it): it
becomes a ``{"text"}`` item, scored as given (with vLLM's ``add_special_tokens``, default true), and goes
through the engine's tokenizer and the cross-request token batcher like every other route. Pure Python
(no Ray, no torch).
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from ray_rm.serve.inputs import InputError, ScoreRequest, kind_of, parse_pooling_input

ACTIVATION_KEYS = ("softmax", "activation", "use_activation")  # vLLM's precedence: deprecated spellings first
IGNORED_KEYS = ("user", "request_id", "priority")  # bookkeeping fields that do not change a score
COMMON_KEYS = ("model", "input", "messages", "add_special_tokens", "truncate_prompt_tokens") + IGNORED_KEYS


@dataclass(frozen=True)
class PoolingCall:
    """A parsed pooling request: the items to score, whether to apply the sigmoid, the model name to echo."""

    request: ScoreRequest
    activation: bool
    model: str | None


def _check_keys(body: Any, allowed: tuple, route: str) -> dict:
    if not isinstance(body, dict):
        raise InputError(f"expected a JSON object {{'model', 'input': text | [text, ...]}}, got {kind_of(body)}")
    unknown = sorted(repr(k)[:40] for k in set(body) - set(allowed))
    if unknown:
        raise InputError(f"{route}: unknown field(s) {', '.join(unknown[:5])}; accepted: {', '.join(allowed)}")
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise InputError(f"'model' must be a string, got {kind_of(body['model'])}")
    if body.get("truncate_prompt_tokens") is not None:
        raise InputError("'truncate_prompt_tokens' is not supported: the server's serve.overlength policy "
                         "applies (error or truncate_left)")
    return body


def _activation(body: dict) -> bool:
    for key in ACTIVATION_KEYS:
        value = body.get(key)
        if value is not None:
            if not isinstance(value, bool):
                raise InputError(f"'{key}' must be true or false, got {kind_of(value)}")
            return value
    return True  # vLLM's classify default; sigmoid for a one-label model


def _call(body: dict, max_items: int, normalize: bool, clip: float, activation: bool) -> PoolingCall:
    # normalize/clip are the server's defaults: vLLM's bodies carry no such fields
    return PoolingCall(ScoreRequest(parse_pooling_input(body, max_items), normalize, clip, "input"), activation,
                       body.get("model"))


def parse_classify(body: Any, max_items: int, normalize: bool = False, clip: float = 0.0) -> PoolingCall:
    """``POST /classify`` (vLLM ``ClassificationCompletionRequest`` / ``ClassificationChatRequest``)."""
    body = _check_keys(body, COMMON_KEYS + ACTIVATION_KEYS, "/classify")
    return _call(body, max_items, normalize, clip, _activation(body))


def parse_embeddings(body: Any, max_items: int, normalize: bool = False, clip: float = 0.0) -> PoolingCall:
    """``POST /v1/embeddings`` (OpenAI/SGLang): the "embedding" of a reward model is its raw reward."""
    body = _check_keys(body, COMMON_KEYS + ("encoding_format", "dimensions"), "/v1/embeddings")
    if body.get("encoding_format") not in (None, "float"):
        raise InputError(f"'encoding_format' must be 'float', got {body['encoding_format']!r:.40}")
    if body.get("dimensions") is not None:
        raise InputError("'dimensions' is not supported: a reward model's embedding is its one reward")
    return _call(body, max_items, normalize, clip, activation=False)


def parse_pooling(body: Any, max_items: int, normalize: bool = False, clip: float = 0.0) -> PoolingCall:
    """``POST /pooling`` (vLLM ``PoolingRequest``), for the classify task a one-label RM serves."""
    body = _check_keys(body, COMMON_KEYS + ("task", "use_activation"), "/pooling")
    if body.get("task") not in (None, "classify"):
        raise InputError(f"'task' must be 'classify' (the task a reward model serves), got {body['task']!r:.40}")
    return _call(body, max_items, normalize, clip, _activation(body))


# ---------------------------------------------------------------------------------------------- answers
def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _values(call: PoolingCall, out: dict) -> list[float]:
    return [_sigmoid(r) if call.activation else r for r in out["rewards"]]


def _usage(out: dict) -> dict:
    tokens = int(sum(out.get("num_tokens", [])))
    return {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0, "prompt_tokens_details": None}


def _envelope(prefix: str, call: PoolingCall, out: dict, data: list) -> dict:
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
            "model": call.model or out["model"], "data": data, "usage": _usage(out)}


def classify_response(call: PoolingCall, out: dict, label: str | None) -> dict:
    """vLLM ``ClassificationResponse``; ``label`` is the model's ``id2label[0]`` (the argmax of one class)."""
    data = [{"index": i, "label": label, "probs": [v], "num_classes": 1} for i, v in enumerate(_values(call, out))]
    return _envelope("classify", call, out, data)


def embeddings_response(call: PoolingCall, out: dict, label: str | None = None) -> dict:
    data = [{"index": i, "object": "embedding", "embedding": [v]} for i, v in enumerate(_values(call, out))]
    return _envelope("embd", call, out, data)


def pooling_response(call: PoolingCall, out: dict, label: str | None = None) -> dict:
    data = [{"index": i, "object": "pooling", "data": [v]} for i, v in enumerate(_values(call, out))]
    return _envelope("pool", call, out, data)


@dataclass(frozen=True)
class Route:
    parse: Callable[..., PoolingCall]
    respond: Callable[[PoolingCall, dict, str | None], dict]


CLASSIFY = Route(parse_classify, classify_response)
EMBEDDINGS = Route(parse_embeddings, embeddings_response)
POOLING = Route(parse_pooling, pooling_response)


def served_label(config: Any) -> str | None:
    """vLLM's ``label``: ``id2label`` of the predicted (only) class, None when the config has no mapping."""
    id2label = getattr(config, "id2label", None) or {}
    return id2label.get(0, id2label.get("0"))
