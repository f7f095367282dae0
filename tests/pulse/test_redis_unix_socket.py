"""Redis over a unix socket (``PULSE_REDIS_URL=unix:///PATH?db=N``): the settings take it,
the Redis sink writes through it and the readers (``pulse state``) read back what it wrote,
on a real redis-server listening on a socket only."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from models.outputs import Latest
from pulse.live_state import device_state
from pulse.redis_clients import redis_client
from pulse.settings import Settings
from pulse.sinks._base import FlushBatch
from pulse.sinks.redis import RedisSink


@pytest.fixture
def socket_path(tmp_path: Path) -> Iterator[Path]:
    """A redis-server on a unix socket in ``tmp_path``, no TCP port."""
    path = tmp_path / "redis.sock"
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--unixsocket",
            str(path),
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not path.exists():
            assert server.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not open its socket"
            time.sleep(0.05)
        yield path
    finally:
        server.terminate()
        server.wait(10)


def test_the_sink_and_the_readers_use_a_unix_socket(socket_path: Path, topic_prefix: str) -> None:
    url = f"unix://{socket_path}?db=2"
    settings = Settings.from_env({"PULSE_REDIS_URL": url, "PULSE_REDIS_PREFIX": topic_prefix})
    assert settings.redis_url == url

    async def run() -> dict[str, object]:
        sink = RedisSink(url, topic_prefix, 60)
        await sink.start()
        try:
            await sink.write(
                FlushBatch(latest=[Latest("dev-1", "t", 1_700_000_000_500_000, 21.5, 8)])
            )
        finally:
            await sink.stop()
        client = redis_client(settings)
        try:
            assert await client.exists(f"{topic_prefix}:device:dev-1") == 1
            return await device_state(client, settings, "dev-1")
        finally:
            await client.aclose()

    state = asyncio.run(run())
    assert state["latest"] == {"t": {"value": 21.5, "ts": 1_700_000_000.5}}
    # In database 2, as the URL says, and nowhere else.
    for db, held in ((2, 1), (0, 0)):
        raw = redis.Redis(unix_socket_path=str(socket_path), db=db)
        assert raw.exists(f"{topic_prefix}:device:dev-1") == held, db
        raw.close()
