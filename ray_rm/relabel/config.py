"""Settings of the relabel job (``jobs/relabel_dpo.py``): the ``relabel`` section and the job root.

Declarations only: it must not hold cross-field rules (``ray_rm/validation.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

from ray_rm.config_schema import RayConfig, ScoringOptions, opt, section

MODES = ("pairs-from-candidates", "rejudge", "best-of-n", "step-filter")
PAIR_STRATEGIES = ("best_vs_worst", "best_vs_random", "all_pairs")
DISAGREE_POLICIES = ("keep", "swap", "drop")


@dataclass
class RelabelConfig(ScoringOptions):
    mode: str = opt("pairs-from-candidates", "pairs-from-candidates ({prompt, responses} -> DPO pairs) | rejudge "
                                             "({prompt?, chosen, rejected} -> scores + agree) | best-of-n | step-filter "
                                             "(process reward models: stepwise rows, each solution cut at its "
                                             "first step below step_threshold)", MODES)
    input_files: list = opt([], "input rows: JSONL / JSON / Parquet files, folders, save_to_disk folders, hf://",
                            local_path=True)
    step_aggregate: str = opt("min", "process reward models, best-of-n: how step rewards rank solutions: min | prod "
                                     "| last | mean of step probabilities", ("min", "prod", "last", "mean"))
    step_threshold: float = opt(0.5, "process reward models, step-filter: cut each solution before its first step "
                                     "whose probability is below this")
    pair_strategy: str = opt("best_vs_worst", "pairs-from-candidates: best_vs_worst | best_vs_random | all_pairs "
                                              "(every ordered pair whose margin >= min_margin)", PAIR_STRATEGIES)
    min_margin: float = opt(0.0, "pairs whose score margin is below this are dropped and counted (ties always are, "
                                 "except rejudge with disagree=keep)")
    disagree: str = opt("keep", "rejudge: pairs the RM disagrees with: keep (agree=false) | swap | drop",
                        DISAGREE_POLICIES)
    normalize: bool = opt(False, "write (reward - reward_mean) / reward_std from the checkpoint instead of raw "
                                 "rewards; min_margin is in the written units")
    seed: int = opt(0, "seed of best_vs_random (the pick depends only on seed and row id, so reruns agree)")
    on_error: str = opt("drop", "malformed rows: drop (counted in summary.json) | raise (stop with file/row/field)",
                        ("drop", "raise"))
    write_jsonl: bool = opt(False, "also write each part as JSON Lines beside the Parquet file")
    overwrite: bool = opt(False, "start over in a non-empty output_dir instead of resuming it")
    rows_per_task: int = opt(256, "input rows per task: the unit of scheduling, output files and resume")
    limit: int = opt(0, "use only the first N rows of each source (0 = all)")
    debug_kill_after_tasks: int = opt(0, "testing only: SIGKILL the driver after N tasks finish in this run, "
                                         "to exercise resume after a crash (0 = off)")


@dataclass
class RelabelJobConfig:
    output_dir: str = opt("outputs/relabel", "where data/part-*.parquet, summary.json and resume state go")
    relabel: RelabelConfig = section(RelabelConfig, "reward model, mode and selection rules")
    ray: RayConfig = section(RayConfig, "Ray cluster connection")
