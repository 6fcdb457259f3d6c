"""Score parsed examples with a ``RewardScorer``: tokenize, drop (relabel) or left-truncate (eval) over-length
ones, check every sequence once, score each prompt's group.

What this module is for: relabeling and evaluation read rewards exactly like serving does (the
checkpoint's tokenization rules, prompt-shared packing, one forward per packed row). What it must not
do: import Ray (``pool.py`` runs it on actors), select pairs (``relabel/select.py``) or compute metrics.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from ray_rm.data.formats import PreferenceExample


@dataclass
class ResponseScores:
    """The rewards of one example's responses (not an eval record: that is ``eval.metrics.ScoredExample``)."""

    scores: list  # one reward per response, in the example's response order
    lengths: list  # tokens of each full sequence (prompt + response), before any truncation
    truncated: bool = False  # a sequence was cut to the scorer's limit (its start removed, the reward token kept)
    attributes: list | None = None  # an attribute reward model's {name: value} per response (scores = w . values)


def score_examples(scorer, examples: list[PreferenceExample], normalize: bool = False,
                   timing: dict | None = None, truncate: bool = False) -> list:
    """A ``ResponseScores`` per example, or a (reason, message) drop when a sequence exceeds the model's limit
    (with ``truncate``, such sequences keep their last ``scorer.max_length`` tokens and are flagged).

    ``timing["score_seconds"]`` accumulates the time spent in packed forward passes (the part a bare
    model run would also pay), so jobs can report their own overhead.
    """
    items = [(ex.prompt, r) for ex in examples for r in ex.responses]
    ids = scorer.encode(items) if items else []
    out: list = []
    groups, owners, lengths, cut = [], [], [], []
    k = 0
    for ex in examples:
        seqs = ids[k:k + len(ex.responses)]
        k += len(ex.responses)
        longest = max(len(s) for s in seqs)
        if longest > scorer.max_length and not truncate:
            out.append(("over_length", f"{ex.example_id}: a sequence has {longest} tokens > the scoring limit "
                                       f"{scorer.max_length} (checkpoint max_length / pack_tokens)"))
            continue
        owners.append(len(out))
        out.append(None)
        lengths.append([len(s) for s in seqs])
        cut.append(longest > scorer.max_length)
        groups.append([s[-scorer.max_length:] for s in seqs])
    for g in groups:
        scorer.check_ids(g)  # once per sequence; ``score_groups`` does not check again
    start = time.perf_counter()
    all_rewards, all_attributes = _score(scorer, groups)
    if timing is not None:
        timing["score_seconds"] = timing.get("score_seconds", 0.0) + time.perf_counter() - start
    for i, (g, rewards) in enumerate(zip(groups, all_rewards)):
        if normalize:
            rewards = [scorer.stats.normalize(r) for r in rewards]
        out[owners[i]] = ResponseScores([float(r) for r in rewards], lengths[i], cut[i],
                                        all_attributes[i] if all_attributes is not None else None)
    return out


def _score(scorer, groups: list) -> tuple[list, list | None]:
    """(rewards per group, {name: value} per response per group or None): one forward per packed row either way."""
    names = scorer.attribute_names
    if not groups:
        return [], [] if names else None
    if not names:
        return scorer.score_groups(groups), None
    outputs = scorer.score_group_outputs(groups)
    rewards = [scorer.weigh(g) for g in outputs]
    return rewards, [[dict(zip(names, vec)) for vec in g] for g in outputs]


def group_tokens(scored: list) -> int:
    """Tokens in the scored sequences (without prompt sharing): a throughput numerator."""
    return sum(sum(s.lengths) for s in scored if isinstance(s, ResponseScores))
