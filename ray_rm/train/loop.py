"""The training recipe each Ray Train worker runs, top to bottom: setup -> data stream -> train loop with eval,
checkpoint and early stop -> final eval, export and final checkpoint.

What this module is for: the order of things, as plain calls to small named helpers (model building in
``model/``, DeepSpeed in ``deepspeed_setup``, the rows in ``data_feed``, one step in ``step``, checkpoints
in ``checkpointing``, metrics in ``metrics``). What it must not do: hold the logic of any of those, or
let ranks diverge: ``ray.train.report`` is a barrier, so every rank calls it the same number of times.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from functools import partial

import torch

from ray_rm.config import from_dict
from ray_rm.config_schema import TrainJobConfig
from ray_rm.losses import LossSettings
from ray_rm.train import checkpointing, curves
from ray_rm.train.checkpointing import TrainState
from ray_rm.train.collectives import barrier
from ray_rm.train.data_feed import WorkerFeed
from ray_rm.train.metrics import ConsumedIds, MetricsWriter, step_metrics
from ray_rm.train.step import StepContext, evaluate, train_step

log = logging.getLogger(__name__)
EVAL_KEYS = ("loss", "accuracy", "chosen_rewards", "rejected_rewards", "reward_margin")


def train_loop_per_worker(loop_config: dict) -> None:
    # ---- setup: this rank, its device, the model under DeepSpeed, the state to resume from
    cfg: TrainJobConfig = from_dict(TrainJobConfig, loop_config["config"])
    tc = cfg.train
    rank = setup_worker(tc)
    ctx = build_step_context(cfg, rank, loop_config)
    state = checkpointing.restore(ctx.engine, exclude_frozen=tc.lora.r > 0) or TrainState()
    if state.global_step:
        log.info("rank %d resumed at step %d (epoch %d, step %d of the epoch)", rank.world_rank, state.global_step,
                 state.epoch, state.step_in_epoch)
    writer = MetricsWriter(cfg.output_dir if rank.world_rank == 0 else None, tc.tensorboard, state.curves)
    consumed = ConsumedIds(cfg.output_dir, rank.world_rank, tc.record_pair_ids)

    # ---- the data stream: this rank's packed rows, step by step
    feed = WorkerFeed.from_ray_train(loop_config, tc, rank.dp_size, rank.dp_rank)
    if state.global_step == 0 and not state.done and tc.eval_every and feed.has_eval:
        report_baseline_eval(ctx, feed, writer)

    # ---- the loop: one optimizer step per iteration; eval, checkpoint and early stop on schedule.
    # The run ends after train.max_steps steps, or (max_steps = 0) after the last step of the last epoch:
    # the feed streams, so it says which step ends an epoch (total_steps only shapes the LR schedule).
    stop = state.done
    while not stop and (state.global_step < tc.max_steps if tc.max_steps else state.epoch < tc.num_epochs):
        for step_in_epoch, rows, last_in_epoch in feed.steps(state.epoch, state.step_in_epoch):
            metrics = run_step(ctx, rows, state, step_in_epoch, tc, consumed)
            if (state.global_step >= tc.max_steps if tc.max_steps
                    else last_in_epoch and state.epoch + 1 >= tc.num_epochs):
                writer.write(metrics, state.global_step)
                stop = True  # the final checkpoint below reports this step
                break
            if tc.eval_every and feed.has_eval and state.global_step % tc.eval_every == 0:
                stop = record_eval(state, evaluate(ctx, feed.eval_rows()), metrics, tc.early_stopping_patience)
            writer.write(metrics, state.global_step)
            # Every rank reaches this point at the same step, and every branch below reports exactly once
            # (checkpointing.save reports the checkpoint): ray.train.report is a barrier across ranks.
            if tc.checkpoint_every and state.global_step % tc.checkpoint_every == 0:
                checkpointing.save(ctx.engine, state, metrics, exclude_frozen=tc.lora.r > 0)
            elif stop or (tc.log_every and state.global_step % tc.log_every == 0):
                report(metrics)
            if stop:
                log.info("early stopping at step %d: eval loss did not improve for %d evals", state.global_step,
                         tc.early_stopping_patience)
                break
        else:
            state.epoch, state.step_in_epoch = state.epoch + 1, 0

    # ---- the end: final eval, the HF export (rank 0) and the final checkpoint, reported together
    final_eval_export_and_checkpoint(ctx, feed, state, cfg, loop_config, rank.world_rank)
    writer.close()
    consumed.close()


@dataclass(frozen=True)
class Rank:
    world_rank: int
    world_size: int
    dp_rank: int
    dp_size: int
    device: torch.device


def setup_worker(tc) -> Rank:
    """This worker's place in the run (ranks, data-parallel coordinates, device) and its logging (--verbose)."""
    import ray.train

    from ray_rm.logging_setup import configure_worker

    configure_worker()
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if tc.use_gpu else "cpu")  # DeepSpeed warns when it guesses
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = torch.device("cuda", ctx.get_local_rank()) if tc.use_gpu else torch.device("cpu")
    if tc.use_gpu:
        torch.cuda.set_device(device)
    torch.set_num_threads(max(1, tc.cpus_per_worker))
    sp = tc.sequence_parallel_size
    return Rank(rank, world, rank // sp, world // sp, device)


def build_step_context(cfg: TrainJobConfig, rank: Rank, loop_config: dict) -> StepContext:
    """The model (with its sequence-parallel group) under DeepSpeed, and what a step needs besides rows."""
    from ray_rm.model.build import build_reward_model, resolve_dtype
    from ray_rm.model.sequence_parallel import SequenceParallelContext
    from ray_rm.train.deepspeed_setup import initialize

    tc, mc = cfg.train, cfg.model
    sp_size = tc.sequence_parallel_size
    sp = SequenceParallelContext.create_groups(rank.world_size, sp_size, rank.world_rank) if sp_size > 1 else None
    model = build_reward_model(mc, tc.lora, device=rank.device, seed=tc.seed)
    if sp is not None:
        sp.check_model(model.config)
    dtype = resolve_dtype(mc.dtype, rank.device.type)
    engine, _ = initialize(model, tc, loop_config["total_steps"], dtype, rank.world_size)
    settings = LossSettings.from_train_config(tc)
    return StepContext(engine=engine, device=rank.device, settings=settings, world_size=rank.world_size, sp=sp,
                       sp_size=sp_size, pad_token_id=loop_config["pad_token_id"], pack_tokens=cfg.data.pack_tokens,
                       nan_policy=tc.nan_policy)


def report(metrics: dict, **kwargs) -> None:
    import ray.train

    ray.train.report(metrics, **kwargs)


def report_baseline_eval(ctx: StepContext, feed: WorkerFeed, writer: MetricsWriter) -> None:
    """The untrained model's eval, so the first progress line shows where learning starts."""
    ev = evaluate(ctx, feed.eval_rows())
    metrics = {"global_step": 0, "epoch": 0, **{f"eval/rm/{k}": v for k, v in ev.items() if k in EVAL_KEYS}}
    writer.write(metrics, 0)
    report(metrics)


def run_step(ctx: StepContext, rows: list, state: TrainState, step_in_epoch: int, tc, consumed: ConsumedIds) -> dict:
    """One optimizer step: train, advance the counters, refuse too many non-finite micro-batches, log ids."""
    sums = train_step(ctx, rows)
    state.global_step += 1
    state.step_in_epoch = step_in_epoch + 1
    state.pairs_seen += int(sums["pairs"])
    state.tokens_seen += int(sums["tokens"])
    state.skipped_micro_batches += int(round(sums["skipped"]))
    if state.skipped_micro_batches > tc.max_skipped_steps:
        raise RuntimeError(f"{state.skipped_micro_batches} micro-batches had a non-finite loss or reward "
                           f"(limit train.max_skipped_steps={tc.max_skipped_steps}); stopping")
    consumed.write(state.global_step, rows)
    metrics = step_metrics(sums, ctx.engine, ctx.pack_tokens, state)
    state.last_train = {k: v for k, v in metrics.items() if k.startswith("train/")}
    return metrics


def record_eval(state: TrainState, ev: dict, metrics: dict, patience: int) -> bool:
    """Add an eval to the step's metrics and the state; True when early stopping says stop."""
    metrics.update({f"eval/rm/{k}": v for k, v in ev.items() if k in EVAL_KEYS})
    state.last_eval = ev
    if ev["loss"] < state.best_eval_loss - 1e-6:
        state.best_eval_loss, state.evals_without_improvement = ev["loss"], 0
        return False
    state.evals_without_improvement += 1
    return bool(patience) and state.evals_without_improvement >= patience


def final_eval_export_and_checkpoint(ctx: StepContext, feed: WorkerFeed, state: TrainState, cfg: TrainJobConfig,
                                     loop_config: dict, world_rank: int) -> None:
    """Final eval, then the final checkpoint (every rank) carrying rank 0's HF export, in one report."""
    from ray_rm.assets import resolve_model_path

    ev = evaluate(ctx, feed.eval_rows()) if feed.has_eval else {}
    state.last_eval, state.done = ev or state.last_eval, True
    final = dict(state.last_train)
    final.update({f"eval/rm/{k}": v for k, v in ev.items() if k in EVAL_KEYS})
    final.update({"global_step": state.global_step, "pairs_seen": state.pairs_seen,
                  "tokens_seen": state.tokens_seen, "skipped_micro_batches": state.skipped_micro_batches,
                  "data_summary_json": json.dumps(feed.data_summary())})  # a collective: every rank
    curves.record(state.curves, final)  # the final eval's point, saved with the final checkpoint
    lora = cfg.train.lora.r > 0
    weights = checkpointing.gathered_state_dict(ctx.engine, trainable_only=lora)  # a collective: every rank
    meta = dict(loop_config["export_meta"], reward_mean=ev.get("reward_mean", 0.0),
                reward_std=ev.get("reward_std", 1.0))
    export = partial(checkpointing.export_final, weights, cfg.model, cfg.train.lora,
                     resolve_model_path(cfg.model.name_or_path), meta=meta)
    barrier()
    checkpointing.save(ctx.engine, state, final, exclude_frozen=lora,
                       extra_files={"hf": export} if world_rank == 0 else None)
