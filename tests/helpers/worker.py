"""A real Pulse worker (``python -m pulse worker``) as a child process of the test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Self

from pulse.local.stack import free_port


class WorkerProcess:
    """Starts ``pulse worker`` (or another ``command`` of ``pulse`` serving ``/health`` on the
    port of ``port_variable``) with the given ``PULSE_*`` environment in ``work_dir``."""

    def __init__(
        self,
        env: dict[str, str],
        work_dir: Path,
        name: str = "worker",
        *,
        command: str = "worker",
        port_variable: str = "PULSE_WEB_PORT",
    ) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env, port_variable: str(self.port)}
        self.work_dir = work_dir
        self.name = name
        self.command = command
        self.log_path = work_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pulse", self.command, "-l", "info"],
            cwd=self.work_dir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            health = self.health()
            if health and health["ready"]:
                return health
            time.sleep(0.2)
        raise AssertionError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def wait_caught_up(self, end_offsets: dict[int, int], timeout: float = 60.0) -> None:
        """Wait until this worker's partitions have applied every record below the ends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            health = self.health() or {}
            offsets = {int(p): o for p, o in health.get("next_offsets", {}).items()}
            if offsets and all(offsets[p] >= end_offsets.get(p, 0) for p in offsets):
                return
            time.sleep(0.2)
        raise AssertionError(f"{self.name} did not catch up:\n{self.log_tail()}")

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
            )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                raise AssertionError(f"{self.name} ignored {sig}:\n{self.log_tail()}") from None
        return self.process.returncode

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"
