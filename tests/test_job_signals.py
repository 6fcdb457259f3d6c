"""Ctrl-C / SIGTERM leave no Ray process behind: real job subprocesses, real signals, processes counted.

A job that started its own local cluster stops all of it (raylet, GCS, agents, workers) and exits with
130 (SIGINT) or 143 (SIGTERM); a job that joined a running cluster leaves that cluster running. Only the
job's own processes are counted (tests/process_watch.py), so other Ray clusters on the machine are
neither counted nor touched.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from conftest import free_port
from process_watch import JobProcess
from train_helpers import tiny_overrides

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO), RAY_AUTH_MODE="disabled")


def train_job(model_dir: str, out: Path, address: str) -> JobProcess:
    overrides = tiny_overrides(model_dir, out, **{"train.max_steps": 500, "data.eval_files": "",
                                                  "data.limit": 32, "ray.address": address})
    return JobProcess([sys.executable, "jobs/train_rm.py", *overrides], str(REPO), ENV)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_train_job_stopped_by_signal_leaves_no_ray_process(tiny_decoder_dir, tmp_path, signum, code):
    job = train_job(tiny_decoder_dir, tmp_path / "out", "local")
    try:
        job.wait_for("[ray_rm] training", timeout=300)  # data prepared on Ray Data, workers starting
        session = job.session_dir()
        assert session and len(job.seen) >= 5, job.output[-2000:]  # raylet, GCS, agents, workers...
        time.sleep(5)
        job.signal(signum)
        assert job.proc.wait(120) == code, job.output[-3000:]
        assert "interrupted" in job.output and "stopping the local Ray cluster" in job.output
        assert job.wait_gone(30) == []
    finally:
        job.kill_everything()


def test_serve_job_stopped_by_sigterm_leaves_no_ray_process(exported_tiny_rm, tmp_path):
    job = JobProcess([sys.executable, "jobs/serve_rm.py", f"serve.model_path={exported_tiny_rm}",
                      f"serve.port={free_port()}", "ray.address=local"], str(REPO), ENV)
    try:
        job.wait_for("READY http://", timeout=240)
        assert job.session_dir() and len(job.seen) >= 5, job.output[-2000:]
        job.signal(signal.SIGTERM)
        assert job.proc.wait(120) == 0, job.output[-3000:]  # serving ends on SIGTERM by design: drained, clean
        assert job.wait_gone(30) == []
    finally:
        job.kill_everything()


@pytest.fixture
def private_cluster():
    """`ray start --head` on private ports and a private temp dir; stopped here by pid (never `ray stop`)."""
    temp = tempfile.mkdtemp(prefix="rrm", dir="/tmp")  # short: Ray's socket paths live under it
    port = free_port()
    ports = {flag: free_port() for flag in ("--ray-client-server-port", "--dashboard-agent-listen-port",
                                            "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                                            "--metrics-export-port")}
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}", f"--temp-dir={temp}",
           "--num-cpus=4", "--include-dashboard=false", "--disable-usage-stats",
           *[f"{k}={v}" for k, v in ports.items()]]
    subprocess.run(cmd, env=ENV, check=True, capture_output=True, timeout=120)
    yield f"127.0.0.1:{port}", temp
    procs = [p for p in psutil.process_iter(["cmdline"]) if temp in " ".join(p.info["cmdline"] or [])]
    procs += [c for p in procs for c in p.children(recursive=True)]
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        p.kill()
    shutil.rmtree(temp, ignore_errors=True)


def _cluster_processes(temp: str) -> list[str]:
    return [p.info["name"] for p in psutil.process_iter(["cmdline", "name"])
            if temp in " ".join(p.info["cmdline"] or [])]


def test_job_that_joined_a_cluster_leaves_it_running(private_cluster, tiny_decoder_dir, tmp_path):
    address, temp = private_cluster
    before = _cluster_processes(temp)
    assert "raylet" in before and "gcs_server" in before
    job = train_job(tiny_decoder_dir, tmp_path / "out", address)
    try:
        job.wait_for("[ray_rm] train data:", timeout=300)  # connected, and its data work ran on that cluster
        assert job.session_dir() is None  # it did not start a cluster of its own
        job.signal(signal.SIGTERM)
        assert job.proc.wait(120) == 143, job.output[-3000:]
        assert "stopping the local Ray cluster" not in job.output
    finally:
        job.kill_everything()
    time.sleep(3)
    after = _cluster_processes(temp)
    assert "raylet" in after and "gcs_server" in after, after
    status = subprocess.run([str(Path(sys.executable).parent / "ray"), "status", f"--address={address}"],
                            env=ENV, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "CPU" in status.stdout, status.stdout + status.stderr


LIBRARY_CALLER = """
import signal, ray
from ray_rm.cli import run_job
from ray_rm.config_schema import RayConfig
from ray_rm.ray_utils import init_ray, shutdown_ray

marker = lambda *_: None
for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, marker)
init_ray(RayConfig(address="local", num_cpus=1))
assert signal.getsignal(signal.SIGTERM) is not marker, "the job's stop handler is in place"
run_job(lambda argv: None, [])  # a job run inside a process already connected to Ray
assert ray.is_initialized(), "run_job ended a connection it did not make"
shutdown_ray()
assert signal.getsignal(signal.SIGTERM) is marker and signal.getsignal(signal.SIGINT) is marker, "handlers not restored"
print("LIBRARY-CALLER-OK")
"""


def test_library_use_gets_its_own_signal_handlers_back_after_shutdown():
    """init_ray installs ray_rm's stop handler (a job must stop cleanly); a caller that only borrowed Ray
    (a notebook, a test session) must get its own SIGINT/SIGTERM handlers and its Ray connection back.
    Run in a fresh process: this test session is already connected to its shared cluster."""
    proc = subprocess.run([sys.executable, "-c", LIBRARY_CALLER], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "LIBRARY-CALLER-OK" in proc.stdout, proc.stderr[-3000:]
