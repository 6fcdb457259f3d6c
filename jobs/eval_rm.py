# Thin entry point (the docstring is its --help text);
# it must hold no eval logic (ray_rm/eval/), no config rules (ray_rm/validation.py).
"""Evaluate a reward model on preference data or k-way rankings, on Ray Data.

  python jobs/eval_rm.py eval.model_path=outputs/demo/hf data.eval_files=test.jsonl output_dir=outputs/eval
  ray job submit --working-dir . -- python jobs/eval_rm.py --config eval.yaml

Writes output_dir/report.json (top-level ``accuracy``; ties count as wrong), report.html with the
plots, the PNGs and scores.parquet. Rows with a ``subset`` field get a RewardBench-style section table;
RewardBench 2 rows ({id, prompt, chosen: [...], rejected: [...], subset}) get its best-of-n and Ties scores
under report.json's ``rewardbench2`` (``overall``, ``sections``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ray_rm.cli import parse_job_config, run_job  # noqa: E402
from ray_rm.eval.config import EvalJobConfig  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_job_config(EvalJobConfig, argv, __doc__)
    from ray_rm.eval.runner import run_eval

    report = run_eval(cfg)
    m = report["metrics"]
    keys = ("num_examples", "num_pairs", "accuracy", "mean_margin", "ece", "temperature", "ece_temperature_scaled")
    print(json.dumps({**{k: m[k] for k in keys}, "ranking": m["ranking"],
                      "rewardbench": (m["rewardbench"] or {}).get("sections"),
                      "rewardbench2": report["rewardbench2"],
                      "report": str(Path(cfg.output_dir) / "report.html")}, indent=2))
    return report


if __name__ == "__main__":
    run_job(main)
