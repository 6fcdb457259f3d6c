"""Build a ``RewardModel`` for training (from a base LM) or inference (from an exported RM checkpoint).

It must not hold head semantics (``heads.py``), attention (``attention.py``, ``attn_*.py``) or config rules
(``ray_rm/validation.py``).

Both paths load ``AutoModelForSequenceClassification(num_labels=1)`` and split it into backbone and
head, so training, export and any consumer agree on the architecture. LoRA wraps only the backbone:
the value head stays a plain, fully trained module that is always part of the state dict.
"""
from __future__ import annotations

import logging
import math

import torch

from ray_rm.assets import resolve_model_path
from ray_rm.config_schema import LoraConfig, ModelConfig
from ray_rm.errors import UserError
from ray_rm.model import attention
from ray_rm.model.attention import model_needs
from ray_rm.model.heads import HeadKind, get_head
from ray_rm.model.reward_model import RewardModel

log = logging.getLogger(__name__)

ENCODER_TYPES = {"bert", "roberta", "deberta", "deberta-v2", "distilbert", "electra", "xlm-roberta", "modernbert"}
HEAD_NAMES = ("score", "classifier")


def detect_kind(hf_config, requested: str = "auto") -> str:
    """``decoder`` or ``encoder``: as requested, or (``auto``) from the model type."""
    if requested in ("decoder", "encoder"):
        return requested
    return "encoder" if hf_config.model_type in ENCODER_TYPES else "decoder"


ATTN_ALIASES = {"auto": "auto", "varlen": "auto", "flash_attention_2": "flash_attn"}


def attn_choices() -> tuple:
    """Every ``attn_implementation`` value: aliases, the backend registry's names, transformers' dense ones."""
    return (*ATTN_ALIASES, *attention.REGISTRY, "sdpa", "eager")


def resolve_attn(requested: str, device_type: str, dtype: torch.dtype | None = None,
                 needs: set = frozenset()) -> tuple[str, str]:
    """(transformers attn_implementation, ray_rm attention backend) for a config value on this device/dtype.

    ``auto``/``varlen`` take the first backend of ``attention.AUTO_ORDER`` that runs here (torch's
    varlen flash kernel on CUDA in bf16/fp16, else SDPA blocks; fp32 on CUDA therefore uses SDPA blocks);
    a named backend (``flash_attention_2`` = ``flash_attn``) is refused with its reason when it cannot run."""
    if requested in ("sdpa", "eager"):
        return requested, "dense"
    name = ATTN_ALIASES.get(requested, requested)
    backend, notes = attention.select(name, device_type, dtype, needs)
    if backend is None:
        hint = " (pip install flash-attn builds it from source)" if name == "flash_attn" else ""
        raise UserError(f"model.attn_implementation={requested} cannot run with model.dtype="
                        f"{str(dtype).removeprefix('torch.')} on {device_type}: {'; '.join(notes)}{hint}; "
                        "use 'auto' to pick a backend that can")
    for note in notes:
        log.debug("attention backend %s passed over: %s", *note.split(": ", 1))  # shown with --verbose
    return attention.ATTN_NAME, backend


def resolve_dtype(requested: str, device_type: str) -> torch.dtype:
    """auto: bf16 on CUDA GPUs that support it (Ampere and newer), else fp32; fp16 is opt-in (loss-scaled)."""
    if requested == "auto":
        if device_type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[requested]


def _disable_dropout(hf_config) -> None:
    for name, value in list(vars(hf_config).items()):
        if isinstance(value, float) and ("dropout" in name) and value > 0:
            setattr(hf_config, name, 0.0)


def _split(clf, kind: str, pooling: str, attn_impl: str, backend: str, head_kind: HeadKind) -> RewardModel:
    head_name = next((n for n in HEAD_NAMES if isinstance(getattr(clf, n, None), torch.nn.Linear)), None)
    if head_name is None:
        raise UserError(f"{type(clf).__name__} has no linear 'score' or 'classifier' head; unsupported backbone")
    base_prefix = clf.base_model_prefix
    return RewardModel(getattr(clf, base_prefix), getattr(clf, head_name), kind=kind, pooling=pooling,
                       attn_implementation=attn_impl, attn_backend=backend, head_name=head_name,
                       base_prefix=base_prefix, head_kind=head_kind)


def _load_quietly(auto_cls, path: str, kwargs: dict):
    """``from_pretrained`` without transformers' LOAD REPORT table. Loading a base LM as a reward model always
    reports its LM head as unexpected and the new reward head as missing (both by design), once per process,
    so every training worker would print the same table; ``_warn_about_unexpected_loading`` says what matters.
    A filter, not a level: transformers 5.23 runs an extra tensor-parallel check (and warns) when that logger's
    own level is WARNING or above."""
    report_logger = logging.getLogger("transformers.modeling_utils")
    drop_report = _DropLoadReport()
    report_logger.addFilter(drop_report)
    try:
        return auto_cls.from_pretrained(path, output_loading_info=True, **kwargs)
    finally:
        report_logger.removeFilter(drop_report)


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


def _warn_about_unexpected_loading(path: str, head_name: str, loading_info: dict) -> None:
    """A warning for backbone weights the checkpoint lacks (transformers initialised them at random, which
    is a wrong base model or a broken checkpoint); the fresh reward head and dropped LM-head keys are expected."""
    missing = [k for k in loading_info.get("missing_keys", ()) if not k.startswith(head_name + ".")]
    if missing:
        log.warning("%s lacks %d backbone weights, initialised at random: %s", path, len(missing),
                    ", ".join(sorted(missing)[:8]) + (" ..." if len(missing) > 8 else ""))
    log.debug("%s: reward head %s initialised fresh; unused checkpoint keys: %s", path, head_name,
              sorted(loading_info.get("unexpected_keys", ())))


def resolve_pooling(kind: str, requested: str) -> str:
    """The pooling a model kind uses: ``auto`` -> last (decoder) / cls (encoder); others must suit the kind."""
    if requested == "auto":
        return "last" if kind == "decoder" else "cls"
    allowed = ("last",) if kind == "decoder" else ("cls", "mean")
    if requested not in allowed:
        raise UserError(f"model.pooling '{requested}' is not available for a {kind}; use one of {allowed}")
    return requested


def build_reward_model(cfg: ModelConfig, lora: LoraConfig | None = None, device: torch.device | str = "cpu",
                       seed: int = 0) -> RewardModel:
    """A trainable reward model from a base LM (or an existing RM checkpoint to continue training)."""
    lora = lora or LoraConfig()
    from transformers import AutoConfig, AutoModelForSequenceClassification

    device = torch.device(device)
    path = resolve_model_path(cfg.name_or_path)
    hf_config = AutoConfig.from_pretrained(path)
    kind = detect_kind(hf_config, cfg.kind)
    pooling = resolve_pooling(kind, cfg.pooling)
    dtype = resolve_dtype(cfg.dtype, device.type)
    attn_impl, backend = resolve_attn(cfg.attn_implementation, device.type, dtype,
                                      model_needs(hf_config, training_dropout=cfg.keep_dropout))
    attention.register()
    head_kind = get_head(cfg.head)
    hf_config.num_labels = head_kind.width(cfg, hf_config)
    if not cfg.keep_dropout:
        _disable_dropout(hf_config)
    kwargs = {"config": hf_config, "dtype": dtype, "attn_implementation": attn_impl}
    if lora.quantize_4bit:
        kwargs["quantization_config"] = _qlora_config(device, dtype)
    clf, loading_info = _load_quietly(AutoModelForSequenceClassification, path, kwargs)
    model = _split(clf, kind, pooling, attn_impl, backend, head_kind)
    _warn_about_unexpected_loading(path, model.head_name, loading_info)
    if head_kind.combiner is not None:
        model.combiner = head_kind.combiner(cfg, hf_config)
        model.combiner.check_head(model.head)
    if head_kind.name == "prm":
        model.step_separator = cfg.step_separator
    head = model.head
    torch.manual_seed(seed)
    std = cfg.head_init_std or 1.0 / math.sqrt(hf_config.hidden_size + 1)
    with torch.no_grad():
        head.weight.normal_(0.0, std)
        if head.bias is not None:
            head.bias.zero_()
    head.float()  # fp32 master weights; under DeepSpeed bf16 the module copy is bf16 but it computes in fp32
    if cfg.gradient_checkpointing:
        model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora.r > 0:
        model.backbone = _wrap_lora(model.backbone, lora, cfg.gradient_checkpointing)
    return model.to(device) if not lora.quantize_4bit else model


def _qlora_config(device: torch.device, dtype: torch.dtype):
    if device.type != "cuda":
        raise UserError("QLoRA (train.lora.quantize_4bit=true) needs a CUDA GPU: bitsandbytes 4-bit kernels do "
                        "not run on CPU. Use LoRA without quantization (train.lora.r>0) on CPU.")
    try:
        from transformers import BitsAndBytesConfig
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("QLoRA needs bitsandbytes: pip install 'ray_rm[gpu]'") from None
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype if dtype != torch.float32 else torch.bfloat16)


def _wrap_lora(backbone, lora: LoraConfig, gradient_checkpointing: bool):
    """LoRA adapters on the backbone. For QLoRA nothing is upcast to fp32 first (peft's
    prepare_model_for_kbit_training would, and DeepSpeed bf16 casts every parameter back): the frozen
    non-quantized weights stay in the model dtype, adapters and head keep fp32 masters in the optimizer,
    and the head computes in fp32 (``RewardModel._head``)."""
    import peft

    if lora.quantize_4bit:
        for p in backbone.parameters():
            p.requires_grad_(False)
        if gradient_checkpointing:  # the frozen 4-bit embeddings give no grad for checkpointed segments to follow
            backbone.enable_input_require_grads()
    targets = lora.target_modules
    peft_cfg = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                               target_modules=targets[0] if targets == ["all-linear"] else targets, bias="none")
    return peft.get_peft_model(backbone, peft_cfg)


def load_reward_model(path: str, device: torch.device | str = "cpu", dtype: str = "auto",
                      attn_implementation: str = "auto") -> RewardModel:
    """An inference model from an exported ray_rm checkpoint or any HF sequence-classification RM."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    device = torch.device(device)
    path = resolve_model_path(path)
    hf_config = AutoConfig.from_pretrained(path)
    meta = getattr(hf_config, "ray_rm", None) or {}
    head_kind = get_head(meta.get("head", "scalar"))
    width = head_kind.width(None, hf_config)
    if getattr(hf_config, "num_labels", 1) != width:
        raise UserError(f"'{path}' has {hf_config.num_labels} labels; a {head_kind.name} reward model has {width}")
    kind = meta.get("kind") or detect_kind(hf_config)
    pooling = meta.get("pooling") or resolve_pooling(kind, "auto")
    torch_dtype = resolve_dtype(dtype, device.type)
    attn_impl, backend = resolve_attn(attn_implementation, device.type, torch_dtype, model_needs(hf_config))
    attention.register()
    clf = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch_dtype, attn_implementation=attn_impl)
    model = _split(clf, kind, pooling, attn_impl, backend, head_kind)
    if head_kind.combiner is not None:
        model.combiner = head_kind.combiner(None, hf_config)
    if head_kind.name == "prm":
        model.step_separator = meta.get("step_separator", "\n")
    model.head.float()
    return model.to(device).eval()
