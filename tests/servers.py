"""Session-wide real servers for the tests, each started on a free port on first use.

The servers come from :mod:`pulse.local.stack` (the same code as ``pulse stack up``), run under a
pytest temporary directory, and are stopped when the session ends. A server that cannot start
raises :class:`pulse.local.stack.StackError` with its log tail, which makes the asking test ERROR.

The slow servers, the JVMs (Apache Kafka, OpenSearch, and the secured Kafka of
tests/helpers/secured_kafka.py), start once per pytest session however many test processes
pytest-xdist runs (:class:`SharedServer`): the first process that asks starts the server and
records it in a JSON file of the directory all the session's processes share; the others read
it. The starter (the *owner*) stops it once no other process uses it: each user holds a shared
``flock`` on the server's ``users`` file until its session ends (the kernel drops it when a
process dies), and the owner stops the server only when it can take the lock exclusively
(:meth:`SessionServers.close`, from ``pytest_sessionfinish``). The owner starts it with
``stop_with_parent``, so a test run killed outright leaves no server running either. The other
servers (tansu, Redis, VictoriaMetrics, PostgreSQL) start in a second or two and stay per
process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

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

SHARED_NAMES = frozenset({"kafka", "search"})
"""The servers :class:`SessionServers` shares between the session's processes (the JVMs)."""

T = TypeVar("T")


def server_record(server: ServerProcess) -> dict[str, Any]:
    """What another process needs to use and probe ``server`` (see :func:`server_of_record`)."""
    return {**server.record(), "name": server.name}


def server_of_record(record: dict[str, Any]) -> ServerProcess:
    """The server :func:`server_record` recorded, as seen by a process that did not start it."""
    return ServerProcess(
        record["name"],
        Path(record["work_dir"]),
        int(record["port"]),
        pid=int(record["pid"]),
        executable=record["executable"],
        kind=record["kind"],
    )


@dataclass(frozen=True)
class Sharing(Generic[T]):
    """How to start a shared server and pass it to the other processes."""

    start: Callable[[Path], T]
    """Starts it in the given directory, with ``stop_with_parent``."""
    server: Callable[[T], ServerProcess]
    """The process to probe and stop."""
    record: Callable[[T], dict[str, Any]]
    """JSON for the other processes ..."""
    of_record: Callable[[dict[str, Any]], T]
    """... and back."""


def _plain(name: str) -> Sharing[ServerProcess]:
    return Sharing(
        start=partial(_STARTERS[name], stop_with_parent=True),
        server=lambda server: server,
        record=server_record,
        of_record=server_of_record,
    )


class SharedServer(Generic[T]):
    """One server for all the session's processes, recorded under ``directory`` (the same
    directory for all of them, e.g. the parent of pytest-xdist's per-worker base temporary
    directories).

    ``directory/NAME.lock`` serialises starting, joining and stopping; ``NAME.json`` records
    the running server (or that its owner stopped it); ``NAME-GENERATION/users`` is the file
    whose shared ``flock`` each user holds.
    """

    def __init__(self, name: str, directory: Path, sharing: Sharing[T]) -> None:
        self.name = name
        self.directory = directory
        self.sharing = sharing
        self.owner = False
        self._value: T | None = None
        self._users: IO[bytes] | None = None

    def get(self) -> T:
        """The running server, started if no process of the session runs it; an error if it
        died (never started anew: every later test would see a fresh, empty server)."""
        if self._value is None:
            self._value = self._join()
        server = self.sharing.server(self._value)
        if not server.alive():
            starter = "this process" if self.owner else "another test process"
            raise RuntimeError(
                f"the session's {self.name} (pid {server.pid}, started by {starter}) died; "
                f"log {server.log_path}:\n{server.log_tail()}"
            )
        return self._value

    def _join(self) -> T:
        with self._locked():
            record = self._read()
            if record is not None and not record["stopped"]:
                users = (Path(record["work_dir"]) / "users").open("ab")
                # The owner takes it exclusively only under the lock we hold, and records
                # "stopped" before letting go of that lock: this cannot block.
                fcntl.flock(users, fcntl.LOCK_SH | fcntl.LOCK_NB)
                self._users = users
                return self.sharing.of_record(record["value"])
            # None started yet, or one whose owner stopped it once it had no more tests (the
            # session's other process still has some): a new one, owned here.
            generation = 1 if record is None else record["generation"] + 1
            work_dir = self.directory / f"{self.name}-{generation}"
            work_dir.mkdir(parents=True)
            value = self.sharing.start(work_dir)
            self._users = (work_dir / "users").open("ab")
            self.owner = True
            self._write(
                {
                    "generation": generation,
                    "work_dir": str(work_dir),
                    "owner_pid": os.getpid(),
                    "stopped": False,
                    "value": self.sharing.record(value),
                }
            )
            return value

    def release(self) -> None:
        """Stop using the server; if this process is a user only, the owner may stop it."""
        if not self.owner and self._users is not None:
            self._users.close()  # drops the shared lock
            self._users = None

    def close(self, poll: float = 0.2) -> None:
        """Release; if this process owns the server, wait until no other process uses it and
        stop it."""
        self.release()
        if not self.owner or self._value is None or self._users is None:
            return
        while True:
            with self._locked():
                try:
                    fcntl.flock(self._users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass  # another process still runs tests with it
                else:
                    record = self._read()
                    assert record is not None
                    self._write({**record, "stopped": True})
                    break
            time.sleep(poll)
        try:
            self.sharing.server(self._value).stop()
        finally:
            self._users.close()
            self._users = None
            self._value = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / f"{self.name}.lock").open("ab") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield  # closing the file drops the lock

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.directory / f"{self.name}.json").read_text())
        except FileNotFoundError:
            return None

    def _write(self, record: dict[str, Any]) -> None:
        path = self.directory / f"{self.name}.json"
        path.with_suffix(".tmp").write_text(json.dumps(record))
        path.with_suffix(".tmp").replace(path)


class SessionServers:
    """Starts each kind of server at most once, lazily, under ``root``; stops all in close().

    The servers of :data:`SHARED_NAMES` are :class:`SharedServer`\\ s recorded under
    ``shared_dir`` (default ``root``), which every process of the session must get alike.
    """

    def __init__(self, root: Path, shared_dir: Path | None = None) -> None:
        self.root = root
        self.shared_dir = root if shared_dir is None else shared_dir
        self._running: dict[str, ServerProcess] = {}
        self._shared: dict[str, SharedServer[Any]] = {}

    def get(self, name: str) -> ServerProcess:
        """The running server ``name`` ("broker" (tansu), "kafka" (Apache Kafka), "redis",
        "influx", "postgres" or "search" (OpenSearch)), started if needed.

        A server that died since it was started is an error, not something to restart
        silently: every test after it would otherwise run against a fresh, empty server.
        """
        if name in SHARED_NAMES:
            return self.shared(name, _plain(name)).get()
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

    def shared(self, name: str, sharing: Sharing[T]) -> SharedServer[T]:
        """The :class:`SharedServer` ``name`` (made on first use; :meth:`SharedServer.get`
        starts or joins it)."""
        if name not in self._shared:
            self._shared[name] = SharedServer(name, self.shared_dir, sharing)
        return self._shared[name]

    def release(self) -> None:
        """Stop every per-process server and stop using the shared ones: for the end of this
        process's tests."""
        errors = []
        for server in self._running.values():
            try:
                server.stop()
                if server.kind == "postgres":  # its data may live outside the session's root
                    shutil.rmtree(postgres_data_dir(server.work_dir), ignore_errors=True)
            except Exception as exc:
                errors.append(f"{server.name}: {exc}")
        self._running.clear()
        for shared in self._shared.values():
            shared.release()
        if errors:
            raise RuntimeError("could not stop test servers: " + "; ".join(errors))

    def close(self) -> None:
        """Release, then stop the shared servers this process started once no other process
        of the session uses them (which may wait for the other's last tests)."""
        self.release()
        errors = []
        for shared in self._shared.values():
            try:
                shared.close()
            except Exception as exc:
                errors.append(f"{shared.name}: {exc}")
        if errors:
            raise RuntimeError("could not stop shared test servers: " + "; ".join(errors))
