"""The attribute demo (``python jobs/demo.py --attributes``): train a multi-objective reward model, then
measure per-attribute correlation with the known ratings before and after training.

What this module is for: showing ``model.head=attributes`` end to end on one local Ray cluster with data a
program can check (``ray_rm/data/demo_attributes.py``: correctness and verbosity vary independently and
are known by construction). Stages: export the untrained model (the "before" point: same backbone, same
head initialisation), train (rated rows + pairs), then ``ray_rm eval`` both checkpoints on held-out
rated rows (per-attribute RMSE, Pearson, Spearman) and on held-out pairs (pairwise accuracy of the
combined reward). It must not hold training or eval logic of its own: it calls the jobs.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ray_rm.config import load_config
from ray_rm.config_schema import TrainJobConfig

DEMO_ATTRIBUTES_CONFIG = str(Path(__file__).parent / "configs" / "demo_attributes.yaml")
QUICK_TRAIN = ["data.builtin_size=48", "train.max_steps=2"]


def _train_config(root: Path, quick: bool, overrides: list[str]) -> TrainJobConfig:
    return load_config(TrainJobConfig, DEMO_ATTRIBUTES_CONFIG,
                       [f"output_dir={root / 'train'}", *(QUICK_TRAIN if quick else []), *overrides])


def export_untrained(cfg: TrainJobConfig, out_dir: Path) -> str:
    """The model training starts from (LoRA adapters are zero at init, so this is the base model + the
    initial head), exported the same way as the trained one."""
    from ray_rm.assets import resolve_model_path
    from ray_rm.model.build import build_reward_model
    from ray_rm.model.export import export_hf

    model = build_reward_model(cfg.model, cfg.train.lora, seed=cfg.train.seed)
    meta = {"chat_template": cfg.data.chat_template, "max_length": cfg.data.max_length}
    return str(export_hf(model, resolve_model_path(cfg.model.name_or_path), out_dir, meta))


def evaluate(root: Path, name: str, hf_dir: str, files: list[str], size: int) -> dict:
    from ray_rm.eval.config import EvalJobConfig
    from ray_rm.eval.runner import run_eval

    report = run_eval(load_config(EvalJobConfig, None, [
        f"output_dir={root / name}", f"eval.model_path={hf_dir}", f"data.eval_files=[{','.join(files)}]",
        f"data.builtin_size={size}"]))
    per = (report.get("attributes") or {}).get("per_attribute", {})
    return {"pairwise_accuracy": report["accuracy"], "pairs": report["metrics"]["num_pairs"],
            "rated_rows": (report.get("attributes") or {}).get("rows", 0),
            "attributes": {n: {k: round(v, 3) if isinstance(v, float) else v for k, v in m.items()}
                           for n, m in per.items()}}


def run_attribute_demo(output_dir: str = "outputs/demo_attributes", quick: bool = False,
                       train_overrides: list[str] | None = None, verbose: bool = False) -> dict:
    """Every stage on one local Ray cluster; ``verbose`` brings back the libraries' INFO logs (ray.verbose)."""
    from ray_rm.config_schema import RayConfig
    from ray_rm.ray_utils import init_ray
    from ray_rm.train.driver import run_training

    root = Path(output_dir).resolve()
    started = time.time()
    cfg = _train_config(root, quick, train_overrides or [])
    init_ray(RayConfig(address="local", verbose=verbose))
    before_dir = export_untrained(cfg, root / "before" / "hf")
    train = run_training(cfg)
    # held-out questions (disjoint words and numbers): rated rows, and every 4th row a pair
    size = cfg.data.builtin_size
    files = ["builtin:attributes-mixed-eval"]
    result = {"before": evaluate(root, "eval_before", before_dir, files, size),
              "after": evaluate(root, "eval_after", train["hf_checkpoint"], files, size),
              "train": {"steps": train["steps"], "wall_time_s": train["wall_time_s"],
                        "hf_checkpoint": train["hf_checkpoint"], "export_check": train["export_check"]["passed"]},
              "total_s": round(time.time() - started, 1)}
    (root / "demo_attributes_summary.json").write_text(json.dumps(result, indent=2, default=str))
    print_summary(result, root)
    return result


def print_summary(r: dict, root: Path) -> None:
    lines = ["", f"[ray_rm demo --attributes] finished in {r['total_s']:.0f}s; {r['train']['steps']} steps",
             f"  {'attribute':<12} {'pearson before':>15} {'after':>7} {'spearman before':>16} {'after':>7} "
             f"{'rmse before':>12} {'after':>7}"]
    for name, after in r["after"]["attributes"].items():
        b = r["before"]["attributes"][name]
        lines.append(f"  {name:<12} {b['pearson']:>15.3f} {after['pearson']:>7.3f} {b['spearman']:>16.3f} "
                     f"{after['spearman']:>7.3f} {b['rmse']:>12.3f} {after['rmse']:>7.3f}")
    lines.append(f"  summary {root / 'demo_attributes_summary.json'}")
    print("\n".join(lines), flush=True)
