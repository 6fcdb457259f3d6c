"""Settings of the eval job (``jobs/eval_rm.py``): the ``eval`` section and the job root.

Declarations only: it must not hold cross-field rules (``ray_rm/validation.py``).

Input files, row limits and the malformed-row policy come from the shared ``data`` section
(``data.eval_files``, ``data.limit``, ``data.rows_per_read_task``, ``data.on_error``); tokenization
rules come from the checkpoint itself, exactly as serving and relabeling read them.
"""
from __future__ import annotations

from dataclasses import dataclass

from ray_rm.config_schema import DataConfig, RayConfig, ScoringOptions, opt, section


@dataclass
class EvalConfig(ScoringOptions):
    num_bins: int = opt(10, "confidence bins of the ECE / reliability diagram (over [0.5, 1])")
    length_buckets: int = opt(4, "quantile buckets of pair length for the length-bias check")
    write_scores: bool = opt(True, "write every example's rewards to output_dir/scores.parquet")
    overlength: str = opt("truncate_left", "sequences over the checkpoint's max_length: truncate_left (keep the "
                                           "end, where the reward is read; every pair is scored and the cut ones "
                                           "counted in the report) | drop (counted)", ("truncate_left", "drop"))


@dataclass
class EvalJobConfig:
    output_dir: str = opt("outputs/eval", "where report.json, report.html, plots and scores.parquet go")
    eval: EvalConfig = section(EvalConfig, "reward model and metric settings")
    data: DataConfig = section(DataConfig, "evaluation data: data.eval_files, data.limit, data.on_error")
    ray: RayConfig = section(RayConfig, "Ray cluster connection")
