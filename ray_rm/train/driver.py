"""The driver side of training: validate, prepare data on Ray Data, run ``TorchTrainer``, collect outputs.

What this module is for: ``run_training``, a short sequence of named steps on the driver. What it must not
do: import DeepSpeed or build the model (workers do, in ``train/loop.py``), or hold config rules
(``ray_rm/validation.py``).

Settings that only the model config can check (sequence parallelism vs. head counts, ``data.max_length``
auto) are resolved from ``AutoConfig`` before Ray starts or any data is read. The driver only plans the
data (read tasks, which rank reads which, an estimated epoch length: train/feed_plan.py); the workers
stream, tokenize and pack their own rows while they train (train/data_feed.py), and the drop report and
row counts come back with the final result. After training, the export self-test (model/export_check.py) scores training
examples through plain transformers against ray_rm's own scorer; a failure fails the job after the
summary is written. Outputs in ``output_dir``: ``hf/`` (the Hugging Face checkpoint), ``summary.json``
(with ``export_check`` and the loss/accuracy ``curves``), ``train_curves.png``, ``drop_report.json``,
``metrics.jsonl``, ``tensorboard/``.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ray_rm.config import to_dict
from ray_rm.config_schema import TrainJobConfig
from ray_rm.data.pipeline import PackSettings
from ray_rm.data.prepare import resolve_max_length
from ray_rm.data.quality import DropReport, usage_line
from ray_rm.errors import UserError
from ray_rm.train import curves
from ray_rm.validation import validate, validate_with_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPlan:
    """Where a run lives, how its data is read and how long its LR schedule is: decided on the driver."""

    total_steps: int
    run_name: str
    storage: Path
    dp_size: int
    feed: object  # train/feed_plan.FeedPlan, shipped to the workers

    @property
    def planned_rows(self) -> int:
        """Source rows one epoch reads (every train task's rows): what the drop report must account for."""
        from ray_rm.train.feed_plan import task_rows

        return sum(task_rows(t) for t in self.feed.train_tasks)


def run_training(cfg: TrainJobConfig) -> dict:
    """Train, export and summarize; returns the summary written to ``output_dir/summary.json``.

    Steps: validate (no Ray yet) -> resolve the model and output settings -> start Ray -> prepare and count
    the data -> plan the run -> fit on the workers (``train/loop.py``) -> export check and summary."""
    validate(cfg)
    started = time.time()
    cfg, model_path, hf_config = _resolve_settings(cfg)
    settings, pad_token_id, encoder = _pack_settings(cfg, model_path, hf_config)
    print(f"[ray_rm] data.max_length {cfg.data.max_length} tokens per sequence, rows of {cfg.data.pack_tokens}",
          flush=True)
    from ray_rm.ray_utils import init_ray

    init_ray(cfg.ray)
    plan = _plan(cfg, settings, encoder)
    result = _fit(_trainer(cfg, plan, pad_token_id))
    return _finish(cfg, result, model_path, {"run_name": plan.run_name, "storage_path": str(plan.storage),
                                             "started": started, "planned_rows": plan.planned_rows})


def _resolve_settings(cfg: TrainJobConfig) -> tuple[TrainJobConfig, str, object]:
    """The model's config (checked against the settings that need it), the absolute output_dir (created) and
    data.max_length resolved: all before Ray starts or any data is read."""
    from transformers import AutoConfig

    from ray_rm.assets import resolve_model_path

    model_path = resolve_model_path(cfg.model.name_or_path)
    hf_config = AutoConfig.from_pretrained(model_path)
    validate_with_model(cfg, hf_config)
    out = Path(cfg.output_dir).resolve()
    cfg = replace(cfg, output_dir=str(out), data=resolve_max_length(cfg.data, model_path),
                  model=_with_attribute_names(cfg))
    out.mkdir(parents=True, exist_ok=True)
    return cfg, model_path, hf_config


def _with_attribute_names(cfg: TrainJobConfig):
    """model.head=attributes: the names fixed before any data task runs (configured, or the first rated row's)."""
    if cfg.model.head != "attributes":
        return cfg.model
    from ray_rm.data.rated_groups import attribute_names

    names = attribute_names(cfg.model.attributes, cfg.data.train_files, cfg.data)
    print(f"[ray_rm] attributes: {', '.join(names)}", flush=True)
    return replace(cfg.model, attributes=list(names))


def _pack_settings(cfg: TrainJobConfig, model_path: str, hf_config) -> tuple[PackSettings, int, object]:
    """How the data is tokenized and packed for this model, the pad id of its rows (never the reward token),
    and the driver's encoder (for the epoch-length estimate)."""
    from ray_rm.data.pipeline import make_encoder
    from ray_rm.model.build import detect_kind
    from ray_rm.model.export import pick_pad_token

    kind = detect_kind(hf_config, cfg.model.kind)
    encoder = make_encoder(model_path, cfg.data)
    tokenizer = encoder.tokenizer
    pad_id = pick_pad_token(tokenizer)[1] if kind == "decoder" else (tokenizer.pad_token_id or 0)
    settings = PackSettings(tokenizer_path=model_path, share_prompt=cfg.data.share_prompt and kind == "decoder",
                            seed=cfg.train.seed if cfg.data.shuffle else None, head=cfg.model.head,
                            step_separator=cfg.model.step_separator, prm_last_step_only=cfg.train.prm_last_step_only,
                            prm_cut_at_first_error=cfg.train.prm_cut_at_first_error,
                            attributes=tuple(cfg.model.attributes) if cfg.model.head == "attributes" else ())
    return settings, pad_id, encoder


def _plan(cfg: TrainJobConfig, settings: PackSettings, encoder) -> RunPlan:
    """Plan the data feed (no tokenization pass: a sample estimates the epoch length) and the run."""
    from ray_rm.train.feed_plan import plan_feed

    tc = cfg.train
    out = Path(cfg.output_dir)
    dp = tc.num_workers // tc.sequence_parallel_size
    t0 = time.time()
    feed = plan_feed(cfg, settings, encoder, dp, free_cpus=_cpus_left_by_workers(tc))
    estimated = feed.estimated_steps_per_epoch * tc.num_epochs
    if feed.actor_cpus < 1:
        print(f"[ray_rm] the cluster has too few free CPUs for {tc.num_workers} workers plus their streams' "
              f"pack actors: each actor asks for {feed.actor_cpus} CPU and shares the cores with training",
              flush=True)
    how = (f"train.max_steps {tc.max_steps}" if tc.max_steps else
           f"~{estimated} steps estimated from a {cfg.data.step_estimate_pairs}-pair packed sample "
           f"({tc.num_epochs} epochs; the run ends after the last epoch whatever the estimate)")
    print(f"[ray_rm] train data: {len(feed.train_tasks)} read tasks streamed by {dp} data-parallel ranks, "
          f"eval: {len(feed.eval_tasks)} tasks; LR schedule length: {how} (planned in {time.time() - t0:.1f}s)",
          flush=True)
    storage = Path(tc.storage_path).resolve() if tc.storage_path else out / "ray_storage"
    return RunPlan(tc.max_steps or estimated, tc.run_name or f"ray_rm-{out.name}", storage, dp, feed)


def _cpus_left_by_workers(tc) -> float:
    """Logical CPUs the cluster has free now, less what the train workers will take (the stream actors' share)."""
    import ray

    return ray.available_resources().get("CPU", 0.0) - tc.num_workers * tc.cpus_per_worker


def _trainer(cfg: TrainJobConfig, plan: RunPlan, pad_token_id: int):
    """The ``TorchTrainer``: workers run ``train_loop_per_worker`` and stream the data plan's tasks."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from ray_rm.logging_setup import train_log_level
    from ray_rm.train.loop import train_loop_per_worker
    from ray_rm.train.metrics import ProgressLine

    tc = cfg.train
    loop_config = {
        "config": to_dict(cfg), "total_steps": plan.total_steps, "pad_token_id": pad_token_id, "feed_plan": plan.feed,
        "export_meta": {"chat_template": cfg.data.chat_template, "max_length": cfg.data.max_length,
                        "base_model": cfg.model.name_or_path, "loss": tc.loss},
    }
    print(f"[ray_rm] training {plan.total_steps} steps on {tc.num_workers} workers (dp {plan.dp_size} x sp "
          f"{tc.sequence_parallel_size}, ZeRO-{tc.zero_stage}, loss {tc.loss}); run '{plan.run_name}' in "
          f"{plan.storage}", flush=True)
    return TorchTrainer(
        train_loop_per_worker, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                                     resources_per_worker={"CPU": tc.cpus_per_worker},
                                     placement_strategy=tc.placement_strategy),
        run_config=RunConfig(name=plan.run_name, storage_path=str(plan.storage),
                             failure_config=FailureConfig(max_failures=tc.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             callbacks=[ProgressLine(plan.total_steps)],
                             logging_config=LoggingConfig(log_level=train_log_level())),
        torch_config=TorchConfig(backend="nccl" if tc.use_gpu else "gloo"),
    )


def _fit(trainer):
    from ray.train import TrainingFailedError

    try:
        return trainer.fit()
    except TrainingFailedError as exc:
        raise UserError(f"training failed: {_root_cause(exc)}") from None
    except SystemExit as exc:
        # Ray Train answers Ctrl-C by aborting the run gracefully, then the driver's pending ray.get raises
        # SystemExit(1): report it as the interrupt it was (cli.run_job stops the cluster, exits 130).
        raise KeyboardInterrupt("training aborted by Ctrl-C") from exc


def _finish(cfg: TrainJobConfig, result, model_path: str, run: dict) -> dict:
    """Copy the export out of the final checkpoint, self-test it, write summary.json and drop_report.json
    (the workers' data summary), print the verdicts.

    The summary is written before a failed export check raises, so the failure is on record."""
    from ray_rm.train.checkpointing import STATE_FILE

    out = Path(cfg.output_dir)
    hf_dir = out / "hf"
    with result.checkpoint.as_directory() as ckpt:
        if not (Path(ckpt) / "hf").is_dir():
            raise RuntimeError(f"the final checkpoint {ckpt} holds no hf/ export")
        if hf_dir.exists():
            shutil.rmtree(hf_dir)
        shutil.copytree(Path(ckpt) / "hf", hf_dir)
        run_curves = curves.read_from_checkpoint(ckpt, STATE_FILE)
    check = _check_export(cfg, model_path, hf_dir)
    metrics = dict(result.metrics or {})
    data = json.loads(metrics.pop("data_summary_json"))
    train, evald = data["train"], data["eval"]
    reports = {"train": _with_unread_rows(train["report"], run["planned_rows"]),
               "eval": evald["report"] if evald else None}
    (out / "drop_report.json").write_text(json.dumps(reports, indent=2))
    summary = {
        "hf_checkpoint": str(hf_dir), "run_name": run["run_name"], "storage_path": run["storage_path"],
        "steps": metrics.get("global_step"), "pairs_seen": metrics.get("pairs_seen"),
        "tokens_seen": metrics.get("tokens_seen"), "skipped_micro_batches": metrics.get("skipped_micro_batches"),
        "wall_time_s": round(time.time() - run["started"], 1),
        "final_metrics": {k: v for k, v in metrics.items() if k.startswith(("eval/", "train/"))},
        "data": {"train_rows_packed": train["rows"], "train_rows_per_dp_rank": train["rows_per_dp_rank"],
                 "train_groups": train["groups"],
                 "train_tokens": train["tokens"], "max_length": cfg.data.max_length,
                 "fill_fraction": train["tokens"] / max(1, train["rows"] * cfg.data.pack_tokens),
                 "drop_report": reports},
        "export_check": check.to_dict(),
        "curves": run_curves,
        "curves_png": curves.plot(run_curves, out / "train_curves.png", title=run["run_name"]),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    lines = [usage_line(f"{name} data", DropReport.from_dict(rep)) + _unread_note(rep)
             for name, rep in reports.items() if rep]
    verdict = check.format() if check.passed else check.format().splitlines()[0]  # failures: the job's error
    print("\n".join(lines + ["[ray_rm] " + verdict]), flush=True)
    from ray_rm.model.export_check import require_passed

    require_passed(check)
    print(f"[ray_rm] done in {summary['wall_time_s']}s: HF checkpoint {hf_dir} | summary {out / 'summary.json'}",
          flush=True)
    return summary


def _with_unread_rows(report: dict, planned_rows: int) -> dict:
    """The train drop report plus ``rows_not_read``: the epoch's rows the stream never reached because
    ``train.max_steps`` ended the run first. Why not read them anyway: on a large data set that would tokenize
    the rest of the epoch after training is over; counted instead, every planned row is accounted for as kept,
    dropped (with its reason) or not read."""
    return {**report, "rows_not_read": max(0, planned_rows - report["rows_read"])}


def _unread_note(report: dict) -> str:
    unread = report.get("rows_not_read", 0)
    return f"; {unread} rows not read (the run ended at train.max_steps before the epoch did)" if unread else ""


def _check_export(cfg: TrainJobConfig, model_path: str, hf_dir: Path):
    """The export self-test on a few training examples, their reference ids as training tokenized them."""
    from ray_rm.data.pipeline import make_encoder
    from ray_rm.model.export_check import builtin_items, check_export, items_from_files

    encoder = make_encoder(model_path, cfg.data)
    items = items_from_files(cfg.data.train_files, cfg.data) + builtin_items(encoder.tokenizer)
    return check_export(hf_dir, items, encoder.encode([(i.prompt, i.response) for i in items]))


def _root_cause(exc: BaseException) -> str:
    seen = exc
    while seen.__cause__ is not None:
        seen = seen.__cause__
    text = str(seen).strip().splitlines()
    return text[-1] if text else type(seen).__name__
