"""The Redis sink on a real Redis Cluster: calls grouped by slot, slots that move while it
writes (MOVED, and ASK/TRYAGAIN during the migration), and the fence across nodes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import hiredis
import redis

from models.outputs import Latest
from pulse.local.redis_cluster import RedisCluster
from pulse.sinks._base import FlushBatch
from pulse.sinks.redis import WINDOW_FIELD, RedisSink, fenced_calls
from tables import _native
from tests.pulse.sinks.test_redis_sink import view_of

S = 1_000_000


def keys_of(call: bytes) -> list[bytes]:
    """The keys of a packed ``EVALSHA sha numkeys key ...`` call."""
    reader = hiredis.Reader()
    reader.feed(call)
    parts = reader.gets()
    assert parts[0] == b"EVALSHA"
    return list(parts[3 : 3 + int(parts[2])])


def test_calls_for_a_cluster_hold_the_keys_of_one_slot(redis_cluster: RedisCluster) -> None:
    """Every call's keys (each key and its ``{KEY}:v``) are in one slot, as the cluster
    itself computes it, and every write is in exactly one call."""
    views = [view_of(f"dev-{n}", "t", "10s", 0, [1.0]) for n in range(300)]
    writes = _native.open_view_writes(views, "p:open:", {}, 0.0, 60, WINDOW_FIELD)
    writes += _native.latest_writes(
        [Latest(f"dev-{n}", "t", S, 1.0, 1) for n in range(300)], "p:device:", {}, 0.0, 60
    )
    calls = fenced_calls(writes, 60, 50, by_slot=True)
    client = redis_cluster.client()
    seen: list[bytes] = []
    for call in calls:
        keys = keys_of(call)
        slots = {client.cluster_keyslot(key.decode()) for key in keys}
        assert len(slots) == 1, keys
        assert len(keys) <= 100
        seen += keys[::2]
    assert sorted(seen) == sorted(
        [f"p:open:10s:dev-{n}:t".encode() for n in range(300)]
        + [f"p:device:dev-{n}".encode() for n in range(300)]
    )
    # Consecutive writes of one slot share calls: no more calls than slots here.
    assert len(calls) == len({client.cluster_keyslot(k.decode()) for k in seen})


def node_id(client: redis.Redis) -> str:
    return str(client.execute_command("CLUSTER", "MYID").decode())


def test_the_sink_follows_a_slot_that_moves_and_keeps_fencing(
    redis_cluster: RedisCluster, topic_prefix: str
) -> None:
    """A slot resharded from one master to another: a write during the migration (its key
    already moved: ASK to the target, TRYAGAIN there while the key's version beside it is
    missing) waits it out, writes after it follow MOVED, and a late write is still refused."""
    p = topic_prefix
    key = f"{p}:device:d1"
    source = redis_cluster.master_of(key)
    target = next(m for m in redis_cluster.masters() if m is not source)
    src = redis.Redis(port=source.port)
    dst = redis.Redis(port=target.port)
    slot = int(src.execute_command("CLUSTER", "KEYSLOT", key))
    sink = RedisSink(redis_cluster.url, p, 60, parts=frozenset({RedisSink.LATEST}))

    async def run() -> tuple[dict[Any, Any], bool]:
        await sink.start()
        await sink.write(FlushBatch(latest=[Latest("d1", "t", 1 * S, 1.0, 1)]))
        # Reshard the slot as redis-cli does: importing, migrating, the keys, the owner.
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(src))
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(dst))
        for moving in src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.migrate("127.0.0.1", target.port, moving, 0, 5000)
        during = asyncio.ensure_future(
            sink.write(FlushBatch(latest=[Latest("d1", "t", 2 * S, 2.0, 2)]))
        )
        await asyncio.sleep(1.5)
        waited = not during.done()
        for master in redis_cluster.masters():
            with redis.Redis(port=master.port) as node:
                node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(dst))
        await asyncio.wait_for(during, 30)
        await sink.write(FlushBatch(latest=[Latest("d1", "t", 3 * S, 3.0, 3)]))
        await sink.write(FlushBatch(latest=[Latest("d1", "t", 2 * S, 9.0, 2)]))  # late
        await sink.stop()
        return dst.hgetall(key), waited

    try:
        stored, waited = asyncio.run(run())
    finally:
        redis_cluster.wait_healthy()
    assert stored == {b"t": b"3.0", b"t:ts": b"3", b"t:v": b"3000000:3"}
    assert src.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0  # all moved
    assert waited  # the write during the migration waited for it to end
    assert sink.refused == 1
    assert redis_cluster.master_of(key) is target
    assert 0 < redis_cluster.client().ttl(key) <= 60


def test_a_new_layout_counts_as_a_new_connection(
    redis_cluster: RedisCluster, topic_prefix: str
) -> None:
    """The sink's connections grow when the client reads the cluster's layout again (here
    after a MOVED), which makes its lane rewrite the live state (agents/flush.py)."""
    p = topic_prefix
    key = f"{p}:device:d2"
    sink = RedisSink(redis_cluster.url, p, 60, parts=frozenset({RedisSink.LATEST}))

    async def run() -> list[int]:
        counts = []
        await sink.start()
        await sink.write(FlushBatch(latest=[Latest("d2", "t", 1 * S, 1.0, 1)]))
        counts.append(sink.connections)
        await sink.write(FlushBatch(latest=[Latest("d2", "t", 2 * S, 2.0, 2)]))
        counts.append(sink.connections)
        source = redis_cluster.master_of(key)
        target = next(m for m in redis_cluster.masters() if m is not source)
        moved = subprocess_reshard(redis_cluster, key, target)
        assert moved
        await sink.write(FlushBatch(latest=[Latest("d2", "t", 3 * S, 3.0, 3)]))
        counts.append(sink.connections)
        await sink.stop()
        return counts

    counts = asyncio.run(run())
    assert counts[0] == counts[1] == 1
    assert counts[2] > 1
    assert redis_cluster.client().hget(key, "t") == b"3.0"


def subprocess_reshard(cluster: RedisCluster, key: str, target: Any) -> bool:
    """Move ``key``'s slot (with its keys) to ``target``; True once every master agrees."""
    source = cluster.master_of(key)
    with redis.Redis(port=source.port) as src, redis.Redis(port=target.port) as dst:
        slot = int(src.execute_command("CLUSTER", "KEYSLOT", key))
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(src))
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(dst))
        for moving in src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.migrate("127.0.0.1", target.port, moving, 0, 5000)
        for master in cluster.masters():
            with redis.Redis(port=master.port) as node:
                node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(dst))
    deadline = time.monotonic() + 10
    while cluster.master_of(key) is not target:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    cluster.wait_healthy()
    return True
