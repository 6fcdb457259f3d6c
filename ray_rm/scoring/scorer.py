"""Score texts, chats or token ids with a reward model, padding-free: the scorer behind serve, relabel, eval.

What this module is for: one loaded checkpoint that tokenizes like training (``ray_rm.data.tokenize``,
with the rules stored in the checkpoint's ``config.json``), packs with the training packer into
token-budget rows and runs them under ``torch.no_grad``. Responses of one prompt can be scored as a
group so the prompt is computed once (prompt-shared packing, the same layout as training).
What it must not do: import Ray, batch across requests (``serve/batcher.py``), or check ids again
inside ``score_groups``: callers check every item once with ``check_ids`` (the serve engine when a
request arrives, ``examples.score_examples`` for relabel and eval).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ray_rm.data.packer import TokenizedGroup, pack_groups
from ray_rm.data.tokenize import SequenceEncoder
from ray_rm.prefix import common_prefix_len
from ray_rm.model.batch import collate_row


@dataclass
class RewardStats:
    mean: float = 0.0
    std: float = 1.0

    def normalize(self, r: float) -> float:
        return (r - self.mean) / (self.std if self.std > 0 else 1.0)


class RewardScorer:
    """Loads a reward model checkpoint once and scores batches of items."""

    def __init__(self, model_path: str, device: str = "cpu", pack_tokens: int = 8192, dtype: str = "auto",
                 attn_implementation: str = "auto", share_prompt: bool = True):
        from transformers import AutoTokenizer

        from ray_rm.assets import resolve_model_path
        from ray_rm.model.build import load_reward_model

        path = resolve_model_path(model_path)
        self.model_path = model_path
        self.device = torch.device(device)
        self.model = load_reward_model(path, self.device, dtype, attn_implementation)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        meta = getattr(self.model.config, "ray_rm", None) or {}
        self.meta = meta
        # checkpoints exported before the "no hidden tokens" contract were trained with EOS appended
        self.encoder = SequenceEncoder(self.tokenizer, chat_template=meta.get("chat_template", "auto"),
                                       legacy_append_eos=bool(meta.get("append_eos", False))
                                       and self.model.kind == "decoder")
        self.stats = RewardStats(float(meta.get("reward_mean", 0.0)), float(meta.get("reward_std", 1.0)))
        self.pack_tokens = pack_tokens
        self.max_length = min(int(meta.get("max_length", pack_tokens)), pack_tokens)
        self.share_prompt = share_prompt and self.model.kind == "decoder"
        self.vocab_size = int(self.model.config.vocab_size)
        self.pad_token_id = self.tokenizer.pad_token_id or 0

    # ------------------------------------------------------------------ tokenization
    def encode(self, items: list[tuple]) -> list[list[int]]:
        """Token ids for (prompt, response) items; content is text or a tuple of (role, content)."""
        return self.encoder.encode(items)

    def check_ids(self, seqs: list[list[int]]) -> None:
        """Raise ValueError naming the first item that is empty, too long or has out-of-vocabulary ids."""
        for i, s in enumerate(seqs):
            if not s:
                raise ValueError(f"item {i}: no tokens to score")
            if len(s) > self.max_length:
                raise ValueError(f"item {i}: {len(s)} tokens > the limit of {self.max_length}")
            bad = next((t for t in s if not (isinstance(t, int) and 0 <= t < self.vocab_size)), None)
            if bad is not None:
                raise ValueError(f"item {i}: token id {bad!r} is outside the vocabulary [0, {self.vocab_size})")

    # ------------------------------------------------------------------ scoring
    @property
    def attribute_names(self) -> list[str] | None:
        """The attribute head's names (its outputs, in order), or None for a scalar reward model."""
        combiner = self.model.combiner
        return list(combiner.names) if combiner is not None else None

    @property
    def attribute_weights(self) -> list[float] | None:
        combiner = self.model.combiner
        return combiner.weights.tolist() if combiner is not None else None

    def weigh(self, outputs: list[list[float]], weights: list[float] | None = None) -> list[float]:
        """An attribute model's reward per item: ``weights`` (default: the model's) . its attribute values."""
        weights = self.attribute_weights if weights is None else weights
        return [sum(w * a for w, a in zip(weights, vec)) for vec in outputs]

    def score_groups(self, groups: list[list[list[int]]]) -> list[list[float]]:
        """Rewards for groups of sequences (e.g. the k responses of one prompt), in input order.

        Identical sequences of a group are scored once, so they get bitwise-equal rewards (relabeling
        decides ties by equality; two copies in different attention buckets can differ by ~1e-7)."""
        return self._run_groups(groups, lambda out: out.rewards.tolist())

    def score_group_outputs(self, groups: list[list[list[int]]]) -> list[list[list[float]]]:
        """Every head output per sequence: the k attribute values of an attribute model, [reward] otherwise."""
        return self._run_groups(groups, lambda out: (out.attributes if out.attributes is not None
                                                     else out.rewards[:, None]).tolist())

    def score_output_ids(self, seqs: list[list[int]]) -> list[list[float]]:
        return [g[0] for g in self.score_group_outputs([[s] for s in seqs])]

    @torch.no_grad()
    def _run_groups(self, groups: list[list[list[int]]], read) -> list[list]:
        """``read(model output)`` per sequence for groups of sequences, in input order (see ``score_groups``)."""
        tgroups, copies = [], []
        for gi, seqs in enumerate(groups):
            distinct = list(dict.fromkeys(tuple(s) for s in seqs))
            copies.append([distinct.index(tuple(s)) for s in seqs])
            tgroups.append(TokenizedGroup(str(gi), [list(s) for s in distinct], [0] * len(distinct),
                                          common_prefix_len(distinct, keep_own=1) if len(distinct) > 1 else 0,
                                          math.nan, [math.nan] * len(distinct)))
        out: list[list] = [[] for _ in groups]
        budget = max(self.pack_tokens, max((g.num_tokens(self.share_prompt) for g in tgroups), default=1))
        for row in pack_groups(tgroups, budget, self.share_prompt, window=len(tgroups) or 1):
            rewards = read(self.model(collate_row(row, pad_token_id=self.pad_token_id).to(self.device)))
            k = 0
            for gid, size in zip(row.group_ids, row.group_sizes):
                out[int(gid)] = [rewards[k + j] for j in copies[int(gid)]]
                k += size
        return out

    def score_ids(self, seqs: list[list[int]]) -> list[float]:
        return [g[0] for g in self.score_groups([[s] for s in seqs])]

    def score(self, items: list[tuple]) -> list[float]:
        return self.score_ids(self.encode(items))


def make_scorer(model_path: str, gpus: float, cpus: float, pack_tokens: int, dtype: str, attn_implementation: str):
    """A scorer for a Ray actor: CUDA when the actor holds a GPU, else ``cpus`` torch threads; the actor's
    logging follows the job's --verbose switch."""
    import torch

    from ray_rm.logging_setup import configure_worker

    configure_worker()
    device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(max(1, int(cpus)))
    return RewardScorer(model_path, device=device, pack_tokens=pack_tokens, dtype=dtype,
                        attn_implementation=attn_implementation)
