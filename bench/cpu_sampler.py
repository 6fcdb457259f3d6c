"""Who used the CPU while a benchmark ran: every process's CPU seconds, sampled from a background thread.

Why: on this 2-core machine a training step's speed varies ±10% from run to run, which hides a 10% effect.
CPU seconds do not vary like that. They show where the cores went: to the training process, or to the
processes beside it (Ray's GCS, raylet, dashboard and idle actors, each of whose main threads wakes every
10 ms to check for signals, a period hard-coded in Ray's core worker).

Every process on the machine counts, as it competes for the same cores: run the benches on an otherwise idle
machine. Used by ``train_throughput.py`` (the job's worker vs everything else) and ``ray_idle_floor.py`` (a bare
loop beside an idle Ray cluster).
"""
from __future__ import annotations

import threading
import time
from collections import Counter

import psutil


def label_of(cmdline: list | None, name: str) -> str:
    """A short name: "ray::TrainController.run", "gcs_server", "log_monitor.py" (the script, not the python)."""
    words = [w.rsplit("/", 1)[-1] for w in (cmdline or [])[:4]]
    if words and words[0].startswith("python"):
        words = [w for w in words[1:] if not w.startswith("-")] or words
    return " ".join(words[:2]).strip()[:60] or name


def snapshot() -> tuple[float, dict]:
    """(time, {pid: (label, user+system CPU seconds)}) for every readable process on the machine."""
    procs = {}
    for p in psutil.process_iter(["cmdline", "name", "cpu_times"]):
        try:
            times = p.info["cpu_times"]
            if times is None:
                continue
            procs[p.pid] = (label_of(p.info["cmdline"], p.info["name"]), times.user + times.system)
        except (psutil.Error, OSError):
            continue
    return time.time(), procs


class CpuSampler:
    """Snapshots every ``interval`` seconds inside a ``with`` block (and one at each end)."""

    def __init__(self, interval: float = 2.0):
        self.interval = interval
        self.snaps: list[tuple[float, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.snaps.append(snapshot())

    def __enter__(self) -> "CpuSampler":
        self.snaps.append(snapshot())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.snaps.append(snapshot())


def busiest_window(snaps: list, pid: int) -> tuple[int, int]:
    """Indices (first, last) of the snapshots bounding the span where ``pid`` ran at >= 70% of its peak rate:
    the steady training phase of a job, without its start-up and export."""
    rates = []
    for i in range(len(snaps) - 1):
        (t0, a), (t1, b) = snaps[i], snaps[i + 1]
        rates.append((b[pid][1] - a[pid][1]) / (t1 - t0) if pid in a and pid in b else 0.0)
    if not rates or max(rates) <= 0:
        return 0, len(snaps) - 1
    busy = [i for i, r in enumerate(rates) if r >= 0.7 * max(rates)]
    return busy[0], busy[-1] + 1


def cpu_split(snaps: list, pid: int, first: int = 0, last: int = -1, top: int = 6) -> dict:
    """Cores used by ``pid`` and by every other process between two snapshots, and the busiest others."""
    (t0, a), (t1, b) = snaps[first], snaps[last]
    seconds = t1 - t0
    others = {}
    for p, (label, cpu) in b.items():
        if p != pid and p in a and cpu > a[p][1]:  # a process born inside the window is left out
            others[p] = (label, (cpu - a[p][1]) / seconds)
    ray_procs = [p for p, (label, _) in b.items() if p != pid and p in a and label.startswith("ray::")]
    ray_kinds = Counter(b[p][0].split()[0].split(".")[0] for p in ray_procs)  # "ray::TrainController.run" -> ...
    busiest = sorted(others.values(), key=lambda x: -x[1])[:top]
    return {"window_s": round(seconds, 1),
            "process_cores": round((b[pid][1] - a[pid][1]) / seconds, 3) if pid in a and pid in b else None,
            "other_cores": round(sum(c for _, c in others.values()), 3),
            "ray_worker_processes_beside": len(ray_procs),
            "ray_worker_processes_by_name": dict(sorted(ray_kinds.items())),
            "busiest_others": [[label, round(c, 3)] for label, c in busiest]}


def find_pid(snaps: list, label_part: str) -> int | None:
    """The busiest process started inside the sampled span whose label contains ``label_part`` (e.g.
    "RayTrainWorker"): the sampled job's own, not one of another cluster running at the same time."""
    first = snaps[0][1]
    cpu: dict[int, float] = {}
    for _, procs in snaps:
        for p, (label, used) in procs.items():
            if label_part in label and p not in first:
                cpu[p] = max(cpu.get(p, 0.0), used)
    return max(cpu, key=cpu.get) if cpu else None
