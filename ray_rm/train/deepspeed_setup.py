"""DeepSpeed engine setup for one worker: precision, ZeRO stage, optimizer groups, warmup + cosine schedule.

What this module is for: turning the train config into one ``deepspeed.initialize`` call. What it must not
do: validate settings (``ray_rm/validation.py`` refused impossible ones before any worker started), run
steps, or scale losses (``train/loss_scale.py``).

Precision rules (``model.dtype``):
  * bfloat16: DeepSpeed bf16. The module holds bf16 copies of every parameter; ZeRO keeps the fp32 master
    weights (so mixed precision always runs at ZeRO stage >= 1, whose masters the export reads). The value
    head computes in fp32 from its copy (``RewardModel._head``), so rewards never pass through bf16.
  * float16: DeepSpeed fp16 with dynamic loss scaling (overflowing steps are skipped and the scale lowered).
  * float32: plain fp32.
The optimizer is torch's AdamW, or DeepSpeed's CPU Adam (a C++ extension JIT-built with the local
compiler on first use) when optimizer states are offloaded to the CPU; if that build fails, the reason is
logged and torch's AdamW steps instead (``zero_force_ds_cpu_optimizer`` is off so ZeRO accepts it).
"""
from __future__ import annotations

import logging
import math
from dataclasses import replace

import torch

from ray_rm.config_schema import TrainConfig
from ray_rm.logging_setup import deepspeed_log_level, library_prints

log = logging.getLogger(__name__)


def lr_lambda(total_steps: int, warmup_ratio: float, min_lr_ratio: float):
    warmup = int(round(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return min_lr_ratio + (1.0 - min_lr_ratio) * cosine

    return factor


def deepspeed_config(tc: TrainConfig, dtype: torch.dtype) -> dict:
    """DeepSpeed's config dict for settings ``ray_rm/validation.py`` accepted."""
    zero: dict = {"stage": tc.zero_stage}
    if tc.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if tc.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if tc.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": tc.micro_steps_per_update,
        "gradient_clipping": float(tc.clip_grad),
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == torch.bfloat16},
        # loss_scale 0 = dynamic: start at 2^16, halve on overflow (that step is skipped), double after 1000 clean steps
        "fp16": {"enabled": dtype == torch.float16, "loss_scale": 0, "initial_scale_power": 16,
                 "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
        "log_level": deepspeed_log_level(),  # DeepSpeed sets its logger from this when the engine starts
    }


BETAS, EPS = (0.9, 0.95), 1e-8


def make_optimizer(model, tc: TrainConfig) -> torch.optim.Optimizer:
    head = [p for p in model.head.parameters() if p.requires_grad]
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": body, "lr": tc.lr, "weight_decay": tc.weight_decay},
              {"params": head, "lr": tc.head_lr or tc.lr, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if tc.offload_optimizer:
        cpu_adam = _cpu_adam(groups)
        if cpu_adam is not None:
            return cpu_adam
    return torch.optim.AdamW(groups, betas=BETAS, eps=EPS)


def _cpu_adam(groups: list):
    """DeepSpeed's vectorized CPU AdamW for offloaded optimizer states, or None (reason logged) if it cannot build."""
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, betas=BETAS, eps=EPS, adamw_mode=True)
    except Exception as exc:  # the JIT build needs a C++ compiler and Python headers
        log.warning("DeepSpeedCPUAdam is unavailable (%s: %s); offloaded optimizer states step with torch AdamW "
                    "(several times slower)", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return None


def effective_zero_stage(tc: TrainConfig, world_size: int, dtype: torch.dtype = torch.float32) -> int:
    """The ZeRO stage to run.

    Mixed precision needs stage >= 1: ZeRO's optimizer holds the fp32 master weights that the export reads
    (stage 0 would wrap them in DeepSpeed's fp16 optimizer, whose masters are not addressable per parameter).
    In fp32, one worker without offload runs stage 0: sharding over one rank only adds copies (measured: the
    ZeRO-2 optimizer step took 2.6 s vs 0.3 s at stage 0 for SmolLM2 on CPU)."""
    if dtype != torch.float32:
        return max(1, tc.zero_stage)
    if world_size == 1 and not (tc.offload_optimizer or tc.offload_params):
        return 0
    return tc.zero_stage


def initialize(model, tc: TrainConfig, total_steps: int, dtype: torch.dtype, world_size: int):
    import deepspeed

    stage = effective_zero_stage(tc, world_size, dtype)
    if stage != tc.zero_stage:
        log.info("train.zero_stage=%d runs as ZeRO-%d (%s)", tc.zero_stage, stage,
                 "fp32 masters for mixed precision" if stage > tc.zero_stage else "one worker: sharding only adds copies")
    optimizer = make_optimizer(model, tc)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, tc.warmup_ratio,
                                                                         tc.min_lr_ratio))
    with library_prints():  # "... built successfully" per worker, unless --verbose
        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler,
            config=deepspeed_config(replace(tc, zero_stage=stage), dtype), dist_init_required=False)
    if world_size == 1 and stage == 0:
        engine.enable_backward_allreduce = False  # nothing to average: skip flattening every gradient
        # (ZeRO >= 1 moves gradients into its fp32 partitions in that step: it must run there)
    return engine, scheduler
