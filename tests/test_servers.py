"""tests/servers.py's SharedServer: one server for all of a session's test processes, stopped
by its starter once no other process uses it. Redis stands in for the JVMs it is for; two
SharedServer objects on one directory stand for two processes (their flocks conflict as the
processes' would: each opens the files itself)."""

from __future__ import annotations

import os
import signal
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from pulse.local.stack import ServerProcess, redis_answers, start_redis
from tests.servers import SharedServer, Sharing, server_of_record, server_record

REDIS = Sharing(
    start=partial(start_redis, stop_with_parent=True),
    server=lambda server: server,
    record=server_record,
    of_record=server_of_record,
)


def shared(directory: Path) -> SharedServer[ServerProcess]:
    return SharedServer("redis", directory, REDIS)


def test_the_second_process_joins_and_the_owner_stops_it_after_the_last_user(
    tmp_path: Path,
) -> None:
    owner, user = shared(tmp_path), shared(tmp_path)
    started = owner.get()
    joined = user.get()
    assert (owner.owner, user.owner) == (True, False)
    assert (joined.pid, joined.port, joined.url) == (started.pid, started.port, started.url)
    assert redis_answers(joined.port) is True

    closing = threading.Thread(target=owner.close)
    closing.start()
    time.sleep(0.6)  # several of close()'s polls: it waits while the user holds the server
    assert (closing.is_alive(), started.alive(), user.get().pid) == (True, True, started.pid)
    user.release()
    closing.join(timeout=30)
    assert (closing.is_alive(), started.alive()) == (False, False)


def test_a_process_that_asks_after_the_owner_stopped_starts_its_own(tmp_path: Path) -> None:
    owner, late = shared(tmp_path), shared(tmp_path)
    first = owner.get()
    owner.close()
    second = late.get()
    try:
        assert late.owner is True
        assert second.pid != first.pid and second.alive() and not first.alive()
    finally:
        late.close()
    assert second.alive() is False


def test_a_shared_server_that_died_is_an_error_in_every_process(tmp_path: Path) -> None:
    owner, user = shared(tmp_path), shared(tmp_path)
    server = owner.get()
    user.get()
    os.kill(server.pid or 0, signal.SIGKILL)
    server._wait_gone(10)
    with pytest.raises(RuntimeError, match=r"the session's redis .*started by this process"):
        owner.get()
    with pytest.raises(RuntimeError, match=r"started by another test process\) died"):
        user.get()
    user.release()
    owner.close()
