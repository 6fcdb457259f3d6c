"""Answers of a process reward model server (``model.head=prm``): step rewards and their aggregate per item.

What this module is for: the PRM branch of ``ScoringEngine.score``: tokenize each ``{"prompt" | "messages",
"steps"}`` item by the training rule (``scoring/steps.py``), score it through the replica's token batcher
(so batching and prompt sharing across requests work as for pairs: the batcher returns the head's score
at every token, and each item reads its own step ends) and answer
``{"rewards": [aggregate per item], "step_rewards": [[r_1, ..., r_k] per item], "aggregate": how}``.
Step rewards are the head's logits; ``rewards`` aggregate step probabilities (``eval/prm_metrics.aggregate``:
min | prod | last | mean), so ``normalize`` and ``clip`` do not apply. What it must not do: parse HTTP
bodies (``inputs.py``) or import Ray.
"""
from __future__ import annotations

import asyncio
import re

from ray_rm.eval.prm_metrics import aggregate
from ray_rm.serve.inputs import InputError, ScoreRequest


def _encode(member, items: tuple, field: str) -> list:
    from ray_rm.scoring.steps import encode_steps

    missing = next((i for i, it in enumerate(items) if it.steps is None), None)
    if missing is not None:
        raise InputError(f"{field}[{missing}]: this is a process reward model: send {{'prompt', 'steps': [...]}} "
                         "or {'messages', 'steps': [...]} items")
    try:
        tokens = encode_steps(member, [(it.prompt, list(it.steps)) for it in items])
    except Exception as exc:  # e.g. a chat template that refuses a role order
        raise InputError(f"could not tokenize the steps with the reward model's tokenizer: "
                         f"{type(exc).__name__}: {str(exc)[:300]}") from None
    try:
        member.check_ids([t.input_ids for t in tokens])
    except ValueError as exc:
        raise InputError(re.sub(r"^item (\d+):", rf"{field}[\1]:", str(exc))) from None
    return tokens


async def score_step_request(engine, req: ScoreRequest) -> dict:
    from ray_rm.scoring.steps import pick_steps

    if engine.head_kind.name != "prm":
        raise InputError("'steps' items need a process reward model (a checkpoint trained with model.head=prm); "
                         "this one scores whole responses: send {'prompt', 'response'}")
    if req.weights is not None:
        raise InputError("'weights' applies to attribute reward models only; this one scores steps")
    member, batcher = engine.members[0], engine.batchers[0]
    loop = asyncio.get_running_loop()
    tokens = await loop.run_in_executor(engine._tokenize, _encode, member, req.items, req.field)
    token_scores = await batcher.score([t.input_ids for t in tokens])
    step_rewards = [pick_steps(scores, t) for scores, t in zip(token_scores, tokens)]
    how = req.aggregate or engine.cfg.step_aggregate
    return {"rewards": [aggregate(s, how) for s in step_rewards], "step_rewards": step_rewards, "aggregate": how,
            "model": engine.name, "num_tokens": [len(t.input_ids) for t in tokens]}
