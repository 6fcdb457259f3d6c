# Thin entry point (the docstring is its --help text);
# it must hold no server logic (ray_rm/serve/), no config rules (ray_rm/validation.py).
"""Serve a reward model over HTTP (and to in-cluster callers) with Ray Serve until interrupted.

    python jobs/serve_rm.py serve.model_path=outputs/demo/hf serve.port=8000
    python jobs/serve_rm.py --config my_serve.yaml serve.num_replicas=2  (YAML: serve: {...}, ray: {...})

Binds 127.0.0.1 unless serve.host says otherwise; set serve.auth_token (or $RAY_RM_SERVE_TOKEN) before
exposing it. SIGINT/SIGTERM drain in-flight requests and shut down cleanly. For clusters, deploy
cluster/serve_rm.yaml with `serve deploy` instead.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ray_rm.cli import parse_job_config, run_job  # noqa: E402
from ray_rm.serve.app import run_server  # noqa: E402
from ray_rm.serve.config import ServeJobConfig  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    cfg = parse_job_config(ServeJobConfig, argv, "Serve a reward model with Ray Serve (POST /v1/score, "
                                                 "POST /get_reward for OpenRLHF, GET /healthz, GET /v1/models).")
    run_server(cfg)


if __name__ == "__main__":
    run_job(main, sys.argv[1:])
