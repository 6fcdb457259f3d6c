"""Reward-model evaluation on Ray Data: ``metrics`` (pure numpy), ``report`` (plots, HTML), ``runner`` (Ray)."""
