"""End-to-end relabel jobs on a real local Ray cluster with a real (tiny, exported) reward model.

References are independent of ray_rm: every candidate is re-scored alone by plain transformers
(``AutoTokenizer(prompt + response)`` -> ``AutoModelForSequenceClassification``, one sequence per forward, no
packing, no prompt sharing: the export contract), and the expected outputs are derived from those scores.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import HH_TEST, REPO
from ray_rm.config import load_config
from ray_rm.data.formats import normalize_row
from ray_rm.errors import DataError, UserError
from ray_rm.relabel.config import RelabelJobConfig

pytestmark = pytest.mark.slow
N_ROWS = 36
BAD_LINES = ["{not json", json.dumps({"prompt": "Q", "responses": "not a list"})]


def _hh(n: int):
    rows = [json.loads(line) for line in HH_TEST.read_text().splitlines()[:n + 1]]
    return [normalize_row(r, "hh", i + 1) for i, r in enumerate(rows)]


@pytest.fixture(scope="module")
def candidates_file(tmp_path_factory) -> Path:
    """HH test pairs as 3-candidate rows (chosen, rejected, another row's chosen) + 2 bad rows + 1 all-tied row."""
    exs = _hh(N_ROWS)
    lines = [json.dumps({"prompt": ex.prompt, "responses": [ex.responses[0], ex.responses[1],
                                                            exs[i + 1].responses[0]]}) for i, ex in enumerate(exs[:-1])]
    lines[5:5] = BAD_LINES
    lines.insert(20, json.dumps({"prompt": "Human: hi\n\nAssistant:", "responses": [" same", " same"]}))
    path = tmp_path_factory.mktemp("relabel_in") / "cands.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def plain_transformers_scorer(model_dir: str):
    """(prompt, responses) -> rewards, each ``prompt + response`` alone through plain transformers."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    clf = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()

    def plain_scores(prompt: str, responses: list) -> list:
        with torch.no_grad():
            return [clf(**tok(prompt + r, return_tensors="pt")).logits[0, 0].item() for r in responses]

    return plain_scores


@pytest.fixture(scope="module")
def reference(candidates_file, exported_tiny_rm) -> dict:
    """Each valid row's candidate scores, every sequence scored alone: {row number: (prompt, responses, scores)}."""
    plain_scores = plain_transformers_scorer(exported_tiny_rm)
    ref = {}
    for rowno, line in enumerate(candidates_file.read_text().splitlines(), start=1):
        try:
            raw = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(raw.get("responses"), list):
            ref[rowno] = (raw["prompt"], raw["responses"], plain_scores(raw["prompt"], raw["responses"]))
    return ref


def _job(model, files, out, *overrides) -> RelabelJobConfig:
    return load_config(RelabelJobConfig, None, [f"relabel.model_path={model}", f"relabel.input_files={files}",
                                                f"output_dir={out}", "relabel.rows_per_task=8",
                                                "relabel.progress=false", *overrides])


def _rows(out: Path) -> list[dict]:
    files = sorted((out / "data").glob("part-*.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def _rowno(example_id: str) -> int:
    return int(example_id.rsplit(":", 1)[1])


def test_pairs_from_candidates_best_vs_worst(ray_local, tmp_path, candidates_file, reference, exported_tiny_rm):
    from ray_rm.relabel.runner import run_relabel

    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run_relabel(_job(exported_tiny_rm, candidates_file, out, "relabel.write_jsonl=true"))
    # the fail-fast actor pool's max_restarts=0 goes through Ray's deprecated remote-args route on purpose
    assert not [w for w in caught if "ray_remote_args" in str(w.message)]
    total_lines = len(candidates_file.read_text().splitlines())
    assert summary["rows_read"] == total_lines == N_ROWS + len(BAD_LINES) + 1
    assert summary["dropped"] == {"invalid:row": 1, "invalid:responses": 1, "tie": 1}
    assert summary["rows_written"] + summary["rows_dropped"] == summary["rows_read"]
    rows = _rows(out)
    assert len(rows) == summary["output_rows"] == summary["rows_written"] == N_ROWS
    assert json.loads((out / "summary.json").read_text())["rows_read"] == total_lines
    jsonl = [json.loads(line) for f in sorted((out / "data").glob("part-*.jsonl")) for line in f.read_text().splitlines()]
    assert jsonl == rows
    for row in rows:
        prompt, responses, scores = reference[_rowno(row["example_id"])]
        assert row["score_chosen"] >= row["score_rejected"] and row["margin"] > 0
        best = max(range(3), key=lambda i: scores[i])
        worst = min(range(3), key=lambda i: scores[i])
        assert (row["prompt"], row["chosen"], row["rejected"]) == (prompt, responses[best], responses[worst])
        assert row["score_chosen"] == pytest.approx(scores[best], abs=1e-4)
        assert row["score_rejected"] == pytest.approx(scores[worst], abs=1e-4)


def test_all_pairs_with_min_margin_and_changed_settings(ray_local, tmp_path, candidates_file, reference,
                                                        exported_tiny_rm):
    from ray_rm.relabel.runner import run_relabel

    margins = sorted(abs(s[i] - s[j]) for _, _, s in reference.values() for i in range(len(s))
                     for j in range(i + 1, len(s)))
    min_margin = margins[len(margins) // 2]  # about half the pairs fall under it
    out = tmp_path / "out"
    job = _job(exported_tiny_rm, candidates_file, out, "relabel.pair_strategy=all_pairs",
               f"relabel.min_margin={min_margin}")
    summary = run_relabel(job)
    want = set()
    for rowno, (_, responses, s) in reference.items():
        want |= {(rowno, responses[i], responses[j]) for i in range(len(s)) for j in range(len(s))
                 if s[i] - s[j] >= min_margin + 1e-4}
    got = {(_rowno(r["example_id"]), r["chosen"], r["rejected"]) for r in _rows(out)}
    assert want <= got and len(got - want) <= 2  # pairs within float noise of the threshold may go either way
    assert all(r["margin"] >= min_margin for r in _rows(out))
    assert summary["rows_written"] + summary["rows_dropped"] == summary["rows_read"]
    assert summary["dropped"]["under_margin"] + summary["dropped"]["tie"] + summary["rows_written"] == len(reference)
    with pytest.raises(UserError, match="different settings min_margin"):
        run_relabel(_job(exported_tiny_rm, candidates_file, out, "relabel.pair_strategy=all_pairs",
                         "relabel.min_margin=0.0"))


def test_rejudge_swap_and_best_of_n(ray_local, tmp_path, exported_tiny_rm):
    from ray_rm.relabel.runner import run_relabel

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(line + "\n" for line in HH_TEST.read_text().splitlines()[:24]))
    summary = run_relabel(_job(exported_tiny_rm, pairs, tmp_path / "rj", "relabel.mode=rejudge",
                               "relabel.disagree=swap"))
    plain_scores = plain_transformers_scorer(exported_tiny_rm)
    exs = _hh(24)[:24]
    ref = {ex.example_id.split(":")[1]: plain_scores(ex.prompt, list(ex.responses)) for ex in exs}
    agree = sum(s[0] > s[1] for s in ref.values())
    assert summary["counts"]["agree"] == agree and summary["counts"]["swapped"] == 24 - agree
    assert summary["rows_read"] == summary["rows_written"] == 24
    rows = _rows(tmp_path / "rj")
    by_ex = {ex.example_id.split(":")[1]: ex for ex in exs}
    for row in rows:
        ex, s = by_ex[row["example_id"].rsplit(":", 1)[1]], ref[row["example_id"].rsplit(":", 1)[1]]
        assert row["score_chosen"] >= row["score_rejected"]
        assert row["agree"] == (s[0] > s[1]) and row["swapped"] == (not row["agree"])
        assert row["chosen"] == (ex.responses[0] if row["agree"] else ex.responses[1])
    # best-of-n over the same texts as 2-candidate rows, with k = 1 rows allowed
    bon = tmp_path / "bon.jsonl"
    bon.write_text("".join(json.dumps({"prompt": ex.prompt, "responses": list(ex.responses)}) + "\n" for ex in exs)
                   + json.dumps({"prompt": "Human: hi\n\nAssistant:", "responses": [" hello"]}) + "\n")
    summary = run_relabel(_job(exported_tiny_rm, bon, tmp_path / "bon", "relabel.mode=best-of-n"))
    assert summary["rows_read"] == summary["rows_written"] == summary["output_rows"] == 25
    for row in _rows(tmp_path / "bon")[:24]:
        s = ref[row["example_id"].rsplit(":", 1)[1]]
        assert row["best_index"] == max(range(2), key=lambda i: s[i]) and row["score"] == max(row["scores"])


def test_strict_mode_names_row_and_field(ray_local, tmp_path, candidates_file, exported_tiny_rm):
    from ray_rm.relabel.runner import run_relabel

    with pytest.raises(DataError, match=r"cands.jsonl, row 6: invalid JSON"):
        run_relabel(_job(exported_tiny_rm, candidates_file, tmp_path / "strict", "relabel.on_error=raise",
                         "relabel.limit=7"))


def test_cli_config_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "relabel_dpo.py"), "relabel.mode=nope",
                           "relabel.model_path=x", "relabel.input_files=y", f"output_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "config key 'relabel.mode' must be one of" in proc.stderr


def test_killed_job_resumes_to_identical_output(ray_local, tmp_path, candidates_file, exported_tiny_rm):
    """SIGKILL the driver mid-run (a real crash), re-run: the rows equal an uninterrupted run's, none twice."""
    from ray_rm.relabel.runner import run_relabel

    address = ray_local.get_runtime_context().gcs_address
    args = [f"relabel.model_path={exported_tiny_rm}", f"relabel.input_files={candidates_file}",
            f"output_dir={tmp_path / 'resumed'}", "relabel.rows_per_task=3", "relabel.progress=false",
            "relabel.pair_strategy=best_vs_random", f"ray.address={address}"]
    cmd = [sys.executable, str(REPO / "jobs" / "relabel_dpo.py"), *args]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    killed = subprocess.run(cmd + ["relabel.debug_kill_after_tasks=2"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    num_tasks = -(-len(candidates_file.read_text().splitlines()) // 3)
    done_before = len(list((tmp_path / "resumed" / "_progress").glob("part-*.json")))
    assert 2 <= done_before < num_tasks
    assert not (tmp_path / "resumed" / "summary.json").exists()
    finished = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    resumed = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert resumed["tasks_resumed"] >= done_before and resumed["tasks_resumed"] + resumed["tasks_run"] == num_tasks

    clean = run_relabel(load_config(RelabelJobConfig, None, [a for a in args if not a.startswith(("output_dir",
                                                                                                   "ray."))]
                                    + [f"output_dir={tmp_path / 'clean'}"]))
    key = lambda r: r["example_id"]  # noqa: E731
    resumed_rows, clean_rows = sorted(_rows(tmp_path / "resumed"), key=key), sorted(_rows(tmp_path / "clean"), key=key)
    assert len({r["example_id"] for r in resumed_rows}) == len(resumed_rows)  # nothing written twice
    assert resumed_rows == clean_rows
    for k in ("rows_read", "rows_written", "rows_dropped", "dropped", "output_rows"):
        assert resumed[k] == clean[k]
    assert not list((tmp_path / "resumed" / "data").glob(".*tmp*"))
