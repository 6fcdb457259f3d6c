"""Ray Serve reward endpoint: score texts, chats or token ids for PPO at high throughput.

Layers (no cycles): ``inputs`` (request validation, pure; ``vllm_api`` maps vLLM's pooling bodies onto it)
and ``batcher`` (token-budget batching, pure asyncio) -> ``engine`` (models + ensemble math) -> ``server``
(Serve deployment, FastAPI routes) -> ``app`` (config -> application, dev runner). ``client.RewardClient``
is what PPO actors import.
"""
from ray_rm.serve.client import RewardClient, RewardClientError, RewardServerUnavailable
from ray_rm.serve.config import ServeConfig, ServeJobConfig

__all__ = ["RewardClient", "RewardClientError", "RewardServerUnavailable", "ServeConfig", "ServeJobConfig"]
