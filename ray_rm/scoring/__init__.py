"""Scoring shared by serve, relabel and eval: load a checkpoint once, tokenize like training, score packed rows.

Modules: ``scorer`` (``RewardScorer``: one checkpoint, tokenization and packed forwards), ``grouping``
(which sequences of a batch share a prompt), ``examples`` (parsed examples -> rewards, for relabel and
eval), ``pool`` (the Ray Data actor pool relabel and eval run on). It must not serve HTTP, write
outputs or compute metrics. The names below load on first use, so importing the torch-free
``grouping`` (the serve batcher does) does not import torch.
"""
__all__ = ["RewardScorer", "RewardStats", "make_scorer"]


def __getattr__(name: str):
    if name in __all__:
        from ray_rm.scoring import scorer

        return getattr(scorer, name)
    raise AttributeError(f"module 'ray_rm.scoring' has no attribute '{name}'")
