"""The bridge's core on a real Redis and a real broker, bridges run in the test's process:
every entry in Kafka once and in its stream's order, dead letters with stream and entry id,
acknowledgements, trims and checkpoints, and the read-back after a round whose outcome a
bridge did not learn, a bridge that stopped before its checkpoints, and one past its
lease's deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis

from models.entries import entry_time_ms
from models.reading import parse_reading
from pulse.bridge import Bridge
from pulse.bridge import _kafka as bridge_kafka
from pulse.bridge._redis import lease_key, state_key
from pulse.bridge.service import LOST, READY
from pulse.settings import Settings
from tests.helpers.bridge import (
    Entry,
    append,
    assert_exactly_once,
    bridge_env,
    read_entries,
    reading_fields,
    stream_name,
)

pytestmark = pytest.mark.integration

T0 = 1_700_000_000


def gateway_entries(prefix: str, streams: int, per_stream: int, seed: int = 0) -> list[Entry]:
    """Entries of 3 devices per stream, both forms, some without ts, every tenth invalid."""
    out = []
    for i in range(per_stream):
        for s in range(streams):
            device = f"{prefix}-s{s}-d{(i + seed) % 3}"
            n = i * streams + s + seed
            if n % 10 == 9:
                fields = {"device": device, "metric": "t", "value": "warm"}
            else:
                t_us = None if n % 7 == 3 else (T0 + n) * 1_000_000
                style = "json" if n % 3 == 0 else "fields"
                fields = reading_fields(device, "t", n / 4, t_us, {"site": "a"}, style)
            out.append(Entry(stream_name(prefix, s), fields))
    return out


def is_invalid(entry: Entry) -> bool:
    return entry.fields.get("value") == "warm"


def settings_of(env: dict[str, str]) -> Settings:
    return Settings.from_env(env)


async def until(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def drained(client: redis.Redis, prefix: str, streams: int) -> bool:
    return all(client.xlen(stream_name(prefix, s)) == 0 for s in range(streams))


async def abandon(bridge: Bridge) -> None:
    """The bridge dies: its loops stop where they are, nothing is released or checkpointed
    (its leases expire)."""
    for stream in bridge.streams.values():
        stream.deadline = 0.0  # writes nothing more, whatever it is doing
    for future in (bridge._main, bridge._reading, bridge._lease_loop):
        # A cancellation can be lost where a future completes at the same moment (Python
        # 3.11's wait_for): cancel until it is done.
        while future is not None and not future.done():
            future.cancel()
            await asyncio.sleep(0.01)
    await bridge.producer.close()


def test_every_entry_once_in_stream_order(broker: str, redis_url: str, topic_prefix: str) -> None:
    env = bridge_env(topic_prefix, broker, redis_url)
    client = redis.Redis.from_url(redis_url)
    entries = gateway_entries(topic_prefix, streams=3, per_stream=400)
    appended = append(client, entries[:600])
    invalid = {
        k for k, e in zip(appended, entries, strict=False) if e.fields.get("value") == "warm"
    }

    async def scenario() -> None:
        bridge = Bridge(settings_of(env))
        await bridge.start()
        try:
            more = append(client, entries[600:])
            appended.extend(more)
            invalid.update(
                k
                for k, e in zip(more, entries[600:], strict=True)
                if e.fields.get("value") == "warm"
            )
            await until(lambda: drained(client, topic_prefix, 3), "the streams drained")
            assert {s.phase for s in bridge.streams.values()} == {READY}
            assert bridge.counters.produced + bridge.counters.dead_lettered == len(entries)
            readings, letters = await read_entries(broker, env)
            assert_exactly_once(appended, readings, letters, invalid)
            settings = bridge.settings
            for record in readings:
                # The worker reads each record as the reading its entry holds, stamped by
                # the entry's time when it has no ts.
                entry = dict(zip(appended, entries, strict=True))[(record.stream, record.entry_id)]
                assert record.value is not None
                reading = parse_reading(
                    record.key,
                    record.value,
                    entry_time_ms(record.entry_id.encode()),
                    settings.max_message_bytes,
                    settings.max_future_us,
                )
                fields = entry.fields
                if "json" in fields:
                    fields = {k: str(v) for k, v in orjson.loads(fields["json"]).items()}
                if "ts" not in fields:
                    assert reading.t_us == entry_time_ms(record.entry_id.encode()) * 1000
                assert reading.device == fields["device"] == record.key.decode()  # type: ignore[union-attr]
                assert record.token == 1
            for letter in letters:
                doc = orjson.loads(letter.value or b"")
                assert (doc["stream"], doc["entry_id"]) == (letter.stream, letter.entry_id)
                assert doc["reason"] == "invalid_reading" and "'value'" in doc["detail"]
                assert doc["partition"] is None and doc["offset"] is None
                assert letter.key == letter.stream.encode()
            for s in range(3):
                name = stream_name(topic_prefix, s)
                last = max((i for st, i in appended if st == name), key=_order)
                assert client.hget(state_key(name), "acked") == last.encode()
                # The group is a cursor only (XREADGROUP NOACK): nothing pending in it.
                assert client.xpending(name, f"{topic_prefix}app-bridge")["pending"] == 0
                assert bridge.streams[name].backlog == 0
        finally:
            await bridge.stop()
        # Stopped: its leases are released for the next bridge at once.
        assert [client.get(lease_key(stream_name(topic_prefix, s))) for s in range(3)] == [None] * 3

    asyncio.run(scenario())


def _order(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


def test_read_back_finds_what_a_dead_bridge_produced(
    broker: str, redis_url: str, topic_prefix: str
) -> None:
    """A bridge dies after Kafka acknowledged its rounds and before any checkpoint: the next
    finds them all in the topics and produces only what comes after."""
    env = bridge_env(topic_prefix, broker, redis_url)
    client = redis.Redis.from_url(redis_url)
    entries = gateway_entries(topic_prefix, streams=2, per_stream=300)
    appended = append(client, entries[:400])

    async def scenario() -> None:
        first = Bridge(settings_of(env))

        async def no_checkpoint(*args: Any) -> None:
            round_ = args[0]
            for stream in round_.parts:
                stream.rounds -= 1

        first._checkpoint = no_checkpoint  # type: ignore[method-assign,assignment]
        await first.start()
        await until(lambda: first.counters.produced + first.counters.dead_lettered == 400, "400")
        await abandon(first)
        second = Bridge(settings_of(env))
        await second.start()
        try:
            appended.extend(append(client, entries[400:]))
            await until(lambda: drained(client, topic_prefix, 2), "the streams drained")
            assert second.counters.skipped == 400
            assert second.counters.produced + second.counters.dead_lettered == 200
            assert second.counters.read_backs >= 1
            readings, letters = await read_entries(broker, env)
            assert_exactly_once(appended, readings, letters)
            assert {r.token for r in readings} == {1, 2}
        finally:
            await second.stop()

    asyncio.run(scenario())


def test_a_round_that_may_have_failed_is_read_back(
    broker: str, redis_url: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rounds that reached Kafka but whose acknowledgement the bridge did not get (a
    timeout, a connection lost) are found by the read-back, not produced again."""
    env = bridge_env(topic_prefix, broker, redis_url)
    client = redis.Redis.from_url(redis_url)
    entries = gateway_entries(topic_prefix, streams=3, per_stream=200)
    real_send = bridge_kafka.FencedProducer.send
    calls = {"n": 0}

    async def flaky_send(self: Any, batches: Any, fence: Any) -> Any:
        calls["n"] += 1
        ends = await real_send(self, batches, fence)
        if calls["n"] % 3 == 1:
            raise bridge_kafka.ProduceFailed("the answer was lost (test)")
        return ends

    monkeypatch.setattr(bridge_kafka.FencedProducer, "send", flaky_send)

    async def scenario() -> None:
        bridge = Bridge(settings_of(env))
        await bridge.start()
        try:
            appended = []
            for start in range(0, len(entries), 50):
                appended += append(client, entries[start : start + 50])
                await asyncio.sleep(0.02)
            await until(lambda: drained(client, topic_prefix, 3), "the streams drained", 60)
            assert bridge.counters.failed_rounds > 0
            assert bridge.counters.skipped > 0
            readings, letters = await read_entries(broker, env)
            assert_exactly_once(appended, readings, letters)
        finally:
            await bridge.stop()

    asyncio.run(scenario())


def test_a_bridge_past_its_deadline_writes_nothing(
    broker: str, redis_url: str, topic_prefix: str
) -> None:
    """A bridge that cannot renew (its renewals stop, as when paused) stops producing half a
    lease after its last renewal; the next holder takes over; the first, when it renews
    again, knows it lost the streams."""
    env = bridge_env(topic_prefix, broker, redis_url, lease=1.0)
    client = redis.Redis.from_url(redis_url)
    entries = gateway_entries(topic_prefix, streams=2, per_stream=300)

    async def scenario() -> None:
        first = Bridge(settings_of(env))
        await first.start()
        appended = append(client, entries[:200])
        await until(lambda: drained(client, topic_prefix, 2), "first entries moved")
        assert first._lease_loop is not None
        first._lease_loop.cancel()  # no more renewals
        await asyncio.sleep(0.6)  # past the deadline (half the lease)
        produced = first.counters.produced + first.counters.dead_lettered
        appended.extend(append(client, entries[200:400]))
        await asyncio.sleep(0.5)
        assert first.counters.produced + first.counters.dead_lettered == produced
        assert first.counters.rounds > 0
        second = Bridge(settings_of(env))
        await second.start()
        try:
            appended.extend(append(client, entries[400:]))
            await until(lambda: drained(client, topic_prefix, 2), "the streams drained")
            # Its renewals again (as when a paused process resumes): refused.
            first._lease_loop = first.add_future(first._leases())
            await until(
                lambda: all(s.phase == LOST for s in first.streams.values()),
                "the first bridge to find out",
            )
            readings, letters = await read_entries(broker, env)
            assert_exactly_once(appended, readings, letters)
            assert {r.token for r in readings} == {1, 2}
        finally:
            await second.stop()
            await first.stop()

    asyncio.run(scenario())


def test_bridges_share_the_streams(broker: str, redis_url: str, topic_prefix: str) -> None:
    env = bridge_env(topic_prefix, broker, redis_url, lease=1.0)
    client = redis.Redis.from_url(redis_url)
    entries = gateway_entries(topic_prefix, streams=4, per_stream=300)
    appended = append(client, entries[:400])

    def held(bridge: Bridge) -> int:
        return sum(1 for s in bridge.streams.values() if s.phase == READY)

    async def scenario() -> None:
        first = Bridge(settings_of(env))
        second = Bridge(settings_of(env))
        await first.start()
        await until(lambda: held(first) == 4, "the first bridge to take every stream")
        await second.start()
        try:
            await until(lambda: held(first) == 2 and held(second) == 2, "two streams each")
            for start in range(400, len(entries), 100):
                appended.extend(append(client, entries[start : start + 100]))
                await asyncio.sleep(0.05)
            await until(lambda: drained(client, topic_prefix, 4), "the streams drained")
            assert first.counters.released == 2
            await first.stop()
            await until(lambda: held(second) == 4, "the second bridge to take every stream")
            appended.extend(append(client, gateway_entries(topic_prefix, 4, 10, seed=1)))
            await until(lambda: drained(client, topic_prefix, 4), "the streams drained again")
            readings, letters = await read_entries(broker, env)
            assert_exactly_once(appended, readings, letters)
        finally:
            await second.stop()
            await first.stop()

    asyncio.run(scenario())


def test_on_a_redis_cluster(broker: str, redis_cluster: Any, topic_prefix: str) -> None:
    """The same on a Redis Cluster: each stream's keys in its slot, reads fenced in Lua."""
    from tests.helpers.redis_cluster import sync_redis

    env = bridge_env(topic_prefix, broker, redis_cluster.url)
    client = sync_redis(redis_cluster.url)
    entries = gateway_entries(topic_prefix, streams=3, per_stream=200)
    appended: list[tuple[str, str]] = []
    for entry in entries:
        entry_id = client.xadd(entry.stream, entry.fields)  # type: ignore[arg-type]
        appended.append((entry.stream, bytes(entry_id).decode()))  # type: ignore[arg-type]

    def cluster_drained() -> bool:
        return all(client.xlen(stream_name(topic_prefix, s)) == 0 for s in range(3))

    async def scenario() -> None:
        bridge = Bridge(settings_of(env))
        await bridge.start()
        try:
            await until(cluster_drained, "the streams drained", 60)
            readings, letters = await read_entries(broker, env)
            assert_exactly_once(appended, readings, letters)
        finally:
            await bridge.stop()

    asyncio.run(scenario())
