"""The process-reward demo behind ``python jobs/demo.py --prm`` (``make demo-prm``): a PRM finds the first wrong
step of held-out arithmetic solutions after training, where the untrained one cannot.

What it does, on one local Ray cluster: builds SmolLM2-135M-Instruct with a fresh ``prm`` head and evaluates
it (the "before" model: the same weights training starts from), trains it with LoRA on
``builtin:arith-steps`` (``ray_rm/data/demo_prm.py``: every step checkable by a program, wrong steps
injected), evaluates the trained export on ``builtin:arith-steps-eval`` (problems whose starting numbers
never occur in training), and writes ``prm_demo.png`` (step accuracy, ProcessBench first-error F1 and
Best-of-4 accuracy, before vs after) and ``prm_demo_summary.json``.
What it must not do: anything the jobs do not do for a user (it calls the train and eval jobs).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ray_rm.config import load_config
from ray_rm.config_schema import DEMO_TRAIN_CONFIG, TrainJobConfig
from ray_rm.plotting import png_figure

# The budget: the whole demo in < 10 min on a 2-core machine shared with other work (README has the measured
# wall time). Two single-core workers: they trained ~160 tokens/s on this data where one worker with two
# threads got ~95 (2026-11-30, similar load). 192 problems (x 4 solutions, three or four problems per
# 512-token row once cut, see below; 28 optimizer steps, one epoch): 256 problems (37 steps, +65 s of
# training) moved the trained PRM towards "correct" (first-error F1 0.72 against 0.79, error accuracy 0.59
# against 0.74) without a clear gain (Best-of-4 0.78 against 0.72, step accuracy 0.72 against 0.74).
# The head learns at 10x the LoRA rate: the frozen model's last hidden state already separates the demo's
# wrong steps (ray_rm/data/demo_prm.py), so most of the early gain is the head's. Half these rates
# (5e-4 / 5e-3) learned less: Best-of-4 0.50 and step accuracy 0.69, against 0.67 and 0.77 (Math-Shepherd
# labels, 36 steps).
# Why training solutions end at their first wrong step (train.prm_cut_at_first_error) and wrong steps weigh
# 2.5x (train.prm_pos_weight=0.4): with Math-Shepherd labels (every step after the first error labelled
# wrong, though it computes correctly from the wrong value) late steps are mostly labelled wrong, and 36 steps
# learned step position: every correct solution got a false first error at ProcessBench's 0.5 threshold
# (first-error F1 0.00, though the first error was found in 64% of wrong solutions). Cut but unweighted,
# one wrong label per wrong solution against ~4.4 right ones, no step fell below 0.5 (F1 0.00 again). Cut
# and weighted: F1 0.79. Why 0.4, between plain (1) and balanced (~0.23): a head-only probe (frozen step
# features, 128 problems, 32-64 Adam steps of 2-4 problems, three schedules) was steadiest near 0.37:
# first-error F1 0.29-0.39, against 0.08-0.35 unweighted and 0.11-0.37 balanced.
# The trade: the eval's step accuracy counts the steps after a first error as wrong (Math-Shepherd), and a
# PRM trained on first errors calls those locally right steps right (0.74 against 0.77, README).
# Why 0.6 now: those figures came from the materializing feed. On the streaming feed (rows in per-task order,
# 29 steps) the same 29 LoRA steps land elsewhere and the outcome is sensitive to the weight, measured once
# each on 2026-11-30: 0.4 gave first-error F1 0.12 (it flagged 93% of correct solutions), 0.5 gave 0.11, 0.6
# gave 0.44 (97% of correct solutions clean, 28% of first errors found), Best-of-4 0.57 at 0.4 and 0.6.
PRM_TRAIN = ["model.head=prm", "train.loss=step_bce", "data.train_files=[builtin:arith-steps]",
             "data.eval_files=[]", "data.builtin_size=192", "data.pack_tokens=512", "data.max_length=256",
             "train.eval_every=0", "train.checkpoint_every=0", "train.lr=1e-3", "train.head_lr=1e-2",
             "train.prm_cut_at_first_error=true", "train.prm_pos_weight=0.6"]
EVAL_SIZE = 240  # builtin:arith-steps-eval holds size // 4 = 60 held-out problems (240 solutions)
QUICK = ["data.builtin_size=24", "train.max_steps=2"]
METRICS = (("step_accuracy", "step accuracy"), ("first_error_f1", "first-error F1"), ("best_of_n", "Best-of-4"))


def _value(report: dict, key: str) -> float:
    return report["best_of_n"]["accuracy"] if key == "best_of_n" else report[key]


def _eval(root: Path, name: str, model_path: str, size: int) -> dict:
    from ray_rm.eval.config import EvalJobConfig
    from ray_rm.eval.runner import run_eval

    return run_eval(load_config(EvalJobConfig, None, [
        f"output_dir={root / name}", f"eval.model_path={model_path}", "data.eval_files=[builtin:arith-steps-eval]",
        f"data.builtin_size={size}", "eval.actors=1"]))


def _untrained_export(root: Path, cfg: TrainJobConfig) -> str:
    """The model training starts from (same base, same head init seed), exported like a trained one."""
    from ray_rm.assets import resolve_model_path
    from ray_rm.model.build import build_reward_model
    from ray_rm.model.export import export_hf

    model = build_reward_model(cfg.model, device="cpu", seed=cfg.train.seed)
    out = root / "before" / "hf"
    export_hf(model, resolve_model_path(cfg.model.name_or_path), out,
              {"chat_template": cfg.data.chat_template, "max_length": cfg.data.max_length})
    return str(out)


def plot_before_after(before: dict, after: dict, path: Path) -> None:
    with png_figure(path, (6, 3.8)) as fig:
        ax = fig.subplots()
        xs = range(len(METRICS))
        for shift, (label, rep) in zip((-0.2, 0.2), (("before training", before), ("after training", after))):
            vals = [_value(rep, k) for k, _ in METRICS]
            bars = ax.bar([x + shift for x in xs], vals, 0.4, label=label)
            ax.bar_label(bars, fmt="%.2f")
        ax.set_xticks(list(xs), [name for _, name in METRICS])
        ax.set_ylim(0, 1.1)
        ax.set_title("SmolLM2-135M + LoRA PRM on held-out arithmetic solutions")
        ax.legend(loc="upper left")


def run_prm_demo(output_dir: str = "outputs/demo-prm", quick: bool = False, overrides: list | None = None,
                 verbose: bool = False) -> dict:
    from ray_rm.config_schema import RayConfig
    from ray_rm.ray_utils import init_ray
    from ray_rm.train.driver import run_training

    root = Path(output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    started = time.time()
    init_ray(RayConfig(address="local", verbose=verbose))
    cfg = load_config(TrainJobConfig, DEMO_TRAIN_CONFIG, [f"output_dir={root / 'train'}", *PRM_TRAIN,
                                                           *(QUICK if quick else []), *(overrides or [])])
    size = 24 if quick else EVAL_SIZE
    before = _eval(root, "eval_before", _untrained_export(root, cfg), size)
    # a fresh run every time: Ray Train resumes a run of the same name, so a second demo (other settings,
    # other worker count) would load the first one's checkpoint, and "after" must come from this run alone
    shutil.rmtree(root / "train", ignore_errors=True)
    t0 = time.time()
    train = run_training(cfg)
    train_s = time.time() - t0
    after = _eval(root, "eval_after", train["hf_checkpoint"], size)
    plot_before_after(before, after, root / "prm_demo.png")
    keep = ("step_accuracy", "step_accuracy_through_first_error", "first_error_f1", "processbench", "best_of_n",
            "solutions", "steps")
    result = {"before": {k: before[k] for k in keep}, "after": {k: after[k] for k in keep},
              "train": {"hf_checkpoint": train["hf_checkpoint"], "steps": train["steps"], "wall_time_s": round(train_s, 1)},
              "figure": str(root / "prm_demo.png"), "reliability_plot": str(root / "eval_after" / "prm_reliability.png"),
              "total_s": round(time.time() - started, 1)}
    (root / "prm_demo_summary.json").write_text(json.dumps(result, indent=2, default=str))
    lines = [f"\n[ray_rm demo --prm] finished in {result['total_s']:.0f}s ({train['steps']} training steps, "
             f"{after['solutions']} held-out solutions, {after['steps']} steps)"]
    for key, name in (*METRICS, ("step_accuracy_through_first_error", "step acc. <= 1st error")):
        lines.append(f"  {name:16s} {_value(before, key):.3f} before -> {_value(after, key):.3f} after")
    lines.append(f"  figure {result['figure']}   summary {root / 'prm_demo_summary.json'}")
    print("\n".join(lines), flush=True)
    return result
