"""ray_rm/train/curves.py: points recorded per step and per eval, re-recorded steps replaced, the PNG drawn."""
import json
import math

from ray_rm.train import curves


def test_record_train_and_eval_points():
    c = {}  # a fresh train state's curves
    curves.record(c, {"global_step": 0, "eval/rm/loss": 0.70, "eval/rm/accuracy": 0.5})  # baseline eval
    curves.record(c, {"global_step": 1, "train/rm/loss": 0.69, "train/rm/accuracy": 0.5, "epoch": 0})
    curves.record(c, {"global_step": 2, "train/rm/loss": math.nan, "train/rm/accuracy": 1.0,
                      "eval/rm/loss": 0.60, "eval/rm/accuracy": 0.75})
    # the final eval re-reports the last step with the same train metrics: its point is replaced, not doubled
    curves.record(c, {"global_step": 2, "train/rm/loss": math.nan, "train/rm/accuracy": 1.0,
                      "eval/rm/loss": 0.55, "eval/rm/accuracy": 0.8})
    assert c == {"train": {"step": [1, 2], "loss": [0.69, None], "accuracy": [0.5, 1.0]},
                 "eval": {"step": [0, 2], "loss": [0.70, 0.55], "accuracy": [0.5, 0.8]}}
    json.dumps(c, allow_nan=False)  # valid JSON: the non-finite loss became null


def test_a_rerun_step_drops_the_points_after_it():
    c = curves.empty_curves()
    for step in (1, 2, 3):
        curves.record(c, {"global_step": step, "train/rm/loss": float(step), "train/rm/accuracy": 0.5})
    curves.record(c, {"global_step": 2, "train/rm/loss": 20.0, "train/rm/accuracy": 0.6})
    assert c["train"] == {"step": [1, 2], "loss": [1.0, 20.0], "accuracy": [0.5, 0.6]}
    assert c["eval"] == {"step": [], "loss": [], "accuracy": []}


def test_read_from_checkpoint_and_plot(tmp_path):
    state = {"global_step": 2, "curves": {"train": {"step": [1, 2], "loss": [0.7, None], "accuracy": [0.5, 1.0]},
                                          "eval": {"step": [2], "loss": [0.6], "accuracy": [0.75]}}}
    (tmp_path / "train_state.json").write_text(json.dumps(state))
    assert curves.read_from_checkpoint(tmp_path, "train_state.json") == state["curves"]
    (tmp_path / "old.json").write_text(json.dumps({"global_step": 2}))  # a checkpoint from before curves
    assert curves.read_from_checkpoint(tmp_path, "old.json") == curves.empty_curves()
    path = curves.plot(state["curves"], tmp_path / "train_curves.png", title="run")
    png = (tmp_path / "train_curves.png").read_bytes()
    assert path == str(tmp_path / "train_curves.png") and png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    curves.plot(curves.empty_curves(), tmp_path / "empty.png")  # a run with no points still gets a picture
    assert (tmp_path / "empty.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
