"""Connect to Ray the same way in every job: join the cluster a job was submitted to, or start one locally;
and leave nothing behind: a job that started its own local cluster stops it when the job ends, normally
or by SIGINT/SIGTERM (``cli.run_job`` calls ``shutdown_ray``); a job that joined a cluster only disconnects.

Why a handler of our own: ``ray.init`` lets Ray's C++ core worker take over SIGTERM, which aborts the
driver without running Python cleanup, leaving the cluster to best-effort reapers (SIGKILL-style exits
left its dashboard and runtime-env agents running on this machine). ``init_ray`` reinstalls a Python
SIGTERM handler that raises ``JobStopped`` in the main thread, so ``finally`` blocks and ``shutdown_ray``
run, and ``ray.shutdown(wait_for_processes=True)`` stops raylet (which stops its workers), GCS and agents.
This module must not stop a cluster it did not start.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import warnings

from ray_rm import logging_setup
from ray_rm.config_schema import RayConfig

log = logging.getLogger(__name__)

# Ray Train's controller consumes reports every health-check interval (2 s by default), which throttles runs
# whose steps are shorter than that; 0.5 s keeps progress lines per step cheap.
_WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
               "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


# Ray Data actor pools (tokenize/pack, relabel/eval scoring) fail fast: an actor that dies fails the job (relabel
# resumes from its finished tasks) instead of Ray Data's default of restarting it and retrying its task without
# limit, which loops forever on a deterministic crash (e.g. an OOM from a too-large pack_tokens). It also avoids
# the ERROR line Ray's core worker logs for every restartable actor whose constructor arguments live in the object
# store, as Ray Data's always do (ray-project/ray#57733).
def fail_fast_actors() -> dict:
    """The ``map_batches`` arguments for a fail-fast actor pool: ``max_restarts=0``.

    Ray 2.60 takes ``max_restarts`` only through its remote-args catch-all, which it marks deprecated (removal
    announced for Ray 2.64) without a named replacement, and warns on every call. The warning is silenced for
    calls from ray_rm's own modules only, here, the one place that passes it; the filter is (re)installed at each
    call because importing Ray puts its own deprecation filter in front."""
    warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", module=r"ray_rm\.")
    return {"max_restarts": 0}
# A cluster this job starts itself is one node that cannot be preempted: Ray Train's preemption watcher (an actor
# per run, whose creation logs the same core-worker ERROR line) has nothing to watch there.
_LOCAL_CLUSTER_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}

_OWNS_LOCAL_CLUSTER = False
_LAST_STOP_SIGNAL: int | None = None
# The SIGINT/SIGTERM handlers in place before ``init_ray``: ``shutdown_ray`` puts them back, so a library caller
# (a notebook, a test session) does not keep ray_rm's stop handler after its Ray work ends.
_HANDLERS_BEFORE_RAY: dict | None = None


class JobStopped(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt so every ``finally`` runs."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def _raise_stopped(signum, frame):
    global _LAST_STOP_SIGNAL
    _LAST_STOP_SIGNAL = signum
    raise JobStopped(signum)


def last_stop_signal() -> int | None:
    """The signal that stopped the job (libraries such as Ray Train re-raise a bare KeyboardInterrupt)."""
    return _LAST_STOP_SIGNAL


def install_stop_handler() -> None:
    """SIGINT and SIGTERM -> ``JobStopped``. Only the main thread can install handlers."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _raise_stopped)


def owns_local_cluster() -> bool:
    """True when this process started the Ray cluster it is connected to (so it must stop it)."""
    return _OWNS_LOCAL_CLUSTER


def shutdown_ray() -> None:
    """Stop the local cluster this process started, waiting for its processes; from a joined cluster,
    only disconnect. Safe to call more than once."""
    global _OWNS_LOCAL_CLUSTER
    import ray

    if ray.is_initialized():
        if _OWNS_LOCAL_CLUSTER:
            log.info("stopping the local Ray cluster this job started")
        ray.shutdown(wait_for_processes=_OWNS_LOCAL_CLUSTER)
    _OWNS_LOCAL_CLUSTER = False
    _restore_signal_handlers()


def _restore_signal_handlers() -> None:
    global _HANDLERS_BEFORE_RAY
    if _HANDLERS_BEFORE_RAY is not None and threading.current_thread() is threading.main_thread():
        for signum, handler in _HANDLERS_BEFORE_RAY.items():
            signal.signal(signum, handler)
    _HANDLERS_BEFORE_RAY = None


def init_ray(cfg: RayConfig):
    """Return the initialized ``ray`` module.

    ``auto-local``: inside ``ray job submit`` (RAY_ADDRESS set) or next to a running ``ray start`` cluster,
    join it; otherwise start a private local cluster. ``local`` always starts one; anything else is an address.
    ``cfg.verbose`` sets how much this process and every Ray process of the job log (``logging_setup``); when Ray
    is already initialized (the demo runs several jobs on one connection) the first setting stays.
    """
    global _HANDLERS_BEFORE_RAY
    import ray

    if ray.is_initialized():
        return ray
    if _HANDLERS_BEFORE_RAY is None:
        _HANDLERS_BEFORE_RAY = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    logging_setup.configure(cfg.verbose)  # the process that connects decides, before Ray logs anything
    for k, v in _WORKER_ENV.items():
        os.environ.setdefault(k, v)
    kwargs = init_kwargs(cfg, local=False)
    if cfg.address == "auto-local":
        if os.environ.get("RAY_ADDRESS"):
            ray.init(**kwargs)
        else:
            try:
                ray.init(address="auto", **kwargs)
                log.info("joined the running Ray cluster")
            except (ConnectionError, RuntimeError):
                _start_local(ray, cfg)
    elif cfg.address == "local":
        _start_local(ray, cfg)
    else:
        ray.init(address=cfg.address, **kwargs)
    install_stop_handler()  # after ray.init: Ray's core worker replaced the SIGTERM handler
    return ray


def init_kwargs(cfg: RayConfig, local: bool) -> dict:
    """``ray.init``'s keyword arguments: the log switch (driver level, forwarded worker output, the variable every
    Ray process of the job reads) and the workers' environment; ``local`` for a cluster this job starts."""
    kwargs = logging_setup.ray_init_kwargs(cfg.verbose)
    env = kwargs["runtime_env"]["env_vars"]
    env.update(_WORKER_ENV)
    if local:
        env.update(_LOCAL_CLUSTER_ENV)
    return kwargs


def _start_local(ray, cfg: RayConfig) -> None:
    global _OWNS_LOCAL_CLUSTER
    num_cpus = cfg.num_cpus or max(4, os.cpu_count() or 1)
    ray.init(num_cpus=num_cpus, **init_kwargs(cfg, local=True))
    _OWNS_LOCAL_CLUSTER = True
    session = ray._private.worker._global_node.get_session_dir_path()
    log.info("started a local Ray cluster with %d logical CPUs (session %s); it stops when this job ends",
             num_cpus, session)
