"""``jobs/serve_rm.py`` as users run it: its own local Ray, real HTTP, token from the environment, and a
clean shutdown on SIGTERM (in-flight requests are answered, the port is released, exit code 0)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from ray_rm.serve.client import RewardServerUnavailable, wait_until_healthy

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _external_ip() -> str | None:
    """This machine's address on its default route (no packet is sent), or None when only loopback exists."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_help_lists_the_serve_keys():
    out = subprocess.run([sys.executable, str(REPO / "jobs" / "serve_rm.py"), "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0
    for key in ("serve.model_path", "serve.host", "serve.port", "serve.num_replicas", "serve.auth_token"):
        assert key in out.stdout


def test_bad_config_is_one_line_not_a_traceback():
    out = subprocess.run([sys.executable, str(REPO / "jobs" / "serve_rm.py"), "serve.model_path=/no/such/rm"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "does not exist" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_serve_job_serves_with_token_and_stops_cleanly_on_sigterm(exported_tiny_rm, tmp_path):
    port = _free_port()
    env = {**os.environ, "RAY_RM_SERVE_TOKEN": "env-token", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, str(REPO / "jobs" / "serve_rm.py"), f"serve.model_path={exported_tiny_rm}",
                             f"serve.port={port}", "serve.num_cpus=0.5", "serve.graceful_shutdown_timeout_s=30",
                             "ray.address=local", "ray.num_cpus=2"], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_healthy(url, timeout_s=150, still_starting=lambda: proc.poll() is None)
        except RewardServerUnavailable as exc:
            pytest.fail(f"{exc}\n{(tmp_path / 'serve.log').read_text()[-3000:]}")
        external = _external_ip()
        if external:  # default bind is 127.0.0.1: the port is closed on the machine's other addresses
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://{external}:{port}/healthz", timeout=2)
        body = {"inputs": [{"text": "hello"}]}
        assert httpx.post(f"{url}/v1/score", json=body).status_code == 401  # token read from the environment
        ok = httpx.post(f"{url}/v1/score", json=body, headers={"Authorization": "Bearer env-token"})
        assert ok.status_code == 200 and len(ok.json()["rewards"]) == 1
        # a big request in flight when SIGTERM arrives is still answered
        big = {"inputs": [{"text": f"{i} " + "word " * 900} for i in range(256)]}
        answer = {}

        def slow():
            answer["r"] = httpx.post(f"{url}/v1/score", json=big, headers={"Authorization": "Bearer env-token"},
                                     timeout=120)
            answer["done"] = time.time()

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.3)
        signalled = time.time()
        proc.send_signal(signal.SIGTERM)
        t.join(timeout=120)
        assert answer["done"] > signalled  # it really was in flight during shutdown
        assert answer["r"].status_code == 200 and len(answer["r"].json()["rewards"]) == 256
        assert proc.wait(timeout=120) == 0
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
