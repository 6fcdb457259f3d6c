"""Connect to Ray the same way in every job: join the cluster a job was submitted to, or start one locally."""
from __future__ import annotations

import logging
import os

from ray_rm.config_schema import RayConfig

log = logging.getLogger(__name__)

# Ray Train's controller consumes reports every health-check interval (2 s by default), which throttles runs
# whose steps are shorter than that; 0.5 s keeps progress lines per step cheap.
_WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
               "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


def quiet_ray_logs() -> None:
    """Ray Data's per-operator progress logs drown the job's own lines; ray_rm prints its own summaries."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    for name in ("ray.data", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:  # Ray Train logs every report at INFO under a logger named after its file path
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    except ImportError:
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def init_ray(cfg: RayConfig):
    """Return the initialized ``ray`` module.

    ``auto-local``: inside ``ray job submit`` (RAY_ADDRESS set) or next to a running ``ray start`` cluster,
    join it; otherwise start a private local cluster. ``local`` always starts one; anything else is an address.
    """
    import ray

    quiet_ray_logs()
    if ray.is_initialized():
        return ray
    for k, v in _WORKER_ENV.items():
        os.environ.setdefault(k, v)
    kwargs = {"log_to_driver": True, "runtime_env": {"env_vars": dict(_WORKER_ENV)}}
    if cfg.address == "auto-local":
        if os.environ.get("RAY_ADDRESS"):
            ray.init(**kwargs)
            return ray
        try:
            ray.init(address="auto", **kwargs)
            log.info("joined the running Ray cluster")
            return ray
        except (ConnectionError, RuntimeError):
            pass
        return _start_local(ray, cfg, kwargs)
    if cfg.address == "local":
        return _start_local(ray, cfg, kwargs)
    ray.init(address=cfg.address, **kwargs)
    return ray


def _start_local(ray, cfg: RayConfig, kwargs: dict):
    num_cpus = cfg.num_cpus or max(4, os.cpu_count() or 1)
    ray.init(num_cpus=num_cpus, **kwargs)
    log.info("started a local Ray cluster with %d logical CPUs", num_cpus)
    return ray
