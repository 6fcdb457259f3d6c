"""Batch relabeling with a reward model on Ray Data: DPO pairs from candidates, rejudging, best-of-n.

Layers: ``select`` (pure selection rules) and ``score`` (scoring examples with a ``RewardScorer``)
-> ``task`` (one read task end to end, plus atomic part files) -> ``stage`` (the Ray Data actor pool,
shared with ``ray_rm.eval``) -> ``runner`` (planning, resume, summary).
"""
