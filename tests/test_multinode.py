"""Jobs on a real two-node Ray cluster, submitted the way users submit them.

The cluster is started with the real CLI on this machine: ``ray start --head`` plus a second
``ray start --address`` (two raylets, two node ids), each process run with ``--block`` in its own
session so the test stops exactly the processes it started (never a global ``ray stop``). Each node
has its own ``--temp-dir`` (two nodes of one machine sharing one would share ``runtime_resources/``,
and one node's runtime-env agent deletes working_dir packages the other's job runs from), free
ports, and token authentication (``RAY_AUTH_MODE=token`` with a random ``RAY_AUTH_TOKEN`` in the
environment of the cluster and of every CLI call), so it neither depends on nor touches
``~/.ray/auth_token`` (GUIDE §2).

The test process talks to the cluster only through subprocesses (``ray job submit``, ``ray list``,
``ray job list``): it never calls ``ray.init``, so the in-process ``ray_local`` fixture of other
test modules can be up or down in any order without conflict. ``ray start`` records the cluster
address only under its own temp dir, so a plain ``ray.init()`` elsewhere does not join it either.

Checked: ``ray job submit --working-dir . -- python jobs/train_rm.py ...`` with SPREAD placement
succeeds, its two Ray Train workers ran on the two different nodes, and the exported checkpoint
loads with ``AutoModelForSequenceClassification``; ``jobs/relabel_dpo.py`` submitted with
``--runtime-env cluster/runtime_env.yaml`` succeeds with its two scoring actors on the two nodes and
a complete row accounting; requests without the token are refused.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import HH_TEST, HH_TRAIN, REPO

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).parent / "ray")
CPUS_PER_NODE = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    """Ports a node would otherwise take from fixed defaults shared with other Ray instances on this machine."""
    args = []
    for flag in ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"):
        args += [flag, str(_free_port())]
    return args + ["--min-worker-port", "0", "--max-worker-port", "0"]  # 0: random worker ports


def _parse_list(stdout: str) -> list[dict]:
    """`ray list ... --format json` prints "No resource in the cluster" instead of [] (e.g. while a node registers)."""
    return [] if stdout.strip().startswith("No resource") else json.loads(stdout)


class TwoNodeCluster:
    """A head and a worker node started with `ray start --block`; stop() ends exactly those processes."""

    def __init__(self, root: Path):
        self.root = root
        self.token = secrets.token_hex(32)
        self.env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, TOKENIZERS_PARALLELISM="false",
                        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # stop() at once, no 30 s node drain
                        # `python` in job entrypoints is this interpreter (the job inherits the raylet's env)
                        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        self.gcs_port, self.dashboard_port = _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{self.dashboard_port}"
        self.procs: list[subprocess.Popen] = []
        self.log_files: list = []

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 (closed in stop())
        self.log_files.append(log)
        common = ["--block", "--num-cpus", str(CPUS_PER_NODE), "--object-store-memory", str(512 * 2**20),
                  "--disable-usage-stats", *_node_ports()]
        self.procs.append(subprocess.Popen([RAY, "start", *args, *common], env=self.env, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True))

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.root.glob("*.log")))

    def start(self, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        self._start("head", ["--head", "--port", str(self.gcs_port), "--temp-dir", str(self.root / "ray"),
                             "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(self.dashboard_port),
                             "--ray-client-server-port", str(_free_port())])
        request = urllib.request.Request(f"{self.url}/api/version",
                                         headers={"Authorization": f"Bearer {self.token}"})
        while True:  # the Jobs API is up once the dashboard answers
            try:
                urllib.request.urlopen(request, timeout=5)
                break
            except urllib.error.HTTPError as exc:
                raise AssertionError(f"dashboard refused the cluster's token: {exc}\n{self.logs()}") from None
            except OSError:
                self._check_alive(deadline)
                time.sleep(1)
        # Its own temp dir: nodes sharing one would share runtime_resources/, and one node's runtime-env
        # agent would delete a working_dir package the other node's job is still running from.
        self._start("worker", ["--address", f"127.0.0.1:{self.gcs_port}", "--temp-dir", str(self.root / "ray-w")])
        while len(self.alive_nodes()) < 2:
            self._check_alive(deadline)
            time.sleep(2)

    def _check_alive(self, deadline: float) -> None:
        dead = [p.args[2] for p in self.procs if p.poll() is not None]
        assert not dead and time.time() < deadline, f"cluster did not come up (exited: {dead})\n{self.logs()}"

    def stop(self) -> None:
        for proc in reversed(self.procs):  # worker first; --block makes `ray start` stop its node on SIGTERM
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the session each `ray start` was started in
                proc.wait()
        self._kill_leftovers()
        for log in self.log_files:
            log.close()

    def _kill_leftovers(self) -> None:
        """Processes of this cluster that outlived their node (their command lines name its temp dir)."""
        import psutil

        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if proc.pid != os.getpid() and str(self.root) in " ".join(proc.info["cmdline"] or []):
                    proc.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass

    def cli(self, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, *args], check=False, env=env or self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=REPO)

    def list_json(self, what: str, *filters: str) -> list[dict]:
        args = ["list", what, "--address", self.url, "--format", "json", "--detail", "--limit", "10000"]
        for f in filters:
            args += ["--filter", f]
        proc = self.cli(*args)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return _parse_list(proc.stdout)

    def alive_nodes(self) -> list[dict]:
        proc = self.cli("list", "nodes", "--address", self.url, "--format", "json", "--filter", "state=ALIVE")
        return _parse_list(proc.stdout) if proc.returncode == 0 else []

    def submit(self, submission_id: str, entrypoint: list[str], *options: str, timeout: float = 600):
        """`ray job submit` (waits for the job, streaming its logs) run from the repository root."""
        proc = self.cli("job", "submit", "--address", self.url, "--submission-id", submission_id, *options,
                        "--", *entrypoint, timeout=timeout)
        return proc, self.job(submission_id)["status"]

    def job(self, submission_id: str) -> dict:
        (job,) = [j for j in self.list_json("jobs") if j.get("submission_id") == submission_id]
        return job

    def actor_nodes(self, job_id: str, class_name: str) -> list[str]:
        actors = self.list_json("actors", f"job_id={job_id}")
        return [a["node_id"] for a in actors if class_name in (a.get("class_name") or "") + (a.get("repr_name") or "")]


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="rrm-mn-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    c = TwoNodeCluster(root)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


def _assert_succeeded(c: TwoNodeCluster, proc: subprocess.CompletedProcess, status: str) -> None:
    assert status == "SUCCEEDED" and proc.returncode == 0, \
        f"status {status}, rc {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}\n{c.logs()}"


def test_requests_without_the_token_are_refused(cluster):
    env = {**cluster.env, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_AUTH_TOKEN")
    proc = cluster.cli("job", "list", "--address", cluster.url, env=env)
    assert proc.returncode != 0 and "Authentication required" in proc.stderr


def test_train_job_spread_over_two_nodes(cluster, tiny_decoder_dir, tmp_path):
    """The exact user path: `ray job submit --working-dir . -- python jobs/train_rm.py key=value ...`."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    nodes = {n["node_id"] for n in cluster.alive_nodes()}
    assert len(nodes) == 2
    out = tmp_path / "train"
    args = [f"model.name_or_path={tiny_decoder_dir}", f"data.train_files={HH_TRAIN}", f"data.eval_files={HH_TEST}",
            "data.limit=32", "data.max_length=384", "data.pack_tokens=1024", "train.max_steps=2", "train.lora.r=0",
            "train.lr=1e-3", "train.checkpoint_every=0", "train.eval_every=0", "train.cpus_per_worker=1",
            "train.num_workers=2", "train.placement_strategy=SPREAD", "train.tensorboard=false", f"output_dir={out}"]
    proc, status = cluster.submit("rrm-train", ["python", "jobs/train_rm.py", *args], "--working-dir", ".")
    _assert_succeeded(cluster, proc, status)
    assert "[ray_rm] done in" in proc.stdout

    job = cluster.job("rrm-train")
    # The driver ran from the uploaded copy of the repository, not from this checkout.
    assert job["runtime_env"]["working_dir"].startswith("gcs://_ray_pkg_")
    # SPREAD: with 2 CPUs per node both 1-CPU workers would fit on one node (PACK would put them there).
    workers = cluster.actor_nodes(job["job_id"], "RayTrainWorker")
    assert len(workers) == 2 and set(workers) == nodes, workers

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["pairs_seen"] > 0
    model = AutoModelForSequenceClassification.from_pretrained(out / "hf")
    tok = AutoTokenizer.from_pretrained(out / "hf")
    batch = tok(["\n\nHuman: Is the sky blue?\n\nAssistant: Yes, on a clear day."], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, 1) and torch.isfinite(logits).all()


def test_relabel_job_on_two_nodes(cluster, exported_tiny_rm, tmp_path):
    """jobs/relabel_dpo.py with the runtime env users submit with (cluster/runtime_env.yaml)."""
    from ray_rm.data.formats import normalize_row

    exs = [normalize_row(json.loads(line), "hh", i + 1) for i, line in enumerate(HH_TEST.read_text().splitlines()[:20])]
    lines = [json.dumps({"prompt": ex.prompt, "responses": [*ex.responses, exs[(i + 1) % 20].responses[0]]})
             for i, ex in enumerate(exs)]
    lines.insert(7, "{not json")
    cands = tmp_path / "cands.jsonl"
    cands.write_text("\n".join(lines) + "\n")
    out = tmp_path / "relabel"
    # One actor needs a whole node's CPUs, so the two actors can only run on the two different nodes.
    args = [f"relabel.model_path={exported_tiny_rm}", f"relabel.input_files={cands}",
            "relabel.mode=pairs-from-candidates", "relabel.actors=2", f"relabel.cpus_per_actor={CPUS_PER_NODE}",
            "relabel.rows_per_task=4", "relabel.progress=false", f"output_dir={out}"]
    proc, status = cluster.submit("rrm-relabel", ["python", "jobs/relabel_dpo.py", *args],
                                  "--runtime-env", "cluster/runtime_env.yaml")
    _assert_succeeded(cluster, proc, status)

    job = cluster.job("rrm-relabel")
    runtime_env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    assert job["runtime_env"]["env_vars"] == runtime_env["env_vars"]
    assert job["runtime_env"]["working_dir"].startswith("gcs://_ray_pkg_")
    scorers = cluster.actor_nodes(job["job_id"], "RelabelActor")
    assert len(scorers) == 2 and len(set(scorers)) == 2, scorers

    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_read"] == len(lines) == 21
    assert summary["rows_written"] + summary["rows_dropped"] == summary["rows_read"]
    assert summary["dropped"] == {"invalid:row": 1}
    assert summary["num_tasks"] == -(-len(lines) // 4) and summary["tasks_run"] == summary["num_tasks"]
    written = [r for f in sorted((out / "data").glob("part-*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert len(written) == summary["output_rows"] == summary["rows_written"] == 20
    assert all(r["score_chosen"] >= r["score_rejected"] for r in written)
