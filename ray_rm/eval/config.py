"""Settings of the eval job (``jobs/eval_rm.py``): the ``eval`` section and the job root.

Input files, row limits and the malformed-row policy come from the shared ``data`` section
(``data.eval_files``, ``data.limit``, ``data.rows_per_read_task``, ``data.on_error``); tokenization
rules come from the checkpoint itself, exactly as serving and relabeling read them.
"""
from __future__ import annotations

from dataclasses import dataclass

from ray_rm.config_schema import DataConfig, RayConfig, opt, section


@dataclass
class EvalConfig:
    model_path: str = opt("", "reward model: an exported ray_rm checkpoint or any HF sequence-classification RM")
    num_bins: int = opt(10, "confidence bins of the ECE / reliability diagram (over [0.5, 1])")
    length_buckets: int = opt(4, "quantile buckets of pair length for the length-bias check")
    pack_tokens: int = opt(8192, "token budget of one packed forward pass")
    actors: int = opt(1, "scoring actors (model replicas) in the Ray Data actor pool")
    cpus_per_actor: float = opt(1.0, "CPUs reserved per actor; torch uses this many threads (at least 1)")
    gpus_per_actor: float = opt(-1.0, "GPUs per actor: -1 = 1 when the cluster has GPUs, else 0")
    dtype: str = opt("auto", "auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16")
    attn_implementation: str = opt("auto", "auto | varlen | flash_attention_2 | sdpa | eager")
    write_scores: bool = opt(True, "write every example's rewards to output_dir/scores.parquet")
    progress: bool = opt(True, "show a progress bar (a log line every 10 s when stderr is not a terminal)")


@dataclass
class EvalJobConfig:
    output_dir: str = opt("outputs/eval", "where report.json, report.html, plots and scores.parquet go")
    eval: EvalConfig = section(EvalConfig, "reward model and metric settings")
    data: DataConfig = section(DataConfig, "evaluation data: data.eval_files, data.limit, data.on_error")
    ray: RayConfig = section(RayConfig, "Ray cluster connection")
