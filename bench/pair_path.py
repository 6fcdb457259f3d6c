"""The path of one preference pair from a JSONL row to its loss: which ray_rm files it crosses, in call order.

What this script is for: measuring the code's "one way through" (issue 13): it traces one pair through
``data.pipeline.direct_packed_rows`` (read, normalize, filter, tokenize, pack) -> ``model.batch.collate_row``
-> the reward model's forward (a tiny random Llama with SmolLM2's tokenizer) -> ``losses.compute_loss``, with
``sys.setprofile``. It must not change what it measures: no Ray, no DeepSpeed, the library's own calls only.

How it counts: every Python call whose code lives in ray_rm/ is an event; consecutive events in the same file
are one visit. ``files`` lists the files in first-visit order, ``moves`` counts the transitions between visits
(calls into another file and returns to the caller's file alike), ``returns`` counts the visits to a file
already left before. Calls inside torch/transformers are not events (their calls back into ray_rm are).

  python bench/pair_path.py            # prints JSON
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PACKAGE = str(ROOT / "ray_rm") + "/"
PAIR = {"prompt": "What is the capital of France?", "chosen": " Paris.", "rejected": " Lyon, I think."}


def tiny_model_dir(folder: Path) -> str:
    """A 2-layer random Llama with SmolLM2's tokenizer (the tests' tiny decoder), saved to ``folder``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ray_rm.assets import resolve_model_path

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, eos_token_id=2, bos_token_id=1, pad_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m-instruct")).save_pretrained(folder)
    return str(folder)


def visits_of(events: list[str]) -> list[str]:
    visits = []
    for f in events:
        if not visits or visits[-1] != f:
            visits.append(f)
    return visits


def trace_one_pair(model_dir: str, data_file: str) -> list[str]:
    """The ray_rm files of every call from the JSONL row to the loss, in order (one entry per call)."""
    from ray_rm.config_schema import DataConfig, ModelConfig
    from ray_rm.data.pipeline import PackSettings, direct_packed_rows
    from ray_rm.losses import LossSettings, compute_loss
    from ray_rm.model.batch import collate_row
    from ray_rm.model.build import build_reward_model

    model = build_reward_model(ModelConfig(name_or_path=model_dir), seed=0)  # setup: not on the pair's path
    data_cfg = DataConfig(train_files=[data_file], max_length=128, pack_tokens=256)
    settings = PackSettings(tokenizer_path=model_dir, share_prompt=True, seed=None)
    events: list[str] = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(PACKAGE):
            events.append(frame.f_code.co_filename[len(PACKAGE):])

    sys.setprofile(profile)
    try:
        rows, _ = direct_packed_rows([data_file], data_cfg, settings)
        batch = collate_row(rows[0])
        compute_loss(model(batch), batch, LossSettings("bt"))
    finally:
        sys.setprofile(None)
    return events


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_file = Path(tmp) / "pair.jsonl"
        data_file.write_text(json.dumps(PAIR) + "\n")
        events = trace_one_pair(tiny_model_dir(Path(tmp) / "model"), str(data_file))
    visits = visits_of(events)
    files = list(dict.fromkeys(visits))
    left, returns = set(), 0
    for prev, cur in zip(visits, visits[1:]):
        left.add(prev)
        returns += cur in left
    print(json.dumps({"files": files, "num_files": len(files), "moves": len(visits) - 1, "returns": returns,
                      "calls": len(events), "visits": visits}, indent=2))


if __name__ == "__main__":
    main()
