# Thin entry point (the docstring is its --help text); it must hold no data logic (ray_rm/data/stats.py), no Ray.
"""Inspect preference data before training: drops by reason, token lengths, packing vs padding, prompt sharing.

  python jobs/inspect_data.py --data train.jsonl --tokenizer smollm2-135m-instruct
  python jobs/inspect_data.py --data a.jsonl b.parquet --tokenizer path/to/model --json data.pack_tokens=8192

Runs locally without Ray, with the same reading, filtering, tokenization and packing as training
(the figures are computed by ray_rm.data.stats).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ray_rm.cli import parse_job_args, run_job  # noqa: E402
from ray_rm.data.stats import InspectDataConfig  # noqa: E402


def _options(parser) -> None:
    parser.add_argument("--data", nargs="+", metavar="FILE",
                        help="files, folders, save_to_disk folders or hf:// names (default: data.train_files)")
    parser.add_argument("--tokenizer", required=True,
                        help="a model/tokenizer directory, a hub id, or the built-in 'smollm2-135m-instruct'")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--seed", type=int, default=None,
                        help="shuffle as training does with this seed (default: file order)")
    parser.add_argument("--encoder", action="store_true",
                        help="the tokenizer is an encoder's: no prompt sharing")


def main(argv: list[str] | None = None) -> dict:
    cfg, args = parse_job_args(InspectDataConfig, argv, __doc__, add_arguments=_options)
    from ray_rm.data.prepare import make_encoder, resolve_max_length
    from ray_rm.data.sources import expand_sources
    from ray_rm.data.stats import data_stats, format_stats
    from ray_rm.validation import validate

    validate(cfg)
    files = args.data or cfg.data.train_files
    expand_sources(files)  # a mistyped path fails before the tokenizer loads
    encoder = make_encoder(args.tokenizer, cfg.data)
    data_cfg = resolve_max_length(cfg.data, args.tokenizer)
    stats = data_stats(files, data_cfg, encoder, share_prompt=cfg.data.share_prompt and not args.encoder,
                       seed=args.seed)
    stats["tokenizer"] = args.tokenizer
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return stats


if __name__ == "__main__":
    run_job(main)
