"""Session-wide real servers for the tests, each started on a free port on first use.

The servers come from :mod:`pulse.local.stack` (the same code as ``pulse stack up``), run under a
pytest temporary directory, and are stopped when the session ends. A server that cannot start
raises :class:`pulse.local.stack.StackError` with its log tail, which makes the asking test ERROR.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path

from pulse.local.stack import (
    ServerProcess,
    postgres_data_dir,
    start_broker,
    start_postgres,
    start_redis,
    start_search,
    start_victoria,
)

_STARTERS: dict[str, Callable[..., ServerProcess]] = {
    "broker": start_broker,
    "kafka": partial(start_broker, kind="kafka"),
    "redis": start_redis,
    "influx": start_victoria,
    "postgres": start_postgres,
    "search": start_search,
}


class SessionServers:
    """Starts each kind of server at most once, lazily, under ``root``; stops all in close()."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._running: dict[str, ServerProcess] = {}

    def get(self, name: str) -> ServerProcess:
        """The running server ``name`` ("broker" (tansu), "kafka" (Apache Kafka), "redis",
        "influx", "postgres" or "search" (OpenSearch)), started if needed.

        A server that died since it was started is an error, not something to restart
        silently: every test after it would otherwise run against a fresh, empty server.
        """
        server = self._running.get(name)
        if server is None:
            # stop_with_parent: a test run killed outright still takes its servers along.
            server = _STARTERS[name](self.root, stop_with_parent=True)
            self._running[name] = server
        elif not server.alive():
            raise RuntimeError(
                f"the session's {name} (pid {server.pid}) died; log {server.log_path}:\n"
                f"{server.log_tail()}"
            )
        return server

    def close(self) -> None:
        """Stop every server this session started."""
        errors = []
        for server in self._running.values():
            try:
                server.stop()
                if server.kind == "postgres":  # its data may live outside the session's root
                    shutil.rmtree(postgres_data_dir(server.work_dir), ignore_errors=True)
            except Exception as exc:
                errors.append(f"{server.name}: {exc}")
        self._running.clear()
        if errors:
            raise RuntimeError("could not stop test servers: " + "; ".join(errors))
