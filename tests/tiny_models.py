"""Tiny random decoders with SmolLM2's vocabulary, saved the way users' models are.

What this module is for: the one recipe behind every tiny causal LM the tests build (conftest's fixtures and
the per-module shapes of the sequence-parallel tests), so that a shape differs from another only in the
numbers that matter to its test. It must not hold fixtures (``conftest.py``) or assertions.
"""
from __future__ import annotations

from pathlib import Path

# What every tiny decoder shares: SmolLM2's vocabulary and special ids, room for 4096 positions, 2 layers.
SMOLLM2_IDS = dict(vocab_size=49152, max_position_embeddings=4096, eos_token_id=2, bos_token_id=1,
                   pad_token_id=2, tie_word_embeddings=True, num_hidden_layers=2)


def save_pretrained_with_tokenizer(path: Path, model, tokenizer_dir: str | None) -> str:
    """``model`` saved to ``path`` with the tokenizer of ``tokenizer_dir`` beside it (none: weights only)."""
    model.save_pretrained(path)
    if tokenizer_dir:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return str(path)


def save_tiny_decoder(path: Path, architecture: str, tokenizer_dir: str, seed: int, **shape) -> str:
    """A random ``architecture`` ("llama", "qwen2") decoder of ``shape`` (hidden, heads, ...) saved to ``path``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(architecture, **(SMOLLM2_IDS | shape))
    return save_pretrained_with_tokenizer(path, AutoModelForCausalLM.from_config(config), tokenizer_dir)
