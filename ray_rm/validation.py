"""One validation pass per job config: every rule between settings, checked before Ray starts or data is read.

What this module is for: the single home of config rules. ``validate(cfg)`` dispatches on the job config's
type (train, serve, relabel, eval, inspect) and every job calls it first; ``validate_with_model`` adds the
training rules that need the model's ``config.json`` (cheap: no weights). A key on its own (its type, and
for word settings its choices, declared in the schema with ``opt(..., choices)``) is checked by
``ray_rm.config`` while loading, and again here for configs built in code. What it must not do: start Ray,
read data, load weights, or check the local machine's devices (the workers' devices are not the driver's:
rules here read keys; ``model/build.py`` checks the device a model is actually built on).
Every refusal is a ``ConfigError`` naming the keys involved.
"""
from __future__ import annotations

from pathlib import Path

from ray_rm.config import ConfigError, check_choices
from ray_rm.config_schema import DataConfig, TrainJobConfig
from ray_rm.data.stats import InspectDataConfig
from ray_rm.eval.config import EvalJobConfig
from ray_rm.relabel.config import RelabelConfig, RelabelJobConfig
from ray_rm.serve.config import ServeConfig, ServeJobConfig

GPU_KERNELS = {"flash_attention_2", "flash_attn", "torch_varlen"}
WHOLE_ROW_ATTENTION = {"sdpa", "eager"}


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg) -> None:
    """Refuse a job config that cannot run, naming the keys (``ConfigError``)."""
    rules = next((rules for cls, rules in _RULES if isinstance(cfg, cls)), None)
    if rules is None:
        raise TypeError(f"no validation rules for {type(cfg).__name__}")
    check_choices(cfg)
    rules(cfg)


# ------------------------------------------------------------------------------------------------ train
def _train(cfg: TrainJobConfig) -> None:
    from ray_rm.losses import get_loss
    from ray_rm.model.heads import get_head

    tc = cfg.train
    get_loss(tc.loss)
    head = get_head(cfg.model.head)
    _require(tc.loss in head.losses, f"train.loss '{tc.loss}' does not train a model.head={head.name} head; it "
                                     f"takes {', '.join(head.losses)}")
    _require(tc.num_workers >= 1 and tc.sequence_parallel_size >= 1
             and tc.num_workers % tc.sequence_parallel_size == 0,
             f"train.num_workers ({tc.num_workers}) must be a positive multiple of train.sequence_parallel_size "
             f"({tc.sequence_parallel_size})")
    _require(tc.micro_steps_per_update >= 1, "train.micro_steps_per_update must be >= 1")
    _require(bool(cfg.data.train_files), "data.train_files is empty")
    _zero(tc)
    _precision(cfg)
    _attributes(cfg)
    _data(cfg.data)
    _prm(cfg)


def _prm(cfg: TrainJobConfig) -> None:
    """Process reward model settings that only mean something with model.head=prm."""
    prm = cfg.model.head == "prm"
    _require(prm or not cfg.train.prm_last_step_only, "train.prm_last_step_only needs model.head=prm")
    _require(prm or not cfg.train.prm_cut_at_first_error, "train.prm_cut_at_first_error needs model.head=prm")
    _require(prm or cfg.train.prm_pos_weight == 1.0, "train.prm_pos_weight needs model.head=prm")
    _require(cfg.train.prm_pos_weight > 0, "train.prm_pos_weight must be > 0")
    _require(not prm or cfg.model.kind != "encoder", "model.head=prm reads step ends causally: use a decoder")
    _require(not prm or cfg.data.chat_template != "never", "model.head=prm tokenizes message prompts with the chat "
                                                           "template; data.chat_template=never is not supported")


def _attributes(cfg: TrainJobConfig) -> None:
    """The attribute head's settings: one value per named attribute, one head output per sequence gathered whole."""
    mc = cfg.model
    if mc.head != "attributes":
        _require(not (mc.attributes or mc.attribute_weights or mc.attribute_means or mc.attribute_stds),
                 f"model.attributes / model.attribute_* are settings of model.head=attributes, not {mc.head}")
        return
    _require(cfg.train.sequence_parallel_size == 1,
             "model.head=attributes does not run under sequence parallelism; set train.sequence_parallel_size=1")
    for key in ("attribute_weights", "attribute_means", "attribute_stds"):
        values = getattr(mc, key)
        _require(not values or not mc.attributes or len(values) == len(mc.attributes),
                 f"model.{key} has {len(values)} values but model.attributes names {len(mc.attributes)}")
    _require(all(float(s) > 0 for s in mc.attribute_stds), "model.attribute_stds must be positive")


def _zero(tc) -> None:
    """ZeRO settings that cannot run together."""
    _require(not (tc.offload_optimizer and tc.zero_stage == 0), "train.offload_optimizer needs train.zero_stage >= 1")
    _require(not (tc.offload_params and tc.zero_stage != 3), "train.offload_params needs train.zero_stage = 3")


def _precision(cfg: TrainJobConfig) -> None:
    """Combinations of dtype, attention kernel, device, sequence parallelism, QLoRA and ZeRO that cannot train."""
    mc, tc, lora = cfg.model, cfg.train, cfg.train.lora
    attn = mc.attn_implementation
    _require(not (attn in GPU_KERNELS and not tc.use_gpu),
             f"model.attn_implementation={attn} is a CUDA kernel but train.use_gpu=false; use 'auto' (SDPA blocks "
             "on CPU)")
    _require(not (attn in GPU_KERNELS and mc.dtype == "float32"),
             f"model.attn_implementation={attn} runs in bf16/fp16 only, but model.dtype=float32; set "
             "model.dtype=bfloat16 (or auto), or model.attn_implementation=auto")
    _require(not (mc.dtype == "float16" and not tc.use_gpu),
             "model.dtype=float16 trains with DeepSpeed's fp16 loss scaling, which needs GPUs (train.use_gpu=true); "
             "on CPU use float32 or bfloat16")
    _require(not (tc.sequence_parallel_size > 1 and attn in WHOLE_ROW_ATTENTION),
             f"train.sequence_parallel_size={tc.sequence_parallel_size} needs ray_rm's varlen attention: "
             f"model.attn_implementation={attn} attends over the whole row; use 'auto'")
    _require(not (lora.quantize_4bit and not tc.use_gpu),
             "QLoRA (train.lora.quantize_4bit=true) needs GPUs: set train.use_gpu=true on a GPU cluster, or use LoRA "
             "without quantization on CPU")
    _require(not (lora.quantize_4bit and lora.r <= 0),
             "train.lora.quantize_4bit (QLoRA) needs train.lora.r > 0: a 4-bit backbone cannot be fully fine-tuned")
    _require(not (lora.quantize_4bit and tc.zero_stage == 3),
             "train.lora.quantize_4bit=true with train.zero_stage=3 is not supported: ZeRO-3 would partition the "
             "4-bit base weights, which bitsandbytes must keep whole; use train.zero_stage=2 (the frozen 4-bit base "
             "is small, and ZeRO-2 still shards the adapters' optimizer states and gradients)")


def validate_with_model(cfg: TrainJobConfig, hf_config) -> None:
    """The training rules that need the model's config (``config.json`` only): heads vs sequence
    parallelism, and the pooling the model kind allows."""
    from ray_rm.model.build import detect_kind, resolve_pooling
    from ray_rm.model.sequence_parallel import check_heads, model_heads

    resolve_pooling(detect_kind(hf_config, cfg.model.kind), cfg.model.pooling)
    if cfg.train.sequence_parallel_size > 1:
        try:
            check_heads(*model_heads(hf_config), cfg.train.sequence_parallel_size)
        except ValueError as exc:
            raise ConfigError(f"{cfg.model.name_or_path}: {exc}") from None


# ------------------------------------------------------------------------------------------------ data
def _data(data: DataConfig) -> None:
    """Packing settings that need no model; ``max_length`` 0 (auto) is resolved later, in one place
    (``data/prepare.resolve_max_length``)."""
    _require(data.max_length >= 0, f"config key 'data.max_length' must be positive, or 0 for auto, got "
                                   f"{data.max_length}")
    _require(data.pack_tokens >= 2, f"config key 'data.pack_tokens' must be at least 2, got {data.pack_tokens}")
    _require(not data.max_length or data.pack_tokens >= 2 * data.max_length,
             f"data.pack_tokens ({data.pack_tokens}) must be at least 2 x data.max_length ({data.max_length}) so "
             "that any pair fits in one packed row")


def _inspect(cfg: InspectDataConfig) -> None:
    _data(cfg.data)


# ------------------------------------------------------------------------------------------------ serve
def _serve(cfg: ServeConfig) -> None:
    _require(bool(cfg.model_path), "serve.model_path is required: an exported ray_rm checkpoint or an HF sequence-"
                                   "classification reward model")
    _require(cfg.num_replicas >= 1 and (not cfg.max_replicas or cfg.max_replicas >= cfg.num_replicas),
             "serve.num_replicas must be >= 1 and serve.max_replicas 0 or >= num_replicas")
    _require(cfg.max_items >= 1 and cfg.max_body_mb > 0 and cfg.batch_tokens >= 1 and cfg.pack_tokens >= 1,
             "serve.max_items, max_body_mb, batch_tokens and pack_tokens must be positive")
    _require(cfg.route_prefix.startswith("/"), f"serve.route_prefix must start with '/', got '{cfg.route_prefix}'")
    for path in [cfg.model_path, *cfg.ensemble_paths]:
        looks_local = path.startswith(("/", ".", "~"))
        _require(not looks_local or Path(path).expanduser().exists(), f"reward model checkpoint '{path}' does not exist")


def _serve_job(job: ServeJobConfig) -> None:
    _serve(job.serve)


# ------------------------------------------------------------------------------------------------ relabel, eval
def _relabel(job: RelabelJobConfig) -> None:
    cfg: RelabelConfig = job.relabel
    _require(bool(cfg.model_path), "relabel.model_path is required (an exported ray_rm checkpoint or HF RM folder)")
    _require(bool(cfg.input_files), "relabel.input_files is required (files, folders or hf:// datasets)")
    _require(cfg.min_margin >= 0, f"relabel.min_margin must be >= 0, got {cfg.min_margin}")
    _require(cfg.rows_per_task > 0 and cfg.actors > 0 and cfg.pack_tokens > 0,
             "relabel.rows_per_task, relabel.actors and relabel.pack_tokens must be positive")


def _eval(job: EvalJobConfig) -> None:
    _require(bool(job.eval.model_path), "eval.model_path is required (an exported ray_rm checkpoint or HF RM folder)")
    _require(job.eval.num_bins >= 1 and job.eval.length_buckets >= 1,
             "eval.num_bins and eval.length_buckets must be positive")
    _require(job.eval.actors > 0 and job.eval.pack_tokens > 0, "eval.actors and eval.pack_tokens must be positive")


_RULES = ((TrainJobConfig, _train), (ServeJobConfig, _serve_job), (ServeConfig, _serve),
          (RelabelJobConfig, _relabel), (EvalJobConfig, _eval), (InspectDataConfig, _inspect))
