"""Quiet by default, --verbose on request: the flag is parsed and documented, and the switch reaches ray.init,
the workers' environment, the library loggers and DeepSpeed's config (no Ray cluster needed)."""
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from ray_rm import logging_setup
from ray_rm.cli import parse_job_config
from ray_rm.config_schema import RayConfig, TrainConfig, TrainJobConfig
from ray_rm.eval.config import EvalJobConfig
from ray_rm.ray_utils import init_kwargs
from ray_rm.relabel.config import RelabelJobConfig
from ray_rm.serve.config import ServeJobConfig

REPO = Path(__file__).resolve().parents[1]
LOGGERS = ("", "ray", "ray.data", "ray.train", "DeepSpeed", "transformers", "httpx", "ray_rm",
           logging_setup.RAY_DATA_PROGRESS_LOGGER)


@pytest.fixture
def restore_logging():
    """Put every logger level, the env switch and Ray Data's context back as they were."""
    from ray.data import DataContext

    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    env = {name: os.environ.get(name) for name in (logging_setup.VERBOSE_ENV, logging_setup.RAY_DATA_LEVEL_ENV)}
    ctx = DataContext.get_current()
    data = (ctx.enable_progress_bars, ctx.print_on_execution_start)
    with warnings.catch_warnings():
        yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    ctx.enable_progress_bars, ctx.print_on_execution_start = data


@pytest.mark.parametrize("cls", [TrainJobConfig, ServeJobConfig, RelabelJobConfig, EvalJobConfig])
def test_verbose_flag_is_parsed_and_documented(cls, capsys):
    assert parse_job_config(cls, [], "job").ray.verbose is False  # quiet by default (the schema's default)
    assert parse_job_config(cls, ["--verbose"], "job").ray.verbose is True
    assert parse_job_config(cls, ["ray.verbose=true"], "job").ray.verbose is True  # the key it stands for
    with pytest.raises(SystemExit):
        parse_job_config(cls, ["--help"], "job")
    text = " ".join(capsys.readouterr().out.split())
    assert "--verbose same as ray.verbose=true: also print the INFO logs of Ray" in text
    assert "ray.verbose bool = False also print the INFO logs of Ray" in text  # the schema's settings list


def test_demo_documents_verbose():
    out = subprocess.run([sys.executable, str(REPO / "jobs" / "demo.py"), "--help"], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), check=True).stdout
    assert "--verbose" in out and "INFO logs of Ray" in " ".join(out.split())


def test_quiet_switch_reaches_ray_init_and_the_workers_environment():
    quiet = init_kwargs(RayConfig(verbose=False), local=True)
    assert quiet["logging_level"] == logging.WARNING and quiet["log_to_driver"] is True
    env = quiet["runtime_env"]["env_vars"]
    assert env[logging_setup.VERBOSE_ENV] == "0" and env["TOKENIZERS_PARALLELISM"] == "false"
    assert env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"  # a local one-node cluster is never preempted
    loud = init_kwargs(RayConfig(verbose=True), local=False)
    assert loud["logging_level"] == logging.INFO and loud["runtime_env"]["env_vars"][logging_setup.VERBOSE_ENV] == "1"
    assert "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in loud["runtime_env"]["env_vars"]  # joined clusters: kept


def test_configure_sets_library_levels_and_deepspeed_config(restore_logging):
    from ray.data import DataContext
    from ray.serve.schema import LoggingConfig as ServeLoggingConfig
    from transformers.utils import logging as hf_logging

    from ray_rm.train.deepspeed_setup import deepspeed_config

    os.environ[logging_setup.VERBOSE_ENV] = "0"
    logging_setup.configure_worker()  # what a worker does with the driver's quiet switch
    for name in ("", "ray", "ray.data", "ray.train", "DeepSpeed", "httpx"):
        assert logging.getLogger(name).level == logging.WARNING, name
    assert logging.getLogger("ray_rm").getEffectiveLevel() == logging.INFO  # ray_rm's own lines stay
    assert hf_logging.get_verbosity() == logging.WARNING  # warnings stay visible, INFO goes
    assert DataContext.get_current().print_on_execution_start is False
    assert deepspeed_config(TrainConfig(), torch.float32)["log_level"] == "warning"
    assert logging_setup.train_log_level() == "WARNING"  # Ray Train's LoggingConfig in the driver's RunConfig
    assert ServeLoggingConfig(**logging_setup.serve_logging_config()).log_level == "WARNING"  # Serve's own schema
    assert logging.getLogger(logging_setup.RAY_DATA_PROGRESS_LOGGER).level == logging.ERROR
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
        warnings.warn("`torch.distributed.all_gather_into_tensor` is deprecated. Please use ...", FutureWarning)
        warnings.warn("something else is deprecated", FutureWarning)  # any other warning stays
        warnings.warn("a real problem", UserWarning)
    assert [str(w.message) for w in seen] == ["something else is deprecated", "a real problem"]

    logging_setup.configure(True)
    assert os.environ[logging_setup.VERBOSE_ENV] == "1"  # processes started from here inherit it
    for name in ("", "ray", "ray.data", "DeepSpeed", "httpx"):
        assert logging.getLogger(name).level == logging.INFO, name
    assert hf_logging.get_verbosity() == logging.INFO
    assert DataContext.get_current().print_on_execution_start is True
    assert deepspeed_config(TrainConfig(), torch.float32)["log_level"] == "info"
    assert logging_setup.train_log_level() == "INFO"
    assert ServeLoggingConfig(**logging_setup.serve_logging_config()).log_level == "INFO"
    assert logging.getLogger("ray_rm").level == logging.DEBUG  # ray_rm's debug notes come back too
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
    assert len(seen) == 1


def test_deepspeed_reads_the_log_level_we_pass(restore_logging):
    """DeepSpeed's own config parser takes the key (the engine then sets its logger from it)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    from ray_rm.train.deepspeed_setup import deepspeed_config

    os.environ[logging_setup.VERBOSE_ENV] = "0"
    cfg = deepspeed_config(TrainConfig(), torch.float32)
    assert DeepSpeedConfig(cfg).log_level == "warning"


def test_only_the_verbose_run_printed_the_library_line(restore_logging, capsys):
    os.environ[logging_setup.VERBOSE_ENV] = "0"
    with logging_setup.library_prints():
        print("quiet op built")
    os.environ[logging_setup.VERBOSE_ENV] = "1"
    with logging_setup.library_prints():
        print("verbose op built")
    assert capsys.readouterr().out == "verbose op built\n"


def test_building_from_a_base_lm_prints_no_load_report_but_warns_about_missing_backbone_weights(
        tiny_decoder_dir, tmp_path, caplog, capfd):
    """transformers' LOAD REPORT table (LM head unused, reward head new: both by design) is not printed once per
    worker; a checkpoint that lacks backbone weights still gets a warning naming them."""
    from safetensors.torch import load_file, save_file

    from ray_rm.config_schema import ModelConfig
    from ray_rm.model.build import build_reward_model

    with caplog.at_level(logging.WARNING, logger="ray_rm.model.build"):
        build_reward_model(ModelConfig(name_or_path=tiny_decoder_dir))
    assert "LOAD REPORT" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # nothing else to warn about either

    broken = tmp_path / "broken"
    shutil.copytree(tiny_decoder_dir, broken)
    weights = load_file(str(broken / "model.safetensors"))
    gone = "model.layers.1.mlp.down_proj.weight"
    del weights[gone]
    save_file(weights, str(broken / "model.safetensors"))
    with caplog.at_level(logging.WARNING, logger="ray_rm.model.build"):
        build_reward_model(ModelConfig(name_or_path=str(broken)))
    assert [r for r in caplog.records if gone in r.getMessage() and "initialised at random" in r.getMessage()]


# A driver as a job runs it: the switch first, then Ray, a Ray Data dataset and Ray Serve's import (each of which
# re-configures its own loggers at INFO), then a line at INFO from each.
_LATE_LIBRARIES = """
import logging, sys
import ray
from ray_rm import logging_setup
logging_setup.configure(sys.argv[1] == "verbose")
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
import ray.data
ray.data.range(3).map(lambda r: r).take_all()
from ray import serve
logging_setup.configure_serve_driver()
logging.getLogger("ray.serve").info("serve driver line")
ray.shutdown()
"""


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_ray_data_and_serve_stay_quiet_after_they_reconfigure_their_loggers(mode):
    env = {k: v for k, v in os.environ.items() if k != logging_setup.RAY_DATA_LEVEL_ENV}
    proc = subprocess.run([sys.executable, "-c", _LATE_LIBRARIES, mode], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env=dict(env, RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO),
                                             RAY_raylet_start_wait_time_s="120"))  # a loaded machine starts slowly
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout + proc.stderr
    for line in ("execution finished", "serve driver line"):
        assert (line in printed) == (mode == "verbose"), (line, printed[-3000:])


def test_a_users_own_ray_data_level_is_kept(restore_logging):
    env = logging_setup.RAY_DATA_LEVEL_ENV
    for users in ("DEBUG", "INFO", "ERROR"):
        os.environ[env] = users
        logging_setup.configure(False)
        assert os.environ[env] == users
    os.environ.pop(env)
    logging_setup.configure(False)
    assert os.environ[env] == "WARNING"
    logging_setup.configure(True)  # verbose: Ray Data's own levels again
    assert env not in os.environ
