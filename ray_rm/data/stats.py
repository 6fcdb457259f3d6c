"""What a data set looks like to the reward model, before anyone spends a GPU hour on it.

It must not start Ray or load a model, and must not re-implement the training data path (it calls it).

``data_stats`` runs the training data path without Ray (plan read tasks -> ``process_task`` -> pack
each task's groups, exactly like ``direct_packed_rows``) and reports:
  * rows read / kept / dropped by reason (the ``DropReport``);
  * sequence lengths in tokens (every response's full sequence: prompt + response), p50/p90/p99/max;
  * the real-token fraction of packed rows at ``data.pack_tokens`` vs. padded batches of 8 pairs (each
    sequence padded to the batch's longest, no prompt sharing: the usual padded reward-model batch);
  * the shared-prefix share of sequence tokens and the tokens prompt sharing saves.
Order matters for both fractions; with a seed the groups are shuffled the way training shuffles them,
without one they stay in file order. Percentiles are numpy's (linear interpolation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ray_rm.config_schema import DataConfig, section
from ray_rm.data.packer import fill_fraction, pack_groups, padded_fraction
from ray_rm.data.prepare import ordered_tasks, process_task
from ray_rm.data.quality import DropReport

PAIRS_PER_PADDED_BATCH = 8


@dataclass
class InspectDataConfig:
    """The settings ``jobs/inspect_data.py`` accepts: the data section of a training config."""

    data: DataConfig = section(DataConfig, "preference data, tokenization and packing")


def _ratio(num: float, den: float):
    return num / den if den else None


def _finite_or_none(x: float):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def data_stats(files: list[str], data_cfg: DataConfig, encoder, *, share_prompt: bool | None = None,
               seed: int | None = None, pairs_per_batch: int = PAIRS_PER_PADDED_BATCH) -> dict:
    """Figures for ``files`` tokenized by ``encoder`` (a ``SequenceEncoder``); JSON-safe (None for no data)."""
    share = data_cfg.share_prompt if share_prompt is None else share_prompt
    report, groups, rows = DropReport(), [], []
    for task in ordered_tasks(files, data_cfg, seed):
        task_groups, task_report = process_task(task, encoder, data_cfg, share, seed)
        report.merge(task_report)
        groups.extend(task_groups)
        rows.extend(pack_groups(task_groups, data_cfg.pack_tokens, share, data_cfg.pack_window))

    lengths = np.array([len(s) for g in groups for s in g.sequences], dtype=np.int64)
    seq_tokens = int(lengths.sum())
    prefix_tokens = sum(g.shared_len * len(g.sequences) for g in groups)
    saved = sum(g.shared_len * (len(g.sequences) - 1) for g in groups)
    packed_tokens = sum(r.num_tokens for r in rows)
    if len(lengths):
        p50, p90, p99 = (float(v) for v in np.percentile(lengths, [50, 90, 99]))
        length = {"p50": p50, "p90": p90, "p99": p99, "max": int(lengths.max()), "mean": float(lengths.mean())}
    else:
        length = {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    return {
        "files": list(files),
        "rows_read": report.rows_read,
        "rows_kept": report.rows_kept,
        "rows_dropped": report.rows_dropped,
        "dropped": dict(sorted(report.dropped.items())),
        "drop_examples": {reason: msgs[0] for reason, msgs in sorted(report.examples.items()) if msgs},
        "groups": len(groups),
        "sequences": int(len(lengths)),
        "sequence_tokens": seq_tokens,
        "length": length,
        "pack_tokens": data_cfg.pack_tokens,
        "share_prompt": share,
        "packed_rows": len(rows),
        "packed_tokens": packed_tokens,
        "packed_real_fraction": _finite_or_none(fill_fraction(rows, data_cfg.pack_tokens)),
        "padded_pairs_per_batch": pairs_per_batch,
        "padded_real_fraction": _finite_or_none(padded_fraction(groups, pairs_per_batch)),
        "shared_prefix_share": _ratio(prefix_tokens, seq_tokens),
        "tokens_saved_by_sharing": saved,
        "tokens_saved_fraction": _ratio(saved, seq_tokens),
        "seed": seed,
    }


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_stats(stats: dict) -> str:
    """The human-readable table printed without ``--json``."""
    length = stats["length"]
    lines = [
        f"data                      {', '.join(stats['files'])}",
        f"rows read                 {stats['rows_read']}",
        f"rows kept                 {stats['rows_kept']}",
        f"rows dropped              {stats['rows_dropped']}",
    ]
    for reason, n in stats["dropped"].items():
        example = stats["drop_examples"].get(reason, "")
        lines.append(f"  {reason:<23} {n:<7} e.g. {example[:100]}")
    lines += [
        f"sequences                 {stats['sequences']} ({stats['sequence_tokens']} tokens)",
        "sequence length (tokens)  p50 {} | p90 {} | p99 {} | max {} | mean {}".format(
            *(_fmt(length[k], 1) for k in ("p50", "p90", "p99", "max", "mean"))),
        f"real-token fraction       packed {_fmt(stats['packed_real_fraction'])} "
        f"({stats['packed_rows']} rows of {stats['pack_tokens']}, share_prompt={stats['share_prompt']}) | "
        f"padded {_fmt(stats['padded_real_fraction'])} (batches of {stats['padded_pairs_per_batch']} pairs)",
        f"shared-prefix share       {_fmt(stats['shared_prefix_share'])} of sequence tokens",
        f"saved by prompt sharing   {stats['tokens_saved_by_sharing']} tokens "
        f"({_fmt(stats['tokens_saved_fraction'])} of sequence tokens)",
    ]
    return "\n".join(lines)
