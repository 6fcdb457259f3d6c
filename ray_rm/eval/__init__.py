"""Reward-model evaluation on Ray Data: ``metrics`` (pure numpy), ``report`` (plots, HTML), ``runner`` (Ray).

It must not import relabel internals: scoring comes from ``ray_rm.scoring``, shared with serve and relabel.
"""
