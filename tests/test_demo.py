"""The README's first command, `make demo`, runs jobs/demo.py: here its --quick form, end to end."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_quick_demo_runs_every_stage(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "jobs/demo.py", "--quick", "--output-dir", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["train"]["steps"] == 2
    assert summary["serve"]["scored"] == 24 and summary["serve"]["url"].startswith("http://127.0.0.1:")
    assert summary["relabel"]["dpo_pairs"] == 12
    assert set(summary["eval"]["by_family"]) == {"case", "first_letter", "spell", "larger"}
    # the reported accuracies, recomputed from the per-example rewards the eval wrote (ties count as wrong)
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "eval" / "scores.parquet").to_pylist()
    assert len(rows) == 72 // 4 and all(len(r["rewards"]) == 2 for r in rows)  # builtin_size 72: a quarter for eval
    wins = {}
    for r in rows:
        best, worst = sorted(range(2), key=lambda i: r["ranks"][i])
        wins.setdefault(r["subset"], []).append(r["rewards"][best] > r["rewards"][worst])
    every = [w for ws in wins.values() for w in ws]
    assert summary["eval"]["accuracy"] == pytest.approx(sum(every) / len(every), abs=1e-9)
    assert summary["eval"]["by_family"] == {f: pytest.approx(sum(ws) / len(ws), abs=1e-3) for f, ws in wins.items()}
    assert (out / "eval" / "report.html").stat().st_size > 10_000  # the plots are embedded
    for line in ("[ray_rm demo] finished", "train ", "serve ", "relabel ", "eval "):
        assert line in proc.stdout
    # quiet by default: no library's INFO line, though Ray Serve's import and every Ray Data execution re-apply
    # their own logging configs (ray_rm's own INFO lines, e.g. the local cluster's start and stop, stay)
    library_info = [ln for ln in (proc.stdout + proc.stderr).splitlines()
                    if re.search(r"\bINFO\b", ln) and "ray_rm." not in ln]
    assert not library_info, library_info[:5]

    from transformers import AutoModelForSequenceClassification

    clf = AutoModelForSequenceClassification.from_pretrained(summary["train"]["hf_checkpoint"])
    assert clf.config.num_labels == 1 and clf.config.ray_rm["kind"] == "decoder"
