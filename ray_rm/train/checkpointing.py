"""DeepSpeed checkpoints through Ray Train, the resumable train state, and the final HF export.

What this module is for: saving and restoring a run so that a re-run continues at the exact next row, and
writing the export from the trained weights. What it must not do: decide when to checkpoint (the train
loop does) or report anything but the checkpoint it saves (``save`` calls ``ray.train.report``: a barrier).

Every rank writes its ZeRO shards into a local folder and reports it with the same
``checkpoint_dir_name``; Ray Train merges the folders in storage. Rank 0 adds ``train_state.json``
(step, epoch, best eval loss, counters, the loss and accuracy curves so far), so a re-run with the same
run name continues at the exact next row. Parameters are checked for NaN/inf before any save: a corrupted model is never checkpointed.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from ray_rm.train.collectives import all_reduce_floats

STATE_FILE = "train_state.json"
TAG = "ds"


@dataclass
class TrainState:
    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best_eval_loss: float = float("inf")
    evals_without_improvement: int = 0
    skipped_micro_batches: int = 0
    pairs_seen: int = 0
    tokens_seen: int = 0
    done: bool = False
    last_eval: dict = field(default_factory=dict)
    last_train: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)  # loss/accuracy per step and per eval (train/curves.py)


def params_finite(engine) -> bool:
    """True on every rank when no rank holds a NaN/inf parameter (ZeRO-3: each checks its own partition)."""
    checks = [torch.isfinite(p.data).all() for p in engine.module.parameters() if p.data.numel()]
    local = bool(torch.stack(checks).all()) if checks else True
    return all_reduce_floats([1.0 if local else 0.0], op="min")[0] == 1.0


def save(engine, state: TrainState, metrics: dict, exclude_frozen: bool, extra_files: dict | None = None) -> None:
    """Checkpoint all ranks' DeepSpeed state + train state, reported to Ray Train (a barrier)."""
    import ray.train

    if not params_finite(engine):
        raise RuntimeError("model parameters contain NaN/inf; refusing to write a corrupted checkpoint")
    with tempfile.TemporaryDirectory(prefix="ray_rm_ckpt_") as tmp:
        engine.save_checkpoint(tmp, tag=TAG, exclude_frozen_parameters=exclude_frozen)
        if dist.get_rank() == 0:
            Path(tmp, STATE_FILE).write_text(json.dumps(asdict(state)))
            for rel, write in (extra_files or {}).items():
                write(Path(tmp) / rel)
        name = "final" if state.done else f"step_{state.global_step:07d}"
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)


def restore(engine, exclude_frozen: bool) -> TrainState | None:
    """Load the latest Ray Train checkpoint into the engine; None when starting fresh."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as path:
        engine.load_checkpoint(path, tag=TAG, load_module_strict=not exclude_frozen,
                               load_optimizer_states=True, load_lr_scheduler_states=True)
        raw = json.loads(Path(path, STATE_FILE).read_text())
    return TrainState(**raw)


def gathered_state_dict(engine, trainable_only: bool) -> dict | None:
    """The model's (trainable) weights on rank 0, in full precision; None on other ranks.

    Trained parameters come from ZeRO's fp32 master weights (under bf16/fp16 the module only holds a
    16-bit copy), gathered one parameter at a time so no rank ever holds the whole model twice; every
    rank must call this (the gathers are collectives). With LoRA/QLoRA only adapters and head are
    taken: the frozen base is the pretrained one, reloaded at export (so QLoRA adapters merge into an
    unquantized backbone).
    """
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    module = engine.module
    zero3 = engine.zero_optimization_stage() == 3
    rank0 = dist.get_rank() == 0
    out: dict = {}
    for name, p in module.named_parameters():
        if trainable_only and not p.requires_grad:
            continue
        value = safe_get_full_fp32_param(p) if p.requires_grad else None  # collective under ZeRO
        if value is None:  # fp32 training without ZeRO, or a frozen parameter: the module holds the weights
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None) if zero3 else nullcontext():
                value = p.detach().clone() if rank0 else None
        if rank0:
            out[name] = value.detach().to("cpu", copy=True)
    if rank0 and not trainable_only:  # persistent buffers (e.g. position ids) complete the state dict
        for key, value in module.state_dict().items():
            out.setdefault(key, value.detach().to("cpu", copy=True))
    return out if rank0 else None


def export_config(model_cfg, lora_cfg):
    """The model settings for rebuilding a trained model on the CPU to export it: fp32, plain CPU attention,
    no 4-bit loading. Only the trained weights and the architecture carry over; the training device's kernel
    (flash_attention_2 / torch_varlen), dtype and quantization do not, as the export runs where they cannot."""
    from dataclasses import replace

    return (replace(model_cfg, dtype="float32", gradient_checkpointing=False, attn_implementation="auto"),
            replace(lora_cfg, quantize_4bit=False))


def export_final(state_dict: dict, model_cfg, lora_cfg, tokenizer_path: str, out_dir: str, meta: dict) -> str:
    """Rank 0: rebuild the model on CPU from its config, load the trained weights, export HF."""
    from ray_rm.model.build import build_reward_model
    from ray_rm.model.export import export_hf

    cpu_model_cfg, cpu_lora_cfg = export_config(model_cfg, lora_cfg)
    model = build_reward_model(cpu_model_cfg, cpu_lora_cfg, device="cpu")
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if unexpected or trainable & set(missing):
        raise RuntimeError(f"export: trained weights do not match the model (missing "
                           f"{sorted(trainable & set(missing))[:5]}, unexpected {unexpected[:5]})")
    os.makedirs(out_dir, exist_ok=True)
    return str(export_hf(model, tokenizer_path, out_dir, meta))
