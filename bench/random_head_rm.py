"""The serving and relabeling benchmarks' reward model: SmolLM2-135M-Instruct with a random value head.

Throughput does not need a trained head, so the model is exported once into the ray_rm cache and reused. It
is exported again when the cached copy was written in another export format: a format-1 copy appends EOS to
plain text, which a plain-transformers baseline does not, so the servers compared would compute different
rewards (seen 2026-11-30: a stale copy gave a 5.08 reward difference in bench/serve_throughput.py).
"""
from __future__ import annotations

import json
import os
import shutil


def random_head_rm(max_length: int) -> str:
    """Path of the exported checkpoint (``max_length`` is its serving limit: each value gets its own copy)."""
    from ray_rm.assets import cache_dir, resolve_model_path
    from ray_rm.config_schema import ModelConfig
    from ray_rm.model.build import build_reward_model
    from ray_rm.model.export import FORMAT_VERSION, export_hf

    out = cache_dir() / "bench" / f"smollm2-135m-rm-randhead-{max_length}"
    config = out / "config.json"
    cached = json.loads(config.read_text()).get("ray_rm", {}) if config.is_file() else {}
    if cached.get("format_version") != FORMAT_VERSION:
        model = build_reward_model(ModelConfig(name_or_path="smollm2-135m-instruct"), seed=0)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        export_hf(model, resolve_model_path("smollm2-135m-instruct"), tmp,
                  {"chat_template": "auto", "max_length": max_length, "reward_mean": 0.0, "reward_std": 1.0})
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    return str(out)
