"""Nothing lost: resume after a killed job, recovery from a killed worker, non-finite losses skipped.

The reference is an uninterrupted run with the same seed: interrupted runs must consume the same
multiset of pairs (no pair lost, none trained twice) and end with the same weights.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from ray_rm.errors import UserError
from ray_rm.train.driver import run_training
from train_helpers import all_weights, consumed_pairs, read_metrics, tiny_config, tiny_overrides

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
RUN = {"train.lora.r": 4, "train.num_epochs": 4, "train.checkpoint_every": 3, "train.record_pair_ids": True,
       "train.lr": 5e-3, "data.limit": 40}


@pytest.fixture(scope="module")
def reference(ray_local, tiny_decoder_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    summary = run_training(tiny_config(tiny_decoder_dir, out, **RUN))
    return out, summary


def wait_for(predicate, timeout=240.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def registered_steps(out: Path) -> list[int]:
    """Checkpoints Ray Train has registered (a run resumes from the latest of these)."""
    steps = []
    for snap in (out / "ray_storage").glob("*/checkpoint_manager_snapshot.json"):
        try:
            results = json.loads(snap.read_text())["checkpoint_results"]
        except (json.JSONDecodeError, KeyError):
            continue  # being rewritten
        steps += [int(r["checkpoint_dir_name"].split("_")[1]) for r in results
                  if r["checkpoint_dir_name"].startswith("step_")]
    return steps


def train_processes() -> list[int]:
    """Pids of live Ray Train controller/worker actor processes (Ray names them ``ray::<Actor>``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if cmdline.startswith((b"ray::TrainController", b"ray::RayTrainWorker")):
            pids.append(int(entry.name))
    return pids


def checkpoint_exists(out: Path, step: int) -> bool:
    return step in registered_steps(out)


def assert_same_as_reference(out: Path, reference):
    ref_out, ref_summary = reference
    assert consumed_pairs(out) == consumed_pairs(ref_out)  # no pair lost, none seen twice
    assert sum(consumed_pairs(out).values()) == ref_summary["pairs_seen"]
    got, want = all_weights(out / "hf"), all_weights(ref_out / "hf")
    assert got.keys() == want.keys()
    worst = max((got[k] - want[k]).abs().max().item() for k in want)
    assert worst < 1e-5, worst


def test_killed_job_resumes_at_the_next_row(reference, tiny_decoder_dir, tmp_path):
    out = tmp_path / "resumed"
    cmd = [sys.executable, str(REPO / "jobs" / "train_rm.py"), *tiny_overrides(tiny_decoder_dir, out, **RUN)]
    earlier = set(train_processes())  # e.g. the reference run's idle controller
    job = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        wait_for(lambda: checkpoint_exists(out, 3), what="the first checkpoint")
        assert set(train_processes()) - earlier  # the helper below really sees the job's actors
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait()
    # Ray reaps the dead driver's actors asynchronously; until they are gone they may still write a step
    wait_for(lambda: not set(train_processes()) - earlier, timeout=120, what="the killed job's actors to exit")
    assert not (out / "hf").exists()  # it really was interrupted
    steps_before = [m["global_step"] for m in read_metrics(out)]
    last_checkpoint = max(registered_steps(out))
    summary = run_training(tiny_config(tiny_decoder_dir, out, **RUN))
    resumed = [m["global_step"] for m in read_metrics(out)][len(steps_before):]
    assert resumed[0] == last_checkpoint + 1  # continued after the checkpoint, not from step 1
    assert_same_as_reference(out, reference)
    # the loss curve survived the restart (carried in the checkpoint): one point per step, as uninterrupted
    curve, ref_curve = summary["curves"]["train"], reference[1]["curves"]["train"]
    assert curve["step"] == ref_curve["step"] == list(range(1, summary["steps"] + 1))
    assert max(abs(a - b) for a, b in zip(curve["loss"], ref_curve["loss"])) < 1e-4


def test_killed_worker_recovers_with_failure_config(reference, tiny_decoder_dir, tmp_path):
    out = tmp_path / "recovered"
    result: dict = {}

    def train():
        try:
            result["summary"] = run_training(tiny_config(tiny_decoder_dir, out, **RUN, **{"train.max_failures": 1}))
        except BaseException as exc:  # surfaced by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=train)
    thread.start()
    wait_for(lambda: checkpoint_exists(out, 3), what="the first checkpoint")
    pid = json.loads((out / "consumed" / "rank1.jsonl").read_text().splitlines()[-1])["pid"]
    os.kill(pid, signal.SIGKILL)  # the rank-1 training worker process dies mid-run
    thread.join(timeout=600)
    assert "error" not in result, result.get("error")
    pids = {json.loads(line)["pid"] for line in (out / "consumed" / "rank1.jsonl").read_text().splitlines()}
    assert len(pids) == 2  # a new worker took over rank 1
    assert_same_as_reference(out, reference)


@pytest.fixture
def scored_data(tmp_path):
    """30 real hh-rlhf pairs with UltraFeedback-style scores; one absurd score overflows the mse loss."""
    from conftest import HH_TRAIN

    rows = [json.loads(line) for line in HH_TRAIN.read_text().splitlines()[:30]]
    for i, row in enumerate(rows):
        row["score_chosen"], row["score_rejected"] = 4.0, 2.0
    rows[7]["score_chosen"] = 1e38  # finite in the data, (r - 1e38)^2 is inf in fp32
    path = tmp_path / "scored.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_non_finite_loss_is_skipped_and_counted(ray_local, tiny_decoder_dir, tmp_path, scored_data):
    out = tmp_path / "nan_skip"
    summary = run_training(tiny_config(tiny_decoder_dir, out, **{
        "data.train_files": str(scored_data), "data.eval_files": "", "train.loss": "mse", "train.lr": 1e-3,
        "data.max_length": 1024, "data.pack_tokens": 2048}))
    assert summary["skipped_micro_batches"] == 1  # the one packed row holding the absurd score
    assert all(torch.isfinite(w).all() for w in all_weights(out / "hf").values())
    assert [m["train/rm/skipped_micro_batches"] for m in read_metrics(out)][-1] == 1

    with pytest.raises(UserError, match="non-finite"):
        run_training(tiny_config(tiny_decoder_dir, tmp_path / "nan_raise", **{
            "data.train_files": str(scored_data), "data.eval_files": "", "train.loss": "mse",
            "data.max_length": 1024, "data.pack_tokens": 2048, "train.nan_policy": "raise"}))
