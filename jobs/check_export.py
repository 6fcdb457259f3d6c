# Thin entry point (the docstring is its --help text); it must hold no checking logic (ray_rm/model/export_check.py).
"""Check that an exported reward model gives ray_rm's reward to every consumer: ``python jobs/check_export.py PATH``.

Scores built-in examples (plain text, prompt + response, hh-style text, chat messages, a text ending in
EOS) the way plain transformers, TRL's reward-model path and verl -> vLLM /classify tokenize them,
with right and left padding and batch sizes 1 and N, and compares with ray_rm's own scorer (fp32).
Exits 0 when every reward agrees within 1e-4, else 2 naming each check, item and difference.
``--data FILE`` adds the first rows of a preference file (tokenized the way ray_rm scores them).
Training runs the same check on training examples at the end of every job (summary.json export_check).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ray_rm.cli import run_job  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="an exported checkpoint folder (output_dir/hf of a training job)")
    parser.add_argument("--data", nargs="*", default=[], metavar="FILE", help="preference files to take examples from")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    from ray_rm.config_schema import DataConfig
    from ray_rm.errors import UserError
    from ray_rm.model.export_check import builtin_items, check_export, items_from_files, require_passed

    if not (Path(args.path) / "config.json").is_file():
        raise UserError(f"'{args.path}' is not a checkpoint folder (no config.json)")
    items = builtin_items(AutoTokenizer.from_pretrained(args.path))
    if args.data:
        items = items_from_files(args.data, DataConfig()) + items
    report = check_export(args.path, items)
    if args.json or report.passed:  # a failure is printed once, as the job's error
        print(json.dumps(report.to_dict(), indent=2) if args.json else report.format(), flush=True)
    require_passed(report)
    return report.to_dict()


if __name__ == "__main__":
    run_job(main)
