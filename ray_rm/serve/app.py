"""Turn a ``ServeConfig`` into a Ray Serve application, and run it for development.

It must not hold routes (``server.py``), scoring (``scoring_engine.py``) or config rules (``ray_rm/validation.py``).

* ``build_app(cfg)``      the bound application (replicas, resources, autoscaling, backpressure from config)
* ``app_builder(args)``   import path for ``serve deploy`` / ``serve run`` configs (cluster/serve_rm.yaml)
* ``run_server(job_cfg)`` what ``jobs/serve_rm.py`` does: start Serve on host:port, deploy, block until
  SIGINT/SIGTERM, then remove the application (and the local cluster when this process started it).
"""
from __future__ import annotations

import logging
import signal
import threading

from ray_rm.config import ConfigError, from_dict
from ray_rm.serve.config import ServeConfig, ServeJobConfig

log = logging.getLogger(__name__)


def deployment_options(cfg: ServeConfig) -> dict:
    """``Deployment.options`` kwargs; every value comes from the config."""
    opts = {
        "name": cfg.deployment_name,
        "ray_actor_options": {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "max_queued_requests": cfg.max_queued_requests,
        "backpressure_config": {"status_code": 503, "retry_after_s": cfg.retry_after_s},
        "health_check_period_s": cfg.health_check_period_s,
        "health_check_timeout_s": cfg.health_check_timeout_s,
        "graceful_shutdown_timeout_s": cfg.graceful_shutdown_timeout_s,
        "graceful_shutdown_wait_loop_s": 0.5,
    }
    if cfg.max_replicas > cfg.num_replicas:
        opts["autoscaling_config"] = {"min_replicas": cfg.num_replicas, "max_replicas": cfg.max_replicas,
                                      "target_ongoing_requests": cfg.target_ongoing_requests}
    else:
        opts["num_replicas"] = cfg.num_replicas
    return opts


def build_app(cfg: ServeConfig):
    """The Serve application for ``cfg`` (bind only; nothing starts until ``serve.run``/``serve deploy``)."""
    from ray_rm.serve.server import RewardServer
    from ray_rm.validation import validate

    validate(cfg)
    return RewardServer.options(**deployment_options(cfg)).bind(cfg.to_dict())


def app_builder(args: dict):
    """``import_path: ray_rm.serve.app:app_builder``; ``args`` is ``{"serve": {...}}`` or the section itself."""
    args = dict(args or {})
    section = args.pop("serve", None)
    if section is not None and args:
        raise ConfigError(f"application args: unexpected keys {sorted(args)} next to 'serve'")
    return build_app(from_dict(ServeConfig, section if section is not None else args, "serve."))


def http_options(cfg: ServeConfig) -> dict:
    opts = {"host": cfg.host, "port": cfg.port}
    if cfg.request_timeout_s > 0:
        opts["request_timeout_s"] = cfg.request_timeout_s
    return opts


def url_of(cfg: ServeConfig) -> str:
    prefix = cfg.route_prefix.rstrip("/")
    return f"http://{cfg.host}:{cfg.port}{prefix}"


def deploy(cfg: ServeConfig):
    """Start Serve's HTTP proxy on cfg.host:cfg.port (if Serve is not running yet) and deploy; returns the handle."""
    from ray import serve

    from ray_rm.logging_setup import configure_serve_driver, serve_logging_config

    configure_serve_driver()
    app = build_app(cfg)
    serve.start(http_options=http_options(cfg), logging_config=serve_logging_config())
    return serve.run(app, name=cfg.app_name, route_prefix=cfg.route_prefix, logging_config=serve_logging_config())


def run_server(job: ServeJobConfig, stop: threading.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or ``stop``), then shut down cleanly."""
    import ray
    from ray import serve

    from ray_rm.ray_utils import init_ray, owns_local_cluster, shutdown_ray
    from ray_rm.validation import validate

    validate(job)
    started_here = not ray.is_initialized()
    init_ray(job.ray)
    owns_cluster = started_here and owns_local_cluster()
    stop = stop or threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        deploy(job.serve)
        log.info("scoring at %s/v1/score (OpenRLHF: %s/get_reward); Ctrl-C or SIGTERM stops",
                 url_of(job.serve), url_of(job.serve))
        print(f"READY {url_of(job.serve)}", flush=True)
        stop.wait()
        log.info("stopping: draining in-flight requests")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        try:
            # Deleting the app first drains it: replicas finish in-flight requests (up to
            # graceful_shutdown_timeout_s) while the proxy still delivers their answers.
            serve.delete(job.serve.app_name)
            if owns_cluster:
                serve.shutdown()
        finally:
            if started_here:
                shutdown_ray()
