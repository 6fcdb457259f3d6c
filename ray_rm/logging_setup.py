"""How much a job prints. Quiet by default: ray_rm's own progress and results, plus every library's warnings and
errors. ``--verbose`` (the config key ``ray.verbose``) brings back the INFO logs of Ray, Ray Data, Ray Train,
DeepSpeed, transformers and the HTTP client.

What this module is for: one switch, applied the same way in the driver (``configure`` and the ``ray.init``
arguments from ``ray_init_kwargs``) and in the processes Ray starts (``configure_worker``, told through the
``RAY_RM_VERBOSE`` variable of the job's runtime_env). What it must not do: hide warnings or errors (no level
here goes above WARNING), start Ray, or import DeepSpeed (its logger is set by name before it exists: DeepSpeed
keeps a logger's level when it creates it).
"""
from __future__ import annotations

import logging
import os

VERBOSE_ENV = "RAY_RM_VERBOSE"

# Loggers whose INFO lines are library internals (cluster start, operator plans, report bookkeeping, per-request
# HTTP lines): WARNING unless verbose. "ray" is the parent of Ray's own loggers; Ray Data and Train log through
# children of it that carry their own levels.
LIBRARY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.serve", "ray.tune", "DeepSpeed", "torch.distributed",
                   "transformers", "httpx", "httpcore", "filelock", "urllib3")


def library_level(verbose: bool) -> int:
    return logging.INFO if verbose else logging.WARNING


def verbose_from_env() -> bool:
    """The switch as the driver passed it to Ray's processes (quiet when unset)."""
    return os.environ.get(VERBOSE_ENV, "0") == "1"


def deepspeed_log_level() -> str:
    """The ``log_level`` of DeepSpeed's config: DeepSpeed sets its logger (and handler) from it when an engine
    starts, overriding any level set before."""
    return "info" if verbose_from_env() else "warning"


def ray_init_kwargs(verbose: bool) -> dict:
    """The ``ray.init`` arguments that carry the switch: the driver's "ray" logger level, and the variable every
    worker, actor and replica of the job reads in ``configure_worker``. Worker output stays forwarded
    (``log_to_driver``): the training progress line is printed by Ray Train's controller actor."""
    return {"logging_level": library_level(verbose), "log_to_driver": True,
            "runtime_env": {"env_vars": {VERBOSE_ENV: "1" if verbose else "0"}}}


def configure(verbose: bool) -> None:
    """Apply the switch in this process: library loggers at INFO or WARNING, ray_rm's always at INFO."""
    level = library_level(verbose)
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"  # processes started from this one inherit it
    logging.getLogger().setLevel(level)  # third-party loggers without a level of their own follow the root
    logging.getLogger("ray_rm").setLevel(logging.INFO)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    _configure_ray_data(verbose)
    _configure_ray_train(level)
    _configure_transformers(verbose)


def configure_worker() -> None:
    """In a Ray worker, actor or Serve replica: the driver's switch (``RAY_RM_VERBOSE``)."""
    configure(verbose_from_env())


def _configure_ray_data(verbose: bool) -> None:
    """Ray Data's per-operator progress bars are off either way (the jobs draw one row bar of their own);
    its execution-plan lines come back with --verbose."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = verbose


def _configure_ray_train(level: int) -> None:
    try:  # Ray Train V2 logs every report at INFO under a logger named after its file path
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:
        return
    logging.getLogger(train_context.__file__).setLevel(level)


def _configure_transformers(verbose: bool) -> None:
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.set_verbosity(library_level(verbose))
    if verbose:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()  # weight-loading bars, one per model load and process
