"""The README's benchmark commands still run (tiny sizes, results in a temp dir). No timing is asserted:
speed targets live in the benchmarks' own JSON, not in tests."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def run_bench(script: str, out: Path, *args: str) -> dict:
    proc = subprocess.run([sys.executable, f"bench/{script}.py", "--results-dir", str(out), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / f"{script}.png").stat().st_size > 5_000
    return json.loads((out / f"{script}.json").read_text())


def test_train_throughput_bench_runs(tmp_path, tiny_decoder_dir):
    result = run_bench("train_throughput", tmp_path, "--pairs", "8", "--pairs-per-step", "4", "--steps", "2",
                       "--max-len", "256", "--pack-tokens", "512", "--job-steps", "2", "--job-warmup", "1",
                       "--model", tiny_decoder_dir)
    same = result["same_pairs_per_step"]
    assert {"padded", "packed", "shared"} <= set(same) and all(v["pairs_per_s"] > 0 for v in same.values())
    rows = result["same_packed_rows"]
    assert rows["ray_rm"]["steps"] == 1 and result["ray_rm_vs_bare"] > 0
    # padded, bare and the job train the same pairs in each timed step
    assert rows["padded"]["pairs"] == rows["bare"]["pairs"] == rows["ray_rm"]["pairs"] > 0
    # the CPU split found the job's train worker, and Ray Train's controller among the processes beside it (the
    # split is machine-wide: other clusters' processes, e.g. a test session's, may be counted too)
    cpu = rows["ray_rm"]["cpu_while_training"]
    assert cpu["process_cores"] > 0 and cpu["ray_worker_processes_by_name"].get("ray::TrainController", 0) >= 1


def test_ray_idle_floor_bench_runs(tmp_path, tiny_decoder_dir):
    result = run_bench("ray_idle_floor", tmp_path, "--actors", "0,3", "--pairs", "8", "--pack-tokens", "512", "--steps", "2",
                       "--model", tiny_decoder_dir)
    points = {p["idle_actors"]: p for p in result["beside_ray_cluster"]}
    assert set(points) == {0, 3} and result["no_ray"]["tokens_per_s"] > 0
    # the bench's idle actors ran beside the loop only where asked (the counts are machine-wide, so other Ray
    # processes, e.g. a test session's cluster, are not asserted on), and each wakes often: Ray's 10 ms signal
    # check alone is 100 a second
    assert points[3]["ray_processes_by_name"].get("ray::IdleActor") == 3
    assert "ray::IdleActor" not in points[0]["ray_processes_by_name"]
    assert "ray::IdleActor" not in result["no_ray_first"]["ray_processes_by_name"]
    assert points[3]["idle_actor_context_switches_per_s"] >= 80
    assert points[0]["idle_actor_context_switches_per_s"] is None


def test_data_scale_bench_runs(tmp_path):
    result = run_bench("data_scale", tmp_path, "--sizes", "300", "--designs", "stream", "--max-steps", "2",
                       "--rows-per-task", "100")
    (run,) = result["runs"]
    # the streaming design's promise at any size: every planned pair was read, and by exactly one worker
    assert run["design"] == "stream" and run["size"] == 300 and "error" not in run
    assert run["pairs_read"] == run["pairs_total"] > 0 and run["read_amplification"] == 1.0
    assert sum(run["rows_read_per_worker"]) == run["rows_total"] and run["steps_per_worker"] == [2, 2]


def test_serve_throughput_bench_runs(tmp_path, exported_tiny_rm):
    result = run_bench("serve_throughput", tmp_path, "--concurrency", "1,8", "--requests", "2,16",
                       "--reward-model", exported_tiny_rm)
    for name in ("ray_rm", "baseline"):
        levels = result[name]["levels"]
        assert [lv["concurrency"] for lv in levels] == [1, 8] and all(lv["requests_per_s"] > 0 for lv in levels)
    # both servers gave the same rewards for the same rollouts
    assert result["max_abs_reward_diff_vs_baseline"] < 1e-4
    # At concurrency 8 the batcher merged requests from different clients: fewer forwards than requests, where
    # the per-request baseline runs one forward per request (the server's own /v1/stats counts them).
    at_8 = result["ray_rm"]["levels"][1]
    assert at_8["requests_per_forward"] > 1.5 and at_8["forwards"] < at_8["requests"]


def test_relabel_throughput_bench_runs(tmp_path, exported_tiny_rm):
    result = run_bench("relabel_throughput", tmp_path, "--rows", "4", "--rows-per-task", "2", "--repeats", "1",
                       "--reward-model", exported_tiny_rm)
    best = result["best"]
    # the job read every input row (written or dropped by reason), and the ratio is of the same runs
    assert [r["relabel"]["rows"] for r in result["rounds"]] == [4] and best["bare"]["rows_per_s"] > 0
    assert result["ratio_end_to_end"] == best["relabel"]["rows_per_s"] / best["bare"]["rows_per_s"]


def test_sp_uneven_heads_bench_runs(tmp_path):
    result = run_bench("sp_uneven_heads", tmp_path, "--tokens", "256", "--segment", "64", "--repeats", "1")
    assert set(result["configs"]) == {"8h/8kv", "9h/9kv", "10h/10kv", "9h/3kv"}
    assert result["configs"]["9h/9kv"]["heads_per_rank"] == [5, 4] and result["ideal_extra_uneven"] > 0


def test_gpu_bench_cpu_smoke_runs(tmp_path):
    """bench/gpu_check.sh's bench at a tiny size on CPU (real DeepSpeed step, real serve engine), so it cannot rot."""
    result = run_bench("gpu_bench", tmp_path, "--cpu-smoke")
    train = result["train"]
    assert {"packed_shared", "packed_unshared", "padded"} <= set(train)
    assert all(train[k]["pairs_per_s"] > 0 and train[k]["tflops_per_s"] >= 0 for k in ("packed_shared", "padded"))
    assert train["packed_shared"]["attention"] == "sdpa_blocks" and train["packed_shared"]["zero_stage"] == 0
    serve = result["serve"]
    assert set(serve["levels"]) == {"1", "2"} and serve["max_abs_reward_diff"] < 1e-4  # same rewards both ways
