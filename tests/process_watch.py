"""Run a job as a real subprocess and find every process it left behind, and only those.

Other Ray clusters may run on the same machine (other users, other test sessions), so leftovers are
identified by ancestry, not by name: while the job runs, every descendant of its driver is remembered
with its start time (Ray re-parents nothing while the driver lives), plus any process whose command
line names the job's Ray session directory (the raylet, GCS and agents carry it).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time

import psutil

SESSION = re.compile(r"\(session (\S+)\)")


class JobProcess:
    """A job started in its own session (like a shell job), its output collected, its processes tracked."""

    def __init__(self, argv: list[str], cwd: str, env: dict):
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []
        self.seen: dict[int, float] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def session_dir(self) -> str | None:
        found = SESSION.search(self.output)
        return found.group(1) if found else None

    def snapshot(self) -> None:
        roots = []
        try:
            roots.append(psutil.Process(self.proc.pid))
        except psutil.Error:
            pass
        session = self.session_dir()
        if session:
            for p in psutil.process_iter(["cmdline"]):
                if session in " ".join(p.info["cmdline"] or []):
                    roots.append(p)
                    self._remember(p)
        for root in roots:
            try:
                for child in root.children(recursive=True):
                    self._remember(child)
            except psutil.Error:
                pass

    def _remember(self, p: psutil.Process) -> None:
        try:
            self.seen[p.pid] = p.create_time()
        except psutil.Error:
            pass

    def wait_for(self, pattern: str, timeout: float) -> None:
        """Snapshot processes until ``pattern`` appears in the output (or fail with the output's tail)."""
        deadline = time.time() + timeout
        while pattern not in self.output:
            if self.proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"never saw {pattern!r} (rc {self.proc.poll()}):\n{self.output[-4000:]}")
            self.snapshot()
            time.sleep(0.5)
        self.snapshot()

    def signal(self, signum: int) -> None:
        self.snapshot()
        self.proc.send_signal(signum)

    def leftovers(self) -> list[str]:
        """The remembered processes still running (same pid and start time, not zombies)."""
        alive = []
        for pid, started in self.seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{pid} {p.name()} {' '.join(p.cmdline())[:120]}")
            except psutil.Error:
                continue
        return alive

    def wait_gone(self, timeout: float) -> list[str]:
        deadline = time.time() + timeout
        left = self.leftovers()
        while left and time.time() < deadline:
            time.sleep(0.5)
            left = self.leftovers()
        return left

    def kill_everything(self) -> None:
        """Cleanup after a failed test: the driver, then whatever it left."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        for entry in self.leftovers():
            try:
                os.kill(int(entry.split()[0]), signal.SIGKILL)
            except OSError:
                pass
