"""The function each Ray Train worker runs: build model + DeepSpeed, stream rows, train, eval, checkpoint.

Reads top to bottom: setup -> restore -> for each step (train, report, maybe eval / checkpoint) ->
final eval -> export. Every rank calls ``ray.train.report`` the same number of times (it is a barrier).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from ray_rm.config import from_dict
from ray_rm.config_schema import TrainJobConfig
from ray_rm.losses import LossSettings
from ray_rm.train import checkpointing
from ray_rm.train.checkpointing import TrainState
from ray_rm.train.collectives import barrier
from ray_rm.train.data_feed import RowSchedule, iter_eval_rows, iter_steps
from ray_rm.train.metrics import MetricsWriter, step_metrics
from ray_rm.train.step import StepContext, evaluate, train_step

log = logging.getLogger(__name__)


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    from transformers.utils import logging as hf_logging

    from ray_rm.assets import resolve_model_path
    from ray_rm.model.build import build_reward_model, resolve_dtype
    from ray_rm.model.sequence_parallel import SequenceParallelContext
    from ray_rm.train import engine as engine_setup

    from ray_rm.ray_utils import quiet_ray_logs

    hf_logging.set_verbosity_error()
    quiet_ray_logs()
    cfg: TrainJobConfig = from_dict(TrainJobConfig, loop_config["config"])
    tc, mc = cfg.train, cfg.model
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    sp_size = tc.sequence_parallel_size
    dp_size, dp_rank = world // sp_size, rank // sp_size
    device = torch.device("cuda", ctx.get_local_rank()) if tc.use_gpu else torch.device("cpu")
    if tc.use_gpu:
        torch.cuda.set_device(device)
    torch.set_num_threads(max(1, tc.cpus_per_worker))

    sp = SequenceParallelContext.create_groups(world, sp_size, rank) if sp_size > 1 else None
    model = build_reward_model(mc, tc.lora, device=device, seed=tc.seed)
    if sp is not None:
        sp.check_model(model.config)
    dtype = resolve_dtype(mc.dtype, device.type)
    total_steps = loop_config["total_steps"]
    engine, _ = engine_setup.initialize(model, tc, total_steps, dtype, world)
    lora = tc.lora.r > 0

    state = checkpointing.restore(engine, exclude_frozen=lora) or TrainState()
    if state.global_step:
        log.info("rank %d resumed at step %d (epoch %d, step %d of the epoch)", rank, state.global_step,
                 state.epoch, state.step_in_epoch)
    schedule = RowSchedule(loop_config["train_rows"], dp_size, tc.micro_steps_per_update, tc.seed,
                           tc.shuffle_window_rows)
    tokenizer_path = resolve_model_path(mc.name_or_path)
    step_ctx = StepContext(engine=engine, device=device,
                           settings=LossSettings(tc.loss, tc.center_rewards_coefficient, tc.barrier_coefficient,
                                                 tc.focal_gamma),
                           world_size=world, sp=sp, sp_size=sp_size, pad_token_id=loop_config["pad_token_id"],
                           pack_tokens=cfg.data.pack_tokens, nan_policy=tc.nan_policy)
    writer = MetricsWriter(cfg.output_dir if rank == 0 else None, tc.tensorboard)
    consumed_log = _consumed_log(cfg, rank)
    train_shard = ray.train.get_dataset_shard("train")
    eval_shard = ray.train.get_dataset_shard("eval") if loop_config["eval_rows"] else None

    def run_eval() -> dict:
        rows = iter_eval_rows(eval_shard.iter_rows(), loop_config["eval_rows"], dp_size, dp_rank)
        return evaluate(step_ctx, rows)

    def run_epoch() -> bool:
        """Train until the epoch ends (False) or the run must stop (True: last step, early stopping)."""
        for step_in_epoch, rows in iter_steps(train_shard.iter_rows(), schedule, state.epoch, dp_rank,
                                              state.step_in_epoch):
            sums = train_step(step_ctx, rows)
            state.global_step += 1
            state.step_in_epoch = step_in_epoch + 1
            state.pairs_seen += int(sums["pairs"])
            state.tokens_seen += int(sums["tokens"])
            state.skipped_micro_batches += int(round(sums["skipped"]))
            if state.skipped_micro_batches > tc.max_skipped_steps:
                raise RuntimeError(f"{state.skipped_micro_batches} micro-batches had a non-finite loss or reward "
                                   f"(limit train.max_skipped_steps={tc.max_skipped_steps}); stopping")
            if consumed_log:
                consumed_log.write(json.dumps({"step": state.global_step, "rank": rank, "pid": os.getpid(), "ids": [
                    g for r in rows if r is not None for g in r.group_ids]}) + "\n")
                consumed_log.flush()
            metrics = step_metrics(sums, engine, cfg.data.pack_tokens, state)
            state.last_train = {k: v for k, v in metrics.items() if k.startswith("train/")}
            if state.global_step >= total_steps:
                writer.write(metrics, state.global_step)
                return True  # the final checkpoint below reports this step
            stop = False
            if tc.eval_every and eval_shard is not None and state.global_step % tc.eval_every == 0:
                ev = run_eval()
                metrics.update({f"eval/rm/{k}": v for k, v in ev.items() if k in _EVAL_KEYS})
                state.last_eval = ev
                stop = _early_stop(state, ev, tc.early_stopping_patience)
            writer.write(metrics, state.global_step)
            if tc.checkpoint_every and state.global_step % tc.checkpoint_every == 0:
                checkpointing.save(engine, state, metrics, exclude_frozen=lora)
            elif stop or (tc.log_every and state.global_step % tc.log_every == 0):
                ray.train.report(metrics)
            if stop:
                log.info("early stopping at step %d: eval loss did not improve for %d evals",
                         state.global_step, tc.early_stopping_patience)
                return True
        return False

    if state.global_step == 0 and not state.done and tc.eval_every and eval_shard is not None:
        ev = run_eval()  # the untrained baseline, so the first progress line shows where learning starts
        metrics = {"global_step": 0, "epoch": 0, **{f"eval/rm/{k}": v for k, v in ev.items() if k in _EVAL_KEYS}}
        writer.write(metrics, 0)
        ray.train.report(metrics)

    stop = state.done
    while not stop and state.global_step < total_steps:
        stop = run_epoch()
        if not stop:
            state.epoch, state.step_in_epoch = state.epoch + 1, 0

    # final eval, export (rank 0) and the final checkpoint, reported together
    ev = run_eval() if eval_shard is not None else {}
    state.last_eval, state.done = ev or state.last_eval, True
    final = dict(state.last_train)
    final.update({f"eval/rm/{k}": v for k, v in ev.items() if k in _EVAL_KEYS})
    final.update({"global_step": state.global_step, "pairs_seen": state.pairs_seen,
                  "tokens_seen": state.tokens_seen, "skipped_micro_batches": state.skipped_micro_batches})
    weights = checkpointing.gathered_state_dict(engine, trainable_only=lora)
    meta = dict(loop_config["export_meta"], reward_mean=ev.get("reward_mean", 0.0),
                reward_std=ev.get("reward_std", 1.0))

    def write_hf(path: Path) -> None:
        checkpointing.export_final(weights, mc, tc.lora, tokenizer_path, str(path), meta)

    barrier()
    checkpointing.save(engine, state, final, exclude_frozen=lora, extra_files={"hf": write_hf} if rank == 0 else None)
    writer.close()
    if consumed_log:
        consumed_log.close()


_EVAL_KEYS = ("loss", "accuracy", "chosen_rewards", "rejected_rewards", "reward_margin")


def _early_stop(state: TrainState, ev: dict, patience: int) -> bool:
    if ev["loss"] < state.best_eval_loss - 1e-6:
        state.best_eval_loss, state.evals_without_improvement = ev["loss"], 0
        return False
    state.evals_without_improvement += 1
    return bool(patience) and state.evals_without_improvement >= patience


def _consumed_log(cfg: TrainJobConfig, rank: int):
    if not cfg.train.record_pair_ids:
        return None
    folder = Path(cfg.output_dir) / "consumed"
    folder.mkdir(parents=True, exist_ok=True)
    return open(folder / f"rank{rank}.jsonl", "a")

