"""verl custom reward functions backed by a ray_rm server (``reward.custom_reward_function``).

verl loads ``custom_reward_function.path`` as a file and calls ``name`` with keyword arguments
``data_source, solution_str, ground_truth, extra_info`` (+ ``custom_reward_function.reward_kwargs``, and
``reward_router_address``/``reward_model_tokenizer`` when its own RM is enabled, ignored here):

* ``compute_score``        sync; verl's reward loop runs it in a thread per rollout
* ``compute_score_async``  the same as a coroutine; verl awaits it on its loop (no thread per rollout)
* ``compute_score_batch``  ``data_sources, solution_strs, ground_truths, extra_infos`` -> list, for verl's
                           ``batch`` reward manager: one chunked ``RewardClient`` call per batch

verl hands the reward function the decoded response only, so the prompt comes from the dataset's
``extra_info[prompt_key]`` (default ``"prompt"``): chat messages are scored with the RM's chat template
(the assistant turn is ``solution_str``), a string as plain text ``prompt + solution_str``. Concurrent
single calls become concurrent requests that the server batches across callers.

Must not: import verl, tokenize, or hold a model. Settings arrive as verl ``reward_kwargs``: ``url``
(default ``$RAY_RM_URL``), ``token`` (default ``$RAY_RM_SERVE_TOKEN``), ``mode``, ``prompt_key``,
``normalize``, ``clip``.
"""
from __future__ import annotations

import os
import threading

from ray_rm.errors import UserError
from ray_rm.integrations.items import chat_payload
from ray_rm.serve.client import RewardClient
from ray_rm.serve.config import TOKEN_ENV

URL_ENV = "RAY_RM_URL"
_clients: dict[tuple, RewardClient] = {}
_lock = threading.Lock()


def client_for(url: str | None = None, token: str | None = None, mode: str = "auto") -> RewardClient:
    """One ``RewardClient`` per (url, token, mode) per process: verl calls the function once per rollout."""
    url = url or os.environ.get(URL_ENV) or None
    token = token or os.environ.get(TOKEN_ENV) or None
    if not url and mode != "handle":
        raise UserError(f"no reward server url: pass reward_kwargs.url=http://host:port or set ${URL_ENV}")
    key = (url, token, mode)
    with _lock:
        if key not in _clients:
            _clients[key] = RewardClient(url, token=token, mode=mode)
        return _clients[key]


def score_item(solution_str: str, extra_info: dict | None, prompt_key: str = "prompt") -> dict:
    """The ``/v1/score`` item for one rollout: the dataset prompt from ``extra_info`` + the decoded response."""
    extra_info = extra_info or {}
    if prompt_key not in extra_info:
        raise UserError(f"extra_info has no '{prompt_key}' (keys: {sorted(extra_info)[:10]}): verl passes the "
                        "reward function the response only; put the prompt (text or chat messages) in each "
                        f"row's extra_info['{prompt_key}'], or name another key with reward_kwargs.prompt_key")
    prompt = extra_info[prompt_key]
    if isinstance(prompt, str):
        return {"prompt": prompt, "response": solution_str}
    if isinstance(prompt, list) or hasattr(prompt, "tolist"):  # verl keeps object columns as numpy arrays
        return {"prompt": chat_payload(prompt), "response": [{"role": "assistant", "content": solution_str}]}
    raise UserError(f"extra_info['{prompt_key}'] must be text or a list of {{'role', 'content'}} messages, "
                    f"got {type(prompt).__name__}")


def compute_score(data_source=None, solution_str: str = "", ground_truth=None, extra_info: dict | None = None, *,
                  url: str | None = None, token: str | None = None, mode: str = "auto", prompt_key: str = "prompt",
                  normalize: bool | None = None, clip: float | None = None, **_verl_kwargs) -> float:
    """The reward model's score of one rollout (``data_source`` and ``ground_truth`` are not used by an RM)."""
    item = score_item(solution_str, extra_info, prompt_key)
    return client_for(url, token, mode).score([item], normalize, clip)[0]


async def compute_score_async(data_source=None, solution_str: str = "", ground_truth=None,
                              extra_info: dict | None = None, *, url: str | None = None, token: str | None = None,
                              mode: str = "auto", prompt_key: str = "prompt", normalize: bool | None = None,
                              clip: float | None = None, **_verl_kwargs) -> float:
    item = score_item(solution_str, extra_info, prompt_key)
    return (await client_for(url, token, mode).ascore([item], normalize, clip))[0]


def compute_score_batch(data_sources=None, solution_strs: list | None = None, ground_truths=None,
                        extra_infos: list | None = None, *, url: str | None = None, token: str | None = None,
                        mode: str = "auto", prompt_key: str = "prompt", normalize: bool | None = None,
                        clip: float | None = None, **_verl_kwargs) -> list[float]:
    solution_strs = list(solution_strs or [])
    extra_infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
    items = [score_item(s, e, prompt_key) for s, e in zip(solution_strs, extra_infos, strict=True)]
    return client_for(url, token, mode).score(items, normalize, clip)
