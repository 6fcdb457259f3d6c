"""Ray Serve reward endpoint: score texts, chats or token ids for PPO at high throughput.

It must not import the model stack: importing ``ray_rm.serve`` for ``RewardClient`` stays light.

Layers (no cycles): ``inputs`` (request validation, pure; ``vllm_api`` maps vLLM's pooling bodies onto it)
and ``batcher`` (token-budget batching, pure asyncio) -> ``scoring_engine`` (models + ensemble math; scoring
from ``ray_rm.scoring``) -> ``server`` (Serve deployment, FastAPI routes) -> ``app`` (config -> application,
dev runner). ``client.RewardClient`` is what PPO actors import.
"""
from ray_rm.serve.client import RewardClient, RewardClientError, RewardServerUnavailable
from ray_rm.serve.config import ServeConfig, ServeJobConfig

__all__ = ["RewardClient", "RewardClientError", "RewardServerUnavailable", "ServeConfig", "ServeJobConfig"]
