"""The scoring engine of one replica: k reward models, their tokenizers, token batchers and the ensemble math.

It must not check requests (``inputs.py`` is the one place) or know HTTP.

Independent of HTTP and of Ray Serve (the deployment in ``server.py`` only adds transport), so the
same code answers HTTP requests, handle calls and tests. Each member tokenizes with its own tokenizer
and rules (``RewardScorer``), and scores through its own ``TokenBatcher``; all members share one
model thread per replica.
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
from concurrent.futures import ThreadPoolExecutor

from ray_rm.serve.attribute_answers import attribute_answer, request_weights
from ray_rm.serve.batcher import TokenBatcher
from ray_rm.serve.config import ServeConfig
from ray_rm.serve.inputs import InputError, ScoreRequest

log = logging.getLogger(__name__)


def combine(member_rewards: list[list[float]], member_stats: list, normalize: bool, penalty: float,
            clip: float) -> dict:
    """Per-item rewards from k members: raw mean, then (normalized) mean - penalty * std, clipped.

    Each member is normalized with its own reward mean/std before averaging (members' scales differ);
    std is the population std over members (0 for a single model, so k=1 is just the model's reward).
    """
    k = len(member_rewards)
    n = len(member_rewards[0])
    raw = [sum(m[i] for m in member_rewards) / k for i in range(n)]
    values = [[st.normalize(r) for r in m] for m, st in zip(member_rewards, member_stats)] if normalize \
        else member_rewards
    mean = [sum(v[i] for v in values) / k for i in range(n)]
    std = [math.sqrt(sum((v[i] - mean[i]) ** 2 for v in values) / k) for i in range(n)]
    final = [m - penalty * s for m, s in zip(mean, std)] if k > 1 else list(mean)
    if clip > 0:
        final = [min(clip, max(-clip, r)) for r in final]
    out = {"rewards": final, "raw_rewards": raw, "normalized": normalize}
    if k > 1:
        out["ensemble"] = {"size": k, "penalty": penalty, "mean": mean, "std": std, "members": values}
    return out


class ScoringEngine:
    """Loads the member checkpoints once; ``score(ScoreRequest)`` is safe to await from many coroutines."""

    def __init__(self, cfg: ServeConfig):
        import torch

        from ray_rm.scoring import RewardScorer

        device = cfg.device
        if device == "auto":
            device = "cuda" if (cfg.num_gpus > 0 and torch.cuda.is_available()) else "cpu"
        self.cfg = cfg
        self.name = cfg.name()
        self.members = []
        for path in [cfg.model_path, *cfg.ensemble_paths]:
            scorer = RewardScorer(path, device=device, pack_tokens=cfg.pack_tokens, dtype=cfg.dtype,
                                  share_prompt=cfg.share_prefix)
            positions = getattr(scorer.model.config, "max_position_embeddings", None)
            if positions:  # a plain HF RM without ray_rm metadata: never exceed the model's positions
                scorer.max_length = min(scorer.max_length, int(positions))
            self.members.append(scorer)
        # One model thread per replica: ensemble members take turns instead of competing for the cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rm-forward")
        # One tokenizer thread: keeps the event loop free, and a Rust tokenizer is never entered twice at once.
        self._tokenize = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rm-tokenize")
        # a group's budget is its scorer's packed-row budget: one number decides both
        self.head_kind = self.members[0].model.head_kind
        self.attribute_names = self.members[0].attribute_names  # None for scalar reward models
        if any(m.attribute_names != self.attribute_names for m in self.members[1:]):
            raise ValueError("ensemble members must all be scalar reward models or attribute models with the same "
                             f"attributes; got {[m.attribute_names for m in self.members]}")
        self.batchers = [TokenBatcher(self._runner(m), batch_tokens=max(cfg.batch_tokens, m.max_length),
                                      wait_s=cfg.batch_wait_ms / 1000.0, share_prefix=m.share_prompt,
                                      min_shared=cfg.min_shared_tokens, max_group_tokens=m.pack_tokens,
                                      executor=self._executor) for m in self.members]
        vocabs = [m.tokenizer.get_vocab() for m in self.members]
        self.same_tokenizer = all(v == vocabs[0] for v in vocabs[1:])

    # ------------------------------------------------------------------ info
    def describe(self) -> dict:
        first = self.members[0]
        return {"id": self.name, "object": "model", "ensemble_size": len(self.members),
                "ensemble_penalty": self.cfg.ensemble_penalty if len(self.members) > 1 else 0.0,
                "max_length": min(m.max_length for m in self.members),
                "reward_mean": first.stats.mean, "reward_std": first.stats.std,
                "tokenizer": type(first.tokenizer).__name__,
                "chat_template": bool(getattr(first.tokenizer, "chat_template", None)),
                "input_ids_accepted": self.same_tokenizer,
                **({"attributes": self.attribute_names, "attribute_weights": first.attribute_weights}
                   if self.attribute_names else {})}

    def batching_stats(self) -> list[dict]:
        """Per member, since the replica started: forwards, request parts per forward, sequences, tokens."""
        out = []
        for b in self.batchers:
            st = dict(b.stats)
            st["requests_per_batch"] = round(st["requests"] / st["batches"], 3) if st["batches"] else 0.0
            out.append(st)
        return out

    def check(self) -> None:
        for b in self.batchers:
            b.check()

    def close(self) -> None:
        for b in self.batchers:
            b.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._tokenize.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ scoring
    def _encode(self, member, items: tuple, field: str) -> list[list[int]]:
        """Token ids for one member (a worker thread), each item checked once; tokenizer/template failures
        and bad ids become 422s."""
        seqs: list = [list(it.input_ids) if it.input_ids is not None else None for it in items]
        plain = [i for i, s in enumerate(seqs) if s is None and items[i].add_special_tokens]
        bare = [i for i, s in enumerate(seqs) if s is None and not items[i].add_special_tokens]
        try:
            encoded = member.encode([(items[i].prompt, items[i].response) for i in plain])
            # vLLM's add_special_tokens=false: the text already holds its special tokens (the encoder's
            # "templated" form is exactly tokenizer(text, add_special_tokens=False))
            encoded += member.encoder.encode_rendered([(items[i].response, True) for i in bare])
        except Exception as exc:  # e.g. a chat template that refuses a role order
            raise InputError(f"could not tokenize the inputs with the reward model's tokenizer: "
                             f"{type(exc).__name__}: {str(exc)[:300]}") from None
        for i, ids in zip(plain + bare, encoded):
            seqs[i] = ids
        if self.cfg.overlength == "truncate_left":
            seqs = [s[-member.max_length:] for s in seqs]  # the reward token is the last one: keep the end
        try:
            member.check_ids(seqs)
        except ValueError as exc:
            raise InputError(re.sub(r"^item (\d+):", rf"{field}[\1]:", str(exc))) from None
        return seqs

    def _rewards(self, req: ScoreRequest, member_values: list) -> tuple[list, list | None]:
        """(each member's rewards, the per-item attribute answer or None): attribute models weigh their values."""
        if not self.attribute_names:
            if req.weights is not None:
                raise InputError("'weights' applies to attribute reward models only; this one outputs one reward")
            return member_values, None
        rewards = [m.weigh(values, request_weights(self.attribute_names, m.attribute_weights, req.weights))
                   for m, values in zip(self.members, member_values)]
        return rewards, attribute_answer(member_values, self.attribute_names)

    def _runner(self, member):
        """What a member's batcher runs: whole-sequence rewards, an attribute model's k values per item (weighted
        per request in ``_rewards``), or (prm) the head's score at every token."""
        if self.head_kind.name != "prm":
            return member.score_group_outputs if self.attribute_names else member.score_groups
        if len(self.members) > 1:
            from ray_rm.errors import UserError

            raise UserError("serve.ensemble_paths: process reward models are served one checkpoint per replica")
        from functools import partial

        from ray_rm.scoring.steps import score_token_groups

        return partial(score_token_groups, member)

    async def score(self, req: ScoreRequest) -> dict:
        self.check()  # a closing replica answers BatcherClosed (503, retry elsewhere), not a 500
        if self.head_kind.name == "prm" or any(it.steps is not None for it in req.items):
            from ray_rm.serve.step_answers import score_step_request

            return await score_step_request(self, req)
        if any(it.input_ids is not None for it in req.items) and not self.same_tokenizer:
            raise InputError("input_ids cannot be scored by this ensemble: its members use different tokenizers; "
                             "send text or messages")
        loop = asyncio.get_running_loop()
        encoded = await asyncio.gather(*(loop.run_in_executor(self._tokenize, self._encode, m, req.items, req.field)
                                         for m in self.members))
        member_values = await asyncio.gather(*(b.score(seqs) for b, seqs in zip(self.batchers, encoded)))
        member_rewards, attributes = self._rewards(req, list(member_values))
        out = combine(member_rewards, [m.stats for m in self.members], req.normalize,
                      self.cfg.ensemble_penalty, req.clip)
        if attributes is not None:
            out["attributes"] = attributes
        out.update(self.head_kind.answer(out["rewards"]))  # how this head names its outputs
        out["model"] = self.name
        out["num_tokens"] = [len(s) for s in encoded[0]]  # as the first member tokenized them (usage counts)
        return out
