"""TRL GRPO reward functions backed by a ray_rm server: ``GRPOTrainer(reward_funcs=[RayRMReward(url)])``.

TRL calls each reward function as ``f(prompts=..., completions=..., completion_ids=..., **columns)`` and
expects one float per completion (``GRPOTrainer._calculate_rewards``); an async ``__call__`` is awaited on
TRL's own event loop, concurrently with its other async reward functions. Conversational rows (lists of
``{"role", "content"}`` messages) are sent as ``{"prompt": messages, "response": messages}`` so the server
applies the *reward model's* chat template (the policy's template usually differs); plain-text rows as
``{"prompt": text, "response": text}``, tokenized as the RM's training rows were.

Must not: tokenize, import trl, or hold a model; ``RewardClient`` does transport, chunking and retries.
"""
from __future__ import annotations

import os

from ray_rm.errors import UserError
from ray_rm.integrations.items import chat_payload
from ray_rm.serve.client import RewardClient
from ray_rm.serve.config import TOKEN_ENV


def completion_items(prompts: list, completions: list) -> list[dict]:
    """``/v1/score`` items for TRL's (prompt, completion) pairs, conversational or plain text."""
    if len(prompts) != len(completions):
        raise UserError(f"got {len(prompts)} prompts for {len(completions)} completions; TRL passes one prompt "
                        "per completion")
    items = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        if isinstance(completion, str) and isinstance(prompt, str):
            items.append({"prompt": prompt, "response": completion})
        elif isinstance(completion, list) and isinstance(prompt, list):
            items.append({"prompt": chat_payload(prompt), "response": chat_payload(completion)})
        else:
            raise UserError(f"completion {i}: prompt and completion must both be text or both be message lists, "
                            f"got {type(prompt).__name__} and {type(completion).__name__}")
    return items


class RayRMReward:
    """Synchronous TRL reward function; picklable, so it survives TRL/accelerate process spawning."""

    def __init__(self, url: str | None = None, *, token: str | None = None, mode: str = "auto",
                 normalize: bool | None = None, clip: float | None = None, name: str = "ray_rm",
                 client: RewardClient | None = None, **client_kwargs):
        """``url``: the server (``http://host:port[/route_prefix]``); ``mode``: auto (a Serve handle when this
        process is inside the Ray cluster that runs the app, else HTTP), handle or http. ``token`` defaults
        to ``$RAY_RM_SERVE_TOKEN``. ``name`` is how TRL labels this reward in its logs."""
        self.client = client or RewardClient(url, token=token or os.environ.get(TOKEN_ENV) or None, mode=mode,
                                             **client_kwargs)
        self.normalize, self.clip = normalize, clip
        self.__name__ = name  # TRL's get_callable_name reads it

    def __call__(self, prompts: list, completions: list, completion_ids: list | None = None,
                 **columns) -> list[float]:
        return self.client.score(completion_items(prompts, completions), self.normalize, self.clip)


class AsyncRayRMReward(RayRMReward):
    """The same reward as a coroutine: TRL runs async reward functions in parallel on its event loop."""

    async def __call__(self, prompts: list, completions: list, completion_ids: list | None = None,
                       **columns) -> list[float]:
        return await self.client.ascore(completion_items(prompts, completions), self.normalize, self.clip)
