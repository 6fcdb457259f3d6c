"""The path of one preference pair from a JSONL row to its loss: which ray_rm files it crosses, and how.

What this script is for: measuring the code's "one way through" (issue 13). It traces one pair through
``data.pipeline.direct_packed_rows`` (read, normalize, filter, tokenize, pack: the pipeline's Ray-free twin)
-> ``model.batch.collate_row`` -> the reward model's forward (a tiny random Llama with SmolLM2's tokenizer)
-> ``losses.compute_loss``, with ``sys.setprofile``, once for a pair with an explicit prompt and once for an
HH-RLHF-style pair whose prompt is implicit (the responses' shared prefix). It must not change what it
measures: no Ray, no DeepSpeed, the library's own calls only. Setup, as in a training job, is outside the
trace: building the model and making the loss settings (they check the loss name once).

How it counts (the ``call_tree`` numbers): every Python call whose code lives in ray_rm/ is an event, made
by the nearest ray_rm frame below it (a call transformers makes into ray_rm's attention counts as made by
``reward_model.py``, which called the backbone; the bench itself is ``<entry>``). A call within one file is
not a move. A call into another file is a *call edge* (caller file -> callee file); returning to the caller
when a function ends is not a move, and the same edge repeated (by a loop per row or per layer, or to
another function of the same file) counts once. ``moves`` = distinct call edges; ``files`` = the files
entered; a *return* = an edge into a file that an earlier edge already entered, i.e. a file entered from a
second place: a callback into a file still waiting below (A -> B -> A), or a later stage calling back into
an earlier stage's file (tokenize <-> packer per row). No returns means the files form a tree: each is
entered from exactly one other file, so a reader follows each file from one place, top to bottom.

The ``old_counting`` numbers are the first version of this script, kept so that the change of counting is
visible: consecutive events in one file are one visit, ``moves`` counts every change of visit (calls and
returns to the caller alike), ``returns`` counts visits to a file visited before.

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
ENTRY = "<entry>"
PAIRS = {
    "explicit_prompt": {"prompt": "What is the capital of France?", "chosen": " Paris.", "rejected": " Lyon, I think."},
    "implicit_prompt": {"chosen": "\n\nHuman: What is the capital of France?\n\nAssistant: Paris.",
                        "rejected": "\n\nHuman: What is the capital of France?\n\nAssistant: Lyon, I think."},
}


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


def _in_package(frame) -> str | None:
    name = frame.f_code.co_filename
    return name[len(PACKAGE):] if name.startswith(PACKAGE) else None


def _caller_file(frame) -> str:
    """The file of the nearest ray_rm frame below ``frame`` (frames of torch/transformers are skipped)."""
    frame = frame.f_back
    while frame is not None:
        found = _in_package(frame)
        if found:
            return found
        frame = frame.f_back
    return ENTRY


def trace_one_pair(model_dir: str, data_file: str) -> list[tuple[str, str]]:
    """(caller file, callee file) of every ray_rm call from the JSONL row to the loss, in order."""
    from ray_rm.config_schema import DataConfig, ModelConfig
    from ray_rm.data.pipeline import PackSettings, direct_packed_rows
    from ray_rm.losses import LossSettings, compute_loss
    from ray_rm.model.batch import collate_row
    from ray_rm.model.build import build_reward_model

    model = build_reward_model(ModelConfig(name_or_path=model_dir), seed=0)  # setup: not on the pair's path
    loss_settings = LossSettings("bt")  # setup: the job's config
    data_cfg = DataConfig(train_files=[data_file], max_length=128, pack_tokens=256)
    settings = PackSettings(tokenizer_path=model_dir, share_prompt=True, seed=None)
    events: list[tuple[str, str]] = []

    def profile(frame, event, arg):
        if event == "call":
            callee = _in_package(frame)
            if callee:
                events.append((_caller_file(frame), callee))

    sys.setprofile(profile)
    try:
        rows, _ = direct_packed_rows([data_file], data_cfg, settings)
        batch = collate_row(rows[0])
        compute_loss(model(batch), batch, loss_settings)
    finally:
        sys.setprofile(None)
    return events


def call_tree(events: list[tuple[str, str]]) -> dict:
    """The counting of the module docstring: distinct call edges between files, and edges into a file entered before."""
    edges = list(dict.fromkeys((a, b) for a, b in events if a != b))
    entered, returns = set(), []
    for caller, callee in edges:
        if callee in entered:
            returns.append(f"{caller} -> {callee}")
        entered.add(callee)
    files = list(dict.fromkeys(b for _, b in edges))
    return {"num_files": len(files), "moves": len(edges), "returns": len(returns), "files": files,
            "edges": [f"{a} -> {b}" for a, b in edges], "return_edges": returns}


def old_counting(events: list[tuple[str, str]]) -> dict:
    """The first version's counting: visits (runs of events in one file), every change of visit a move."""
    visits = []
    for _, f in events:
        if not visits or visits[-1] != f:
            visits.append(f)
    left, returns = set(), 0
    for prev, cur in zip(visits, visits[1:]):
        left.add(prev)
        returns += cur in left
    return {"num_files": len(set(visits)), "moves": len(visits) - 1, "returns": returns, "calls": len(events)}


def main() -> None:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = tiny_model_dir(Path(tmp) / "model")
        for name, pair in PAIRS.items():
            data_file = Path(tmp) / f"{name}.jsonl"
            data_file.write_text(json.dumps(pair) + "\n")
            events = trace_one_pair(model_dir, str(data_file))
            out[name] = {"call_tree": call_tree(events), "old_counting": old_counting(events)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
