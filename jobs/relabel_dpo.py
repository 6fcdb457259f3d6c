# Thin entry point (the docstring is its --help text);
# it must hold no relabel logic (ray_rm/relabel/), no config rules (ray_rm/validation.py).
"""Relabel preference data with a reward model on Ray Data (pairs-from-candidates | rejudge | best-of-n).

  python jobs/relabel_dpo.py relabel.model_path=outputs/demo/hf relabel.input_files=cands.jsonl \
      relabel.mode=pairs-from-candidates relabel.min_margin=0.5 output_dir=outputs/dpo
  ray job submit --working-dir . -- python jobs/relabel_dpo.py --config relabel.yaml

Writes output_dir/data/part-*.parquet and output_dir/summary.json (every input row: written or dropped
by reason). Re-running the same command after an interruption resumes without duplicating rows.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ray_rm.cli import parse_job_config, run_job  # noqa: E402
from ray_rm.relabel.config import RelabelJobConfig  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_job_config(RelabelJobConfig, argv, __doc__)
    from ray_rm.relabel.runner import run_relabel

    summary = run_relabel(cfg)
    shown = {k: v for k, v in summary.items() if k not in ("files", "examples")}
    print(json.dumps(shown, indent=2))
    return summary


if __name__ == "__main__":
    run_job(main)
