"""Batch relabeling with a reward model on Ray Data: DPO pairs from candidates, rejudging, best-of-n.

It must not implement scoring: ``ray_rm.scoring`` is its one home, shared with serve and eval.

Layers: ``select`` (pure selection rules) -> ``task`` (one read task end to end, plus atomic part files)
-> ``runner`` (planning, resume, summary). Scoring and the Ray Data actor pool come from
``ray_rm.scoring``, shared with serve and eval.
"""
