"""Helpers shared by the training tests: small real runs, their metrics, consumed pair ids, exported weights."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ray_rm.config import load_config
from ray_rm.config_schema import TrainJobConfig

from conftest import HH_TEST, HH_TRAIN


def tiny_overrides(model_dir: str, out: Path, **extra) -> list[str]:
    """A fast run on real hh-rlhf pairs: 48 pairs packed into ~1k-token rows."""
    base = {
        "model.name_or_path": model_dir, "output_dir": str(out),
        "data.train_files": str(HH_TRAIN), "data.eval_files": str(HH_TEST), "data.limit": 48,
        "data.max_length": 384, "data.pack_tokens": 1024, "train.num_workers": 2, "train.lr": 3e-3,
        "train.lora.r": 0, "train.max_steps": 0, "train.num_epochs": 1, "train.eval_every": 0,
        "train.checkpoint_every": 0, "train.warmup_ratio": 0.0, "train.tensorboard": False,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def tiny_config(model_dir: str, out: Path, **extra) -> TrainJobConfig:
    return load_config(TrainJobConfig, None, tiny_overrides(model_dir, out, **extra))


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def consumed_pairs(out: Path) -> Counter:
    """Multiset of pair ids that contributed to the final model: the last record of every (rank, step)."""
    last: dict = {}
    for f in sorted((Path(out) / "consumed").glob("rank*.jsonl")):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            last[(rec["rank"], rec["step"])] = rec["ids"]
    return Counter(i for ids in last.values() for i in ids)


def head_weight(hf_dir: str | Path):
    from safetensors.torch import load_file

    weights = load_file(str(Path(hf_dir) / "model.safetensors"))
    key = next(k for k in weights if k.startswith(("score.", "classifier.")) and k.endswith("weight"))
    return weights[key]


def all_weights(hf_dir: str | Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(hf_dir) / "model.safetensors"))


def eval_accuracy_by_transformers(cfg, hf_dir) -> tuple[float, int]:
    """An independent eval: every kept eval pair, tokenized as training tokenizes it (``prepare.process_task``),
    each sequence scored alone by plain transformers; (fraction of pairs ranked right, ties wrong; pairs)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from ray_rm.data.prepare import make_encoder, ordered_tasks, process_task

    encoder = make_encoder(cfg.model.name_or_path, cfg.data)
    clf = AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
    wins = []
    for task in ordered_tasks(cfg.data.eval_files, cfg.data, None):
        groups, _ = process_task(task, encoder, cfg.data, share_prompt=False)
        for g in groups:
            with torch.no_grad():
                r = [clf(input_ids=torch.tensor([ids])).logits[0, 0].item() for ids in g.sequences]
            best = g.ranks.index(min(g.ranks))
            wins += [r[best] > r[j] for j in range(len(r)) if g.ranks[j] > g.ranks[best]]
    return sum(wins) / len(wins), len(wins)
