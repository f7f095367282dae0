"""What one benchmarked system reports, and how it is measured.

Every system runs in its own subprocess. Inside it, a :class:`Stopwatch` starts at the first
record consumed and stops when the last window result has been emitted; it reads the process's
own CPU time (all threads, so librdkafka's and RocksDB's threads count) at both ends. The
parent reaps the subprocess with ``os.wait4``, which adds the CPU time of the whole process
(imports, group join and shutdown included) and its peak RSS.

The servers the systems talk to (the broker, Redis, VictoriaMetrics) run as their own
processes, so their work is not in a system's CPU time. The runner names their pids in
``BENCH_SERVER_PIDS`` and the stopwatch reads each one's CPU time from ``/proc`` at the same
two moments: ``servers_cpu_seconds`` is what the servers spent on the system's behalf, and
with the system's own CPU it bounds how fast the machine's cores could run that work at all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class RunResult:
    """One system's measurement. ``seconds`` runs from first record consumed to last window
    emitted; ``cpu_seconds`` is user+sys of the process over that same interval."""

    system: str
    readings: int
    seconds: float
    cpu_seconds: float
    windows_emitted: int | None = None
    # Filled in by the parent from os.wait4: the whole subprocess, startup and shutdown included.
    process_cpu_seconds: float | None = None
    peak_rss_bytes: int | None = None
    note: str = ""
    servers_cpu_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    """CPU seconds each local server (``broker``, ``redis``, ``influx``) used over the same
    interval; empty when the runner named no servers (see ``BENCH_SERVER_PIDS``)."""

    @property
    def readings_per_second(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["readings_per_second"] = round(self.readings_per_second, 1)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunResult:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


def process_cpu_seconds() -> float:
    """User+sys CPU seconds of this process so far, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


SERVER_PIDS_ENV = "BENCH_SERVER_PIDS"
"""``name=pid,name=pid``: the local servers whose CPU the stopwatches read."""


def server_pids(environ: Mapping[str, str] = os.environ) -> dict[str, int]:
    """The servers named in ``BENCH_SERVER_PIDS`` (none when it is unset or empty)."""
    text = environ.get(SERVER_PIDS_ENV, "").strip()
    pids: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, pid = item.partition("=")
        if not sep or not name or not pid.isdigit():
            raise ValueError(f"{SERVER_PIDS_ENV}: {item!r} is not name=pid")
        pids[name] = int(pid)
    return pids


def server_pids_text(pids: Mapping[str, int]) -> str:
    """The ``BENCH_SERVER_PIDS`` value naming ``pids``."""
    return ",".join(f"{name}={pid}" for name, pid in pids.items())


def stat_cpu_seconds(stat: str, ticks_per_second: int) -> float:
    """User+sys CPU seconds of a process from the text of its ``/proc/<pid>/stat``.

    The command name (field 2, in parentheses) may hold spaces and parentheses: the fields
    counted are those after the last ``)``; utime and stime are fields 14 and 15."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks_per_second


_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def servers_cpu_seconds(pids: Mapping[str, int]) -> dict[str, float]:
    """Each server's CPU seconds so far. A server that is gone is an error: the measurement
    would silently lose its share."""
    out = {}
    for name, pid in pids.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            raise RuntimeError(f"server {name} (pid {pid}) is not running") from None
        out[name] = stat_cpu_seconds(stat, _TICKS_PER_SECOND)
    return out


def cpu_spent(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """``after - before`` per server, rounded to the clock's ticks."""
    return {name: round(after[name] - before[name], 3) for name in before}


class Stopwatch:
    """Wall and CPU time from :meth:`start` (first record) to :meth:`stop` (last window)."""

    def __init__(self, servers: Mapping[str, int] | None = None) -> None:
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self._cpu_at_start = 0.0
        self._cpu_at_stop = 0.0
        self._servers = server_pids() if servers is None else dict(servers)
        self._servers_at_start: dict[str, float] = {}
        self._servers_at_stop: dict[str, float] = {}

    @property
    def running(self) -> bool:
        return self.started_at is not None and self.stopped_at is None

    def start(self) -> None:
        if self.started_at is None:
            self.started_at = time.perf_counter()
            self._cpu_at_start = process_cpu_seconds()
            self._servers_at_start = servers_cpu_seconds(self._servers)

    def stop(self, at: float | None = None) -> None:
        """Stop now, or at an earlier ``at`` (a perf_counter reading) when the end was seen
        before the system could be told to finish; CPU is read now either way."""
        self.stopped_at = time.perf_counter() if at is None else at
        self._cpu_at_stop = process_cpu_seconds()
        self._servers_at_stop = servers_cpu_seconds(self._servers)

    @property
    def seconds(self) -> float:
        if self.started_at is None or self.stopped_at is None:
            return 0.0
        return self.stopped_at - self.started_at

    @property
    def cpu_seconds(self) -> float:
        return self._cpu_at_stop - self._cpu_at_start

    @property
    def servers_cpu_seconds(self) -> dict[str, float]:
        """Each server's CPU seconds from start to stop (empty before both)."""
        if not self._servers_at_stop:
            return {}
        return cpu_spent(self._servers_at_start, self._servers_at_stop)


def write_result(path: str | Path, result: RunResult) -> None:
    """Written by the measured subprocess for the parent to read."""
    Path(path).write_text(json.dumps(result.to_json(), indent=2) + "\n")


class SystemFailed(RuntimeError):
    """A benchmarked subprocess exited without a result; the message carries its output tail."""


def run_measured_subprocess(
    module: str,
    arguments: Sequence[str],
    result_path: Path,
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 1800.0,
) -> RunResult:
    """Run ``python -m module arguments... --result-file result_path`` and return its result.

    The child writes its :class:`RunResult` to ``result_path``; this adds the child's whole
    CPU time and peak RSS, taken from ``os.wait4`` when the child is reaped.
    """
    result_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", module, *arguments, "--result-file", str(result_path)]
    with log_path.open("wb") as log:
        child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            # wait4 (not Popen.wait) because only it returns the child's rusage.
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                child.kill()
                pid, status, usage = os.wait4(child.pid, 0)
                break
            time.sleep(0.05)
        child.returncode = os.waitstatus_to_exitcode(status)
    if not result_path.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise SystemFailed(
            f"{module} exited with code {child.returncode} and no result; log {log_path}:\n{tail}"
        )
    result = RunResult.from_json(json.loads(result_path.read_text()))
    result.process_cpu_seconds = round(usage.ru_utime + usage.ru_stime, 3)
    # Linux reports ru_maxrss in KiB.
    result.peak_rss_bytes = usage.ru_maxrss * 1024
    return result


def metrics_text(base_url: str) -> str:
    """The Prometheus text a Pulse process serves at ``{base_url}/metrics``."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as response:
        return str(response.read().decode())
