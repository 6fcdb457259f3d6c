"""How much a job prints. Quiet by default: ray_rm's own progress and results, plus every library's warnings and
errors. ``--verbose`` (the config key ``ray.verbose``) brings back the INFO logs of Ray, Ray Data, Ray Train,
DeepSpeed, transformers and the HTTP client, and ray_rm's own debug notes.

What this module is for: one switch, applied the same way in the driver (``configure``, the ``ray.init``
arguments from ``ray_init_kwargs``, Ray Train's and Ray Serve's logging configs) and in the processes Ray starts
(``configure_worker``, told through the ``RAY_RM_VERBOSE`` variable of the job's runtime_env; DeepSpeed's config
``log_level``). What it must not do: hide a warning or error a user can act on, start Ray, or import DeepSpeed.
The only things quiet mode drops above INFO are listed here by name: Ray Data's notice that its progress bars are
off (ray_rm turns them off on purpose and draws its own), deprecation warnings one library raises about another's
use of it (``LIBRARY_DEPRECATIONS``), and DeepSpeed's bare ``print`` lines while its engine starts.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings

VERBOSE_ENV = "RAY_RM_VERBOSE"
# Ray Data re-applies its logging YAML (its loggers at INFO) each time a dataset starts executing, after any level
# set here; only this variable outranks the YAML ("Dataset ... execution finished" lines otherwise).
RAY_DATA_LEVEL_ENV = "RAY_DATA_LOG_LEVEL"
SERVE_LOGGER = "ray.serve"

# Loggers whose INFO lines are library internals (cluster start, operator plans, report bookkeeping, per-request
# HTTP lines): WARNING unless verbose. "ray" is the parent of Ray's own loggers; Ray Data and Train log through
# children of it that carry their own levels.
LIBRARY_LOGGERS = ("ray", "ray.data", "ray.train", SERVE_LOGGER, "ray.tune", "DeepSpeed", "torch.distributed",
                   "transformers", "httpx", "httpcore", "filelock", "urllib3")
# Its only lines: "Progress bars disabled. To enable, set ...", logged at WARNING because ray_rm turned them off.
RAY_DATA_PROGRESS_LOGGER = "ray.data._internal.progress"
# Deprecations one library raises about another's use of it: nothing a ray_rm user can change (message start,
# category). Only for processes that run ``configure``: in Ray's own actors Ray re-enables its deprecation
# warnings when it is imported, so a PYTHONWARNINGS filter would not hold there.
LIBRARY_DEPRECATIONS = (("`is_gradient_checkpointing` is deprecated", FutureWarning),  # peft -> transformers 5
                        ("`torch.distributed.all_gather_into_tensor` is deprecated", FutureWarning))  # DeepSpeed


def library_level(verbose: bool) -> int:
    return logging.INFO if verbose else logging.WARNING


def verbose_from_env() -> bool:
    """The switch as the driver passed it to Ray's processes (quiet when unset)."""
    return os.environ.get(VERBOSE_ENV, "0") == "1"


def deepspeed_log_level() -> str:
    """The ``log_level`` of DeepSpeed's config: DeepSpeed sets its logger (and handler) from it when an engine
    starts, overriding any level set before."""
    return "info" if verbose_from_env() else "warning"


def train_log_level() -> str:
    """Ray Train's ``LoggingConfig(log_level=...)``: its controller and workers configure their own ``ray.train``
    console logging from it (resource requests, worker-group start, process-group setup)."""
    return "INFO" if verbose_from_env() else "WARNING"


def serve_logging_config() -> dict:
    """Ray Serve's ``logging_config`` for its controller, proxies and replicas: their INFO lines (replica
    starts, endpoint updates, one access-log line per request) only with --verbose."""
    return {"log_level": "INFO" if verbose_from_env() else "WARNING"}


def ray_init_kwargs(verbose: bool) -> dict:
    """The ``ray.init`` arguments that carry the switch: the driver's "ray" logger level, and the variable every
    worker, actor and replica of the job starts with. Worker output stays forwarded (``log_to_driver``): the
    training progress line is printed by Ray Train's controller actor."""
    env = {VERBOSE_ENV: "1" if verbose else "0"}
    return {"logging_level": library_level(verbose), "log_to_driver": True, "runtime_env": {"env_vars": env}}


def configure(verbose: bool) -> None:
    """Apply the switch in this process: library loggers at INFO or WARNING, ray_rm's at INFO (DEBUG if verbose)."""
    level = library_level(verbose)
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"  # processes started from this one inherit it
    _configure_ray_data(verbose)  # first: importing ray.data sets its loggers' levels, which the loop below overrides
    logging.getLogger().setLevel(level)  # third-party loggers without a level of their own follow the root
    logging.getLogger("ray_rm").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    logging.getLogger(RAY_DATA_PROGRESS_LOGGER).setLevel(logging.INFO if verbose else logging.ERROR)
    for message, category in LIBRARY_DEPRECATIONS:
        if verbose:
            warnings.filterwarnings("default", message=message, category=category)
        else:
            warnings.filterwarnings("ignore", message=message, category=category)
    _configure_ray_train(level)
    _configure_transformers(verbose)


def configure_worker() -> None:
    """In a Ray worker, actor or Serve replica: the driver's switch (``RAY_RM_VERBOSE``)."""
    configure(verbose_from_env())


@contextlib.contextmanager
def library_prints():
    """Around a library call that reports with bare ``print`` (DeepSpeed: "... built successfully" per worker):
    swallowed when quiet. Loggers keep their own stream handles, so warnings logged inside still show."""
    if verbose_from_env():
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _configure_ray_data(verbose: bool) -> None:
    """Ray Data's per-operator progress bars are off either way (the jobs draw one row bar of their own);
    its execution-plan lines come back with --verbose. The level variable is set before ray.data is imported: its
    import, like each dataset's execution, applies Ray Data's own logging config, which only that variable outranks."""
    current = os.environ.get(RAY_DATA_LEVEL_ENV)
    if current is None or current.upper() == "WARNING":  # unset, or quiet mode's own: a user's other level stays
        if verbose:
            os.environ.pop(RAY_DATA_LEVEL_ENV, None)  # Ray Data's own levels: DEBUG to its log file, INFO on screen
        else:
            os.environ[RAY_DATA_LEVEL_ENV] = "WARNING"
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = verbose


def configure_serve_driver() -> None:
    """Importing ``ray.serve`` gives its driver-side logger INFO and a handler of its own ("Started Serve",
    "Deleting app"), whatever was set before: called right after that import, so the switch holds there too."""
    logging.getLogger(SERVE_LOGGER).setLevel(library_level(verbose_from_env()))


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
