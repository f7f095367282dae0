"""The bridge through outages, on servers of the test's own: Redis frozen past the leases
(the bridge stops writing, renews or takes its streams again when Redis answers), and the
broker frozen mid-stream (the bridge waits, entries wait in Redis). Neither loses or repeats
an entry."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pulse.bridge import Bridge
from pulse.local.stack import ServerProcess, start_broker, start_redis
from pulse.settings import Settings
from tests.helpers.bridge import (
    append,
    assert_exactly_once,
    bridge_env,
    read_entries,
    stream_name,
)
from tests.pulse.bridge.test_bridge import drained, gateway_entries, until

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_redis(tmp_path / "redis", stop_with_parent=True)
    yield server
    if server.pid is not None:
        os.kill(server.pid, signal.SIGCONT)
    server.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_broker(tmp_path / "broker", stop_with_parent=True)
    yield server
    if server.pid is not None:
        os.kill(server.pid, signal.SIGCONT)
    server.stop()


def freeze(server: ServerProcess, seconds: float) -> threading.Thread:
    """SIGSTOP ``server`` now and SIGCONT it ``seconds`` later (in a thread)."""
    assert server.pid is not None
    pid = server.pid
    os.kill(pid, signal.SIGSTOP)

    def thaw() -> None:
        time.sleep(seconds)
        os.kill(pid, signal.SIGCONT)

    thread = threading.Thread(target=thaw, daemon=True)
    thread.start()
    return thread


def test_redis_frozen_past_the_leases(
    broker: str, own_redis: ServerProcess, topic_prefix: str
) -> None:
    env = bridge_env(topic_prefix, broker, own_redis.url, lease=1.0)
    client = redis.Redis.from_url(own_redis.url)
    entries = gateway_entries(topic_prefix, streams=2, per_stream=300)
    appended = append(client, entries[:300])

    async def scenario() -> None:
        bridge = Bridge(Settings.from_env(env))
        await bridge.start()
        try:
            await until(lambda: drained(client, topic_prefix, 2), "the first entries moved")
            thawed = freeze(own_redis, 3.0)  # three leases: every call waits meanwhile
            await asyncio.to_thread(thawed.join)
            appended.extend(append(client, entries[300:]))
            await until(lambda: drained(client, topic_prefix, 2), "the rest moved", 60)
            await until(lambda: bridge.redis_health.state == "ok", "Redis ok again")
            assert bridge.counters.acquired == 4  # each stream taken again, read back
            readings, letters = await read_entries(broker, env)
            assert_exactly_once(appended, readings, letters)
        finally:
            await bridge.stop()

    asyncio.run(scenario())


def test_broker_frozen_mid_stream(
    own_broker: ServerProcess, redis_url: str, topic_prefix: str
) -> None:
    env = bridge_env(topic_prefix, own_broker.url, redis_url, lease=1.0)
    client = redis.Redis.from_url(redis_url)
    entries = gateway_entries(topic_prefix, streams=3, per_stream=400)
    appended = append(client, entries[:300])

    async def scenario() -> None:
        bridge = Bridge(Settings.from_env(env))
        await bridge.start()
        try:
            await until(lambda: drained(client, topic_prefix, 3), "the first entries moved")
            thawed = freeze(own_broker, 4.0)
            for start in range(300, 900, 50):  # appended while the broker is frozen
                appended.extend(append(client, entries[start : start + 50]))
                await asyncio.sleep(0.1)
            assert sum(int(client.xlen(stream_name(topic_prefix, s))) for s in range(3)) > 0
            await asyncio.to_thread(thawed.join)
            appended.extend(append(client, entries[900:]))
            await until(lambda: drained(client, topic_prefix, 3), "the rest moved", 60)
            readings, letters = await read_entries(own_broker.url, env)
            assert_exactly_once(appended, readings, letters)
        finally:
            await bridge.stop()

    asyncio.run(scenario())
