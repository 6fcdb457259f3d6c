"""The eval report: ``report.json`` (metrics), PNG plots, and a one-page self-contained ``report.html``.

It must not compute metrics (``metrics.py``) or import Ray or torch; it only renders them.

Plots use matplotlib's Agg backend (no display needed); the HTML embeds them as base64 so the page
can be mailed or attached to a CI run as one file. The PNGs are also written beside it.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
from pathlib import Path

import numpy as np

from ray_rm.plotting import png_figure

PLOTS = {"reliability": "reliability.png", "histogram": "reward_histogram.png", "length": "length_buckets.png"}


def plot_reliability(metrics: dict, path: Path) -> None:
    with png_figure(path, (5, 4.2)) as fig:
        ax = fig.subplots()
        ax.plot([0.5, 1.0], [0.5, 1.0], "--", color="gray", label="perfect calibration")
        for key, label, color in (("reliability", f"raw (ECE {metrics['ece']:.3f})", "C0"),
                                  ("reliability_temperature_scaled",
                                   f"T={metrics['temperature']:.2f} (ECE {metrics['ece_temperature_scaled']:.3f})",
                                   "C1")):
            bins = [b for b in metrics[key] if b["count"]]
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color=color, label=label)
        ax.set_xlabel("confidence max(p, 1-p), p = sigmoid(r_chosen - r_rejected)")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0.5, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.set_title("Reliability diagram")
        ax.legend(loc="lower right", fontsize=8)


def plot_histogram(chosen: np.ndarray, rejected: np.ndarray, path: Path) -> None:
    with png_figure(path, (5, 4.2)) as fig:
        ax = fig.subplots()
        both = np.concatenate([chosen, rejected])
        bins = np.linspace(both.min(), both.max() + 1e-9, 31) if both.size else 10
        ax.hist(chosen, bins=bins, alpha=0.55, label=f"chosen (mean {chosen.mean():.3f})", color="C2")
        ax.hist(rejected, bins=bins, alpha=0.55, label=f"rejected (mean {rejected.mean():.3f})", color="C3")
        ax.set_xlabel("reward")
        ax.set_ylabel("rows")
        ax.set_title("Rewards: chosen (best) vs rejected (worst)")
        ax.legend(fontsize=8)


def plot_length_buckets(metrics: dict, path: Path) -> None:
    with png_figure(path, (5, 4.2)) as fig:
        ax = fig.subplots()
        buckets = metrics["length_buckets"]
        labels = [f"{b['lo']:.0f}-{b['hi']:.0f}\n(n={b['count']})" for b in buckets]
        ax.bar(range(len(buckets)), [b["accuracy"] for b in buckets], color="C0")
        ax.axhline(metrics["accuracy"], color="gray", linestyle="--", label=f"overall {metrics['accuracy']:.3f}")
        ax.set_xticks(range(len(buckets)), labels, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_xlabel("pair length (mean tokens per sequence)")
        ax.set_ylabel("accuracy")
        ax.set_title("Accuracy by length bucket")
        ax.legend(fontsize=8)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def _table(rows: list[tuple], header: tuple | None = None) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def render_html(report: dict, images: dict[str, bytes]) -> str:
    m = report["metrics"]
    summary = [("model", report["model_path"]), ("examples", m["num_examples"]), ("pairs", m["num_pairs"]),
               ("accuracy (ties wrong)", m["accuracy"]), ("ties", m["ties"]), ("mean margin", m["mean_margin"]),
               ("ECE", m["ece"]), ("temperature", m["temperature"]),
               ("ECE after temperature scaling", m["ece_temperature_scaled"]), ("NLL", m["nll"]),
               ("NLL after temperature scaling", m["nll_temperature_scaled"]),
               ("rows read / dropped", f"{report['drops']['rows_read']} / {report['drops']['rows_dropped']}"),
               ("left-truncated (scored)", (report.get("truncated") or {}).get("examples", 0))]
    if m["ranking"]:
        summary += [("k-way rows", m["ranking"]["num_rows"]), ("Kendall tau-b", m["ranking"]["kendall_tau"]),
                    ("top-1 accuracy", m["ranking"]["top1_accuracy"])]
    parts = [f"<h1>Reward model evaluation</h1><p>{html.escape(', '.join(report['data_files']))}</p>",
             _table(summary)]
    rb = m["rewardbench"]
    if rb:
        parts.append(f"<h2>RewardBench-style sections (score {_fmt(rb['score'])})</h2>")
        parts.append(_table(list(rb["sections"].items()), ("section", "accuracy")))
        parts.append(_table([(k, v["count"], v["accuracy"]) for k, v in rb["subsets"].items()],
                            ("subset", "pairs", "accuracy")))
    parts += _rewardbench2_html(report.get("rewardbench2"))
    lb = m["length_bias"]
    parts.append("<h2>Length bias</h2>" + _table(list(lb.items())))
    parts.append("<div class='plots'>" + "".join(
        f"<img alt='{k}' src='data:image/png;base64,{base64.b64encode(v).decode()}'>" for k, v in images.items())
        + "</div>")
    if report["drops"]["dropped"]:
        parts.append("<h2>Dropped rows</h2>" + _table(list(report["drops"]["dropped"].items()), ("reason", "rows")))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;margin:8px 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}img{width:32%;min-width:300px}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>RM evaluation</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>")


def _rewardbench2_html(rb2: dict | None) -> list[str]:
    if not rb2:
        return []
    note = "" if rb2["complete"] else " (not all six sections present: not the leaderboard number)"
    rows = [(name, rb2["counts"].get(name), score) for name, score in rb2["sections"].items()]
    out = [f"<h2>RewardBench 2 (overall {_fmt(rb2['overall'])}{html.escape(note)})</h2>",
           _table(rows, ("section", "rows", "score"))]
    if "ties" in rb2:
        out.append(_table([(k, v) for k, v in rb2["ties"].items()], ("Ties component", "value")))
    return out


def write_report(out_dir: str | Path, report: dict, chosen: np.ndarray, rejected: np.ndarray) -> dict:
    """Write plots, report.json and report.html; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    m = report["metrics"]
    images = {}
    if m["num_pairs"]:
        plot_reliability(m, out_dir / PLOTS["reliability"])
        plot_histogram(chosen, rejected, out_dir / PLOTS["histogram"])
        plot_length_buckets(m, out_dir / PLOTS["length"])
        images = {k: (out_dir / v).read_bytes() for k, v in PLOTS.items()}
        report["plots"] = dict(PLOTS)
    report = _finite(report)
    tmp = out_dir / ".report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, allow_nan=False, default=_json_default))
    os.replace(tmp, out_dir / "report.json")
    (out_dir / "report.html").write_text(render_html(report, images), encoding="utf-8")
    return {"json": str(out_dir / "report.json"), "html": str(out_dir / "report.html")}


def _finite(v):
    """NaN/inf (an empty metric) become null: report.json stays strict JSON."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _json_default(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    raise TypeError(type(v).__name__)
