"""Process reward models in relabel and eval, without Ray: Best-of-N picks the solution whose aggregated step
probabilities are highest, the step filter cuts each solution before its first step below the threshold,
and eval's step metrics follow from the step scores; every score compared with plain transformers
(``AutoModelForTokenClassification`` at the step ends, as tests/test_prm_serve.py writes the rule out)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ray_rm.data import demo_prm
from ray_rm.data.sources import ReadTask
from ray_rm.eval import prm_metrics as M
from ray_rm.eval.prm_runner import plot_step_reliability, prm_metrics, score_step_task
from ray_rm.relabel.config import RelabelConfig
from ray_rm.relabel.task import TaskOutput, relabel_task
from test_prm_serve import reference

TASK = ReadTask("builtin:arith-steps-eval", "builtin", 0, 6, builtin_size=24)


@pytest.fixture(scope="module")
def scorer(exported_tiny_prm):
    from ray_rm.scoring import RewardScorer

    return RewardScorer(exported_tiny_prm, dtype="float32")


@pytest.fixture(scope="module")
def ref_scores(exported_tiny_prm):
    """Plain-transformers step scores of every solution of the task's rows: [row][solution][step]."""
    out = []
    for i in range(6):
        row = demo_prm.make_row("arith-steps-eval", i)
        out.append(reference(exported_tiny_prm, [{"messages": row["prompt"], "steps": s["steps"]}
                                                 for s in row["solutions"]]))
    return out


def test_best_of_n_picks_the_highest_aggregate_of_plain_transformers_scores(scorer, ref_scores):
    for how in ("min", "prod"):
        out = relabel_task(TASK, scorer, RelabelConfig(mode="best-of-n", step_aggregate=how))
        assert [r["best_index"] for r in out.records] == \
            [int(np.argmax([M.aggregate(s, how) for s in row])) for row in ref_scores]
        for rec, row_ref, i in zip(out.records, ref_scores, range(6)):
            solutions = demo_prm.make_row("arith-steps-eval", i)["solutions"]
            assert rec["steps"] == solutions[rec["best_index"]]["steps"]
            assert rec["step_scores"] == pytest.approx(row_ref[rec["best_index"]], abs=1e-4)
    assert out.report.rows_read == out.report.rows_kept == 6
    assert out.schema.field("steps").type.value_type.equals(__import__("pyarrow").string())


def test_step_filter_cuts_before_the_first_step_below_the_threshold(scorer, ref_scores):
    probs = [1 / (1 + math.exp(-s)) for row in ref_scores for sol in row for s in sol]
    threshold = float(np.median(probs))  # some solutions are cut, some kept whole
    out = relabel_task(TASK, scorer, RelabelConfig(mode="step-filter", step_threshold=threshold))
    expected = []
    for i, row in enumerate(ref_scores):
        solutions = demo_prm.make_row("arith-steps-eval", i)["solutions"]
        for j, scores in enumerate(row):
            cut = next((k for k, s in enumerate(scores) if 1 / (1 + math.exp(-s)) < threshold), -1)
            if cut != 0:
                expected.append((j, solutions[j]["steps"][:cut] if cut > 0 else solutions[j]["steps"], cut))
    assert [(r["solution_index"], r["steps"], r["cut_at"]) for r in out.records] == expected
    assert out.counts["cut"] > 0 and out.counts["kept_whole"] > 0


def test_scalar_models_refuse_step_filter(exported_tiny_rm):
    from ray_rm.errors import UserError
    from ray_rm.scoring import RewardScorer

    with pytest.raises(UserError, match="step-filter .* needs a process reward model"):
        relabel_task(TASK, RewardScorer(exported_tiny_rm), RelabelConfig(mode="step-filter"))


def test_eval_step_metrics_follow_from_the_scores(scorer, ref_scores, tmp_path):
    rows, report = score_step_task(TASK, scorer, "raise")
    assert report.rows_kept == 6
    for row, want in zip(rows, ref_scores):
        for got, w in zip(row["scores"], want):
            assert got == pytest.approx(w, abs=1e-4)
    metrics = prm_metrics(rows)
    scores = [s for r in rows for s in r["scores"]]
    labels = [lab for r in rows for lab in r["labels"]]
    assert metrics["step_accuracy"] == M.step_accuracy(scores, labels)
    assert metrics["processbench"] == M.processbench(scores, labels)
    assert metrics["solutions"] == 24 and metrics["best_of_n"]["rows"] == 6
    picks = [all(r["labels"][M.best_of_n(r["scores"])]) for r in rows]
    assert metrics["best_of_n"]["accuracy"] == sum(picks) / 6
    plot_step_reliability(metrics["reliability_by_position"], tmp_path / "rel.png")
    assert (tmp_path / "rel.png").stat().st_size > 1000


def test_first_error_unknown_rows_are_left_out_of_processbench_only():
    rows = [{"scores": [[2.0, -2.0]], "labels": [[True, False]]},
            {"scores": [[2.0, 2.0]], "labels": [[None, False]]},  # first error unknown: step 0 unlabelled
            {"scores": [[2.0, 2.0]], "labels": [[True, True]]}]
    m = prm_metrics(rows)
    assert m["first_error_unknown"] == 1
    assert m["processbench"]["num_erroneous"] == 1 and m["processbench"]["num_correct"] == 1
    assert m["first_error_f1"] == 1.0
    assert m["step_accuracy"] == pytest.approx(4 / 5)  # the unlabelled step is skipped; (2.0, False) is wrong
