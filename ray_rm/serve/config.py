"""Settings of the reward server: one ``serve`` section (+ ``ray``) loaded like every other job config.

Declarations only: it must not hold cross-field rules (``ray_rm/validation.py``).

All defaults live here; ``jobs/serve_rm.py --help`` lists them and ``cluster/serve_rm.yaml`` passes
the same keys as application ``args``. Secure by default: binds 127.0.0.1, bounded bodies and items.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from ray_rm.config_schema import DTYPES, RayConfig, opt, section

TOKEN_ENV = "RAY_RM_SERVE_TOKEN"


@dataclass
class ServeConfig:
    model_path: str = opt("", "exported ray_rm checkpoint or any HF sequence-classification RM (local dir, hub id, "
                              "or 'smollm2-135m-instruct')", local_path=True)
    ensemble_paths: list = opt([], "extra RM checkpoints held by the same replica; rewards become "
                                   "mean - ensemble_penalty * std over model_path + these", local_path=True)
    ensemble_penalty: float = opt(1.0, "k in the conservative ensemble reward mean - k * std")
    model_name: str = opt("", "name reported in responses and /v1/models (default: the checkpoint folder name)")
    app_name: str = opt("ray_rm", "Ray Serve application name (RewardClient looks the deployment up by it)")
    deployment_name: str = opt("RewardServer", "Ray Serve deployment name")
    route_prefix: str = opt("/", "HTTP route prefix of the application")
    host: str = opt("127.0.0.1", "HTTP bind address (0.0.0.0 exposes the server to the network: set auth_token)")
    port: int = opt(8000, "HTTP port")
    auth_token: str = opt("", f"bearer token required on scoring routes (empty: read ${TOKEN_ENV}; "
                              "both empty: no auth)")
    num_replicas: int = opt(1, "replicas (the minimum when autoscaling)")
    max_replicas: int = opt(0, "> num_replicas turns on autoscaling between num_replicas and this")
    target_ongoing_requests: float = opt(32.0, "autoscaling target of in-flight requests per replica")
    num_cpus: float = opt(1.0, "ray_actor_options.num_cpus per replica")
    num_gpus: float = opt(0.0, "ray_actor_options.num_gpus per replica (> 0 puts the model on CUDA)")
    torch_threads: int = opt(0, "torch intra-op threads per replica (0 = max(1, num_cpus))")
    max_ongoing_requests: int = opt(256, "requests a replica accepts at once (they wait in its token batcher)")
    max_queued_requests: int = opt(1024, "requests queued per caller beyond that; more get 503 + Retry-After "
                                         "(-1 = unbounded)")
    retry_after_s: float = opt(1.0, "Retry-After header value of backpressure 503 responses")
    batch_tokens: int = opt(8192, "token budget of one forward batch gathered across concurrent requests")
    pack_tokens: int = opt(4096, "token budget of one packed row inside a batch (the training packer's budget)")
    batch_wait_ms: float = opt(5.0, "how long the first request of a batch waits for others to join")
    share_prefix: bool = opt(True, "score sequences that share a token prefix (k rollouts of one prompt, even "
                                   "from different requests) with the prefix computed once")
    min_shared_tokens: int = opt(16, "shortest common prefix worth sharing")
    normalize: bool = opt(False, "default of the request's 'normalize': (r - reward_mean) / reward_std")
    clip: float = opt(0.0, "clip final rewards to [-clip, clip] (0 = off; a request's 'clip' overrides)")
    overlength: str = opt("error", "items over the checkpoint's max_length: error (4xx naming the item) | "
                                   "truncate_left (keep the end, where the reward token is)", ("error", "truncate_left"))
    step_aggregate: str = opt("min", "process reward models: how step scores become an item's reward (a "
                                     "request's 'aggregate' overrides): min | prod | last | mean of step "
                                     "probabilities", ("min", "prod", "last", "mean"))
    max_items: int = opt(1024, "most items in one request (more: 413)")
    max_body_mb: float = opt(16.0, "largest request body in MiB (more: 413)")
    device: str = opt("auto", "auto (cuda when the replica has a GPU) | cpu | cuda", ("auto", "cpu", "cuda"))
    dtype: str = opt("auto", "auto (bf16 on GPUs that support it, fp32 on CPU) | float32 | bfloat16 | float16 (GPU)",
                     DTYPES)
    health_check_period_s: float = opt(10.0, "Serve health-check period")
    health_check_timeout_s: float = opt(30.0, "Serve health-check timeout")
    graceful_shutdown_timeout_s: float = opt(20.0, "on shutdown, how long a replica finishes in-flight requests")
    request_timeout_s: float = opt(0.0, "HTTP proxy end-to-end timeout per request (0 = none)")

    def resolved_token(self) -> str:
        return self.auth_token or os.environ.get(TOKEN_ENV, "")

    def name(self) -> str:
        return self.model_name or os.path.basename(os.path.normpath(self.model_path)) or "reward-model"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ServeJobConfig:
    serve: ServeConfig = section(ServeConfig, "the reward endpoint")
    ray: RayConfig = section(RayConfig, "Ray cluster connection")
