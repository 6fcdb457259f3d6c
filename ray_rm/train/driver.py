"""The driver side of training: validate, prepare data on Ray Data, run ``TorchTrainer``, collect outputs.

Settings that only the model config can check (sequence parallelism vs. head counts, ``data.max_length``
auto) are resolved from ``AutoConfig`` before Ray starts or any data is read. Data is tokenized and
packed once on the cluster and materialized, so the driver knows the drop report and the exact number
of steps (for the LR schedule) before any worker starts, and every worker streams the same rows (see
train/data_feed.py). After training, the export self-test (model/export_check.py) scores training
examples through plain transformers against ray_rm's own scorer; a failure fails the job after the
summary is written. Outputs in ``output_dir``: ``hf/`` (the Hugging Face checkpoint), ``summary.json``
(with ``export_check``), ``drop_report.json``, ``tensorboard/``.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

from ray_rm.config import to_dict
from ray_rm.config_schema import TrainJobConfig
from ray_rm.data.pipeline import PackSettings, PreparedData, materialize
from ray_rm.data.prepare import check_pack_budget, resolve_max_length
from ray_rm.data.quality import usage_line
from ray_rm.errors import UserError
from ray_rm.losses import get_loss
from ray_rm.model.heads import get_head
from ray_rm.train.engine import zero_problem

log = logging.getLogger(__name__)


def validate(cfg: TrainJobConfig) -> None:
    tc = cfg.train
    get_loss(tc.loss)
    head = get_head(cfg.model.head)
    if tc.loss not in head.losses:
        raise UserError(f"train.loss '{tc.loss}' does not train a model.head={head.name} head; it takes "
                        f"{', '.join(head.losses)}")
    if tc.num_workers < 1 or tc.sequence_parallel_size < 1 or tc.num_workers % tc.sequence_parallel_size:
        raise UserError(f"train.num_workers ({tc.num_workers}) must be a positive multiple of "
                        f"train.sequence_parallel_size ({tc.sequence_parallel_size})")
    problem = zero_problem(tc) or precision_problem(cfg)
    if problem:
        raise UserError(problem)
    if tc.micro_steps_per_update < 1:
        raise UserError("train.micro_steps_per_update must be >= 1")
    if tc.nan_policy not in ("skip", "raise"):
        raise UserError("train.nan_policy must be skip or raise")
    if cfg.data.overlength not in ("drop", "truncate_left"):
        raise UserError("data.overlength must be drop or truncate_left")
    if cfg.data.on_error not in ("drop", "raise"):
        raise UserError("data.on_error must be drop or raise")
    if not cfg.data.train_files:
        raise UserError("data.train_files is empty")
    check_pack_budget(cfg.data)


GPU_KERNELS = {"flash_attention_2", "flash_attn", "torch_varlen"}


def precision_problem(cfg: TrainJobConfig) -> str | None:
    """Combinations of dtype, attention kernel, device, QLoRA and ZeRO that cannot train, refused before any
    worker starts (the workers' devices are not the driver's, so this checks keys, not the local machine)."""
    from ray_rm.model.build import attn_choices

    mc, tc = cfg.model, cfg.train
    lora = tc.lora
    if mc.dtype not in ("auto", "float32", "bfloat16", "float16"):
        return f"model.dtype must be auto, float32, bfloat16 or float16, got '{mc.dtype}'"
    if mc.attn_implementation not in attn_choices():
        return f"model.attn_implementation must be one of {', '.join(attn_choices())}, got '{mc.attn_implementation}'"
    if mc.attn_implementation in GPU_KERNELS and not tc.use_gpu:
        return (f"model.attn_implementation={mc.attn_implementation} is a CUDA kernel but train.use_gpu=false; "
                "use 'auto' (SDPA blocks on CPU)")
    if mc.attn_implementation in GPU_KERNELS and mc.dtype == "float32":
        return (f"model.attn_implementation={mc.attn_implementation} runs in bf16/fp16 only, but model.dtype=float32; "
                "set model.dtype=bfloat16 (or auto), or model.attn_implementation=auto")
    if mc.dtype == "float16" and not tc.use_gpu:
        return ("model.dtype=float16 trains with DeepSpeed's fp16 loss scaling, which needs GPUs (train.use_gpu=true); "
                "on CPU use float32 or bfloat16")
    if tc.sequence_parallel_size > 1 and mc.attn_implementation in ("sdpa", "eager"):
        return (f"train.sequence_parallel_size={tc.sequence_parallel_size} needs ray_rm's varlen attention: "
                f"model.attn_implementation={mc.attn_implementation} attends over the whole row; use 'auto'")
    if lora.quantize_4bit and not tc.use_gpu:
        return ("QLoRA (train.lora.quantize_4bit=true) needs GPUs: set train.use_gpu=true on a GPU cluster, "
                "or use LoRA without quantization on CPU")
    if lora.quantize_4bit and lora.r <= 0:
        return "train.lora.quantize_4bit (QLoRA) needs train.lora.r > 0: a 4-bit backbone cannot be fully fine-tuned"
    if lora.quantize_4bit and tc.zero_stage == 3:
        return ("train.lora.quantize_4bit=true with train.zero_stage=3 is not supported: ZeRO-3 would partition the "
                "4-bit base weights, which bitsandbytes must keep whole; use train.zero_stage=2 (the frozen 4-bit "
                "base is small, and ZeRO-2 still shards the adapters' optimizer states and gradients)")
    return None


def validate_model(cfg: TrainJobConfig, hf_config) -> None:
    """Checks that need the model's config (cheap: config.json only), run before any data work."""
    from ray_rm.model.sequence_parallel import check_heads, model_heads

    sp = cfg.train.sequence_parallel_size
    if sp > 1:
        if cfg.model.attn_implementation in ("sdpa", "eager"):
            raise UserError(f"train.sequence_parallel_size={sp} needs model.attn_implementation auto, varlen or "
                            f"flash_attention_2 (ray_rm's per-segment attention), not "
                            f"'{cfg.model.attn_implementation}'")
        try:
            check_heads(*model_heads(hf_config), sp)
        except ValueError as exc:
            raise UserError(f"{cfg.model.name_or_path}: {exc}") from None


def _pack_settings(cfg: TrainJobConfig, model_path: str, hf_config) -> tuple[PackSettings, dict]:
    from transformers import AutoTokenizer

    from ray_rm.model.build import detect_kind
    from ray_rm.model.export import pick_pad_token

    kind = detect_kind(hf_config, cfg.model.kind)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad_id = pick_pad_token(tokenizer)[1] if kind == "decoder" else (tokenizer.pad_token_id or 0)
    settings = PackSettings(tokenizer_path=model_path, share_prompt=cfg.data.share_prompt and kind == "decoder",
                            seed=cfg.train.seed if cfg.data.shuffle else None)
    return settings, {"kind": kind, "pad_token_id": pad_id}


def _prepare(cfg: TrainJobConfig, settings: PackSettings) -> tuple[PreparedData, PreparedData | None]:
    t0 = time.time()
    train = materialize(cfg.data.train_files, cfg.data, settings)
    print(f"[ray_rm] train data: {train.report.format()}\n[ray_rm] packed {train.num_groups} pairs/groups "
          f"({train.num_tokens} tokens) into {train.num_rows} rows of <= {cfg.data.pack_tokens} tokens "
          f"(fill {train.num_tokens / max(1, train.num_rows * cfg.data.pack_tokens):.3f}) in {time.time() - t0:.1f}s",
          flush=True)
    if train.num_rows == 0:
        raise UserError("no training rows left after filtering; see the drop report above")
    evald = None
    if cfg.data.eval_files:
        evald = materialize(cfg.data.eval_files, cfg.data, replace(settings, seed=None))
        print(f"[ray_rm] eval data: {evald.report.format()}", flush=True)
        if evald.num_rows == 0:
            evald = None
    return train, evald


def run_training(cfg: TrainJobConfig) -> dict:
    """Train, export and summarize; returns the summary written to ``output_dir/summary.json``."""
    validate(cfg)
    started = time.time()
    out = Path(cfg.output_dir).resolve()

    from transformers import AutoConfig

    from ray_rm.assets import resolve_model_path

    model_path = resolve_model_path(cfg.model.name_or_path)
    hf_config = AutoConfig.from_pretrained(model_path)
    validate_model(cfg, hf_config)
    cfg = replace(cfg, output_dir=str(out), data=resolve_max_length(cfg.data, model_path))
    out.mkdir(parents=True, exist_ok=True)

    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from ray_rm.ray_utils import init_ray
    from ray_rm.train.loop import train_loop_per_worker
    from ray_rm.train.metrics import ProgressLine

    settings, model_info = _pack_settings(cfg, model_path, hf_config)
    print(f"[ray_rm] data.max_length {cfg.data.max_length} tokens per sequence, rows of {cfg.data.pack_tokens}",
          flush=True)
    init_ray(cfg.ray)
    train, evald = _prepare(cfg, settings)
    reports = {"train": train.report.to_dict(), "eval": evald.report.to_dict() if evald else None}
    (out / "drop_report.json").write_text(json.dumps(reports, indent=2))

    tc = cfg.train
    dp = tc.num_workers // tc.sequence_parallel_size
    steps_per_epoch = -(-train.num_rows // (dp * tc.micro_steps_per_update))
    total_steps = tc.max_steps or steps_per_epoch * tc.num_epochs
    run_name = tc.run_name or f"ray_rm-{out.name}"
    storage = Path(tc.storage_path).resolve() if tc.storage_path else out / "ray_storage"
    loop_config = {
        "config": to_dict(cfg), "total_steps": total_steps, "train_rows": train.num_rows,
        "eval_rows": evald.num_rows if evald else 0, "pad_token_id": model_info["pad_token_id"],
        "export_meta": {"chat_template": cfg.data.chat_template,
                        "max_length": cfg.data.max_length, "base_model": cfg.model.name_or_path,
                        "loss": tc.loss},
    }
    datasets = {"train": train.dataset}
    if evald:
        datasets["eval"] = evald.dataset
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                                     resources_per_worker={"CPU": tc.cpus_per_worker},
                                     placement_strategy=tc.placement_strategy),
        run_config=RunConfig(name=run_name, storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=tc.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             callbacks=[ProgressLine(total_steps)]),
        datasets=datasets, dataset_config=DataConfig(datasets_to_split=[]),
        torch_config=TorchConfig(backend="nccl" if tc.use_gpu else "gloo"),
    )
    print(f"[ray_rm] training {total_steps} steps on {tc.num_workers} workers (dp {dp} x sp "
          f"{tc.sequence_parallel_size}, ZeRO-{tc.zero_stage}, loss {tc.loss}); run '{run_name}' in {storage}",
          flush=True)
    from ray.train import TrainingFailedError

    try:
        result = trainer.fit()
    except TrainingFailedError as exc:
        raise UserError(f"training failed: {_root_cause(exc)}") from None
    except SystemExit as exc:
        # Ray Train answers Ctrl-C by aborting the run gracefully, then the driver's pending ray.get raises
        # SystemExit(1): report it as the interrupt it was (cli.run_job stops the cluster, exits 130).
        raise KeyboardInterrupt("training aborted by Ctrl-C") from exc
    return _finish(cfg, result, model_path, train, evald, {"run_name": run_name, "storage_path": str(storage),
                                                           "started": started})


def _finish(cfg: TrainJobConfig, result, model_path: str, train: PreparedData, evald: PreparedData | None,
            run: dict) -> dict:
    """Copy the export out of the final checkpoint, self-test it, write summary.json, print the verdicts.

    The summary is written before a failed export check raises, so the failure is on record."""
    out = Path(cfg.output_dir)
    hf_dir = out / "hf"
    with result.checkpoint.as_directory() as ckpt:
        if not (Path(ckpt) / "hf").is_dir():
            raise RuntimeError(f"the final checkpoint {ckpt} holds no hf/ export")
        if hf_dir.exists():
            shutil.rmtree(hf_dir)
        shutil.copytree(Path(ckpt) / "hf", hf_dir)
    check = _check_export(cfg, model_path, hf_dir)
    metrics = dict(result.metrics or {})
    reports = {"train": train.report.to_dict(), "eval": evald.report.to_dict() if evald else None}
    summary = {
        "hf_checkpoint": str(hf_dir), "run_name": run["run_name"], "storage_path": run["storage_path"],
        "steps": metrics.get("global_step"), "pairs_seen": metrics.get("pairs_seen"),
        "tokens_seen": metrics.get("tokens_seen"), "skipped_micro_batches": metrics.get("skipped_micro_batches"),
        "wall_time_s": round(time.time() - run["started"], 1),
        "final_metrics": {k: v for k, v in metrics.items() if k.startswith(("eval/", "train/"))},
        "data": {"train_rows_packed": train.num_rows, "train_groups": train.num_groups,
                 "train_tokens": train.num_tokens, "max_length": cfg.data.max_length,
                 "fill_fraction": train.num_tokens / (train.num_rows * cfg.data.pack_tokens),
                 "drop_report": reports},
        "export_check": check.to_dict(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    lines = [usage_line("train data", train.report)] + ([usage_line("eval data", evald.report)] if evald else [])
    verdict = check.format() if check.passed else check.format().splitlines()[0]  # failures: the job's error
    print("\n".join(lines + ["[ray_rm] " + verdict]), flush=True)
    from ray_rm.model.export_check import require_passed

    require_passed(check)
    print(f"[ray_rm] done in {summary['wall_time_s']}s: HF checkpoint {hf_dir} | summary {out / 'summary.json'}",
          flush=True)
    return summary


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
