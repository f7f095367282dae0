"""The alerts writer: the alerts topic into Redis's active alerts and the event stream.

Real servers: the session's tansu broker and redis-server (and the session's Redis Cluster
for the sink alone). Transitions built with models.alerts.AlertTransition go into a
two-partition ``alerts`` topic, keyed by device: window rules that fire, resolve and fire
again, an absence rule resolved by a reading before its deadline (a resolution whose end is
earlier than its firing's), a silenced alert, a rule whose window changed while it fired
(two alerts of one rule and device at once), a worker's repeat of a partition's tail (the
same records again, later in the topic), and records that are no transitions. The active
alerts and the stream must equal what the topic's order says (tests/helpers/alerts.py,
without the sink's fence), each transition one event; then a writer of another group
reading everything again, and old fetches written late (a writer that lost its partitions,
in another order), change nothing and add no event.
"""

from __future__ import annotations

import asyncio

import orjson
import redis.asyncio as aioredis

from agents.alerts_writer import AlertsWriter
from models.alerts import AlertTransition
from pulse.local.redis_cluster import RedisCluster
from pulse.settings import Settings
from pulse.sinks.alerts import AlertsSink, alert_record
from tests.helpers import kafka
from tests.helpers.alerts import absence_alert, alert_of, expected_alerts, keyed, window_alert
from tests.helpers.topic_writers import run_until_written

TTL = 3600
Events = list[tuple[bytes, dict[bytes, bytes]]]


def settings_for(prefix: str, broker: str, redis_url: str, app: str) -> Settings:
    return Settings.from_env(
        {
            "PULSE_BROKER": broker,
            "PULSE_REDIS_URL": redis_url,
            "PULSE_APP_ID": app,
            "PULSE_TOPIC_READINGS": f"{prefix}-readings",
            "PULSE_TOPIC_AGGREGATES": f"{prefix}-aggregates",
            "PULSE_TOPIC_ALERTS": f"{prefix}-alerts",
            "PULSE_TOPIC_DLQ": f"{prefix}-dlq",
            "PULSE_TOPIC_OUTPUT_DLQ": f"{prefix}-output-dlq",
            "PULSE_REDIS_PREFIX": prefix,
            "PULSE_PARTITIONS": "2",
            "PULSE_SESSION_TIMEOUT": "2",
            "PULSE_STATE_TTL": str(TTL),
        }
    )


def scenario(p: str) -> tuple[list[AlertTransition], list[AlertTransition]]:
    """The transitions of partition 0 (device ``{p}-a``) and 1 (``{p}-b``), in topic order."""
    a, b = f"{p}-a", f"{p}-b"
    hot_1 = window_alert("hot", a, "t", "10s", 10, 1, "firing", 91.5)
    hot_1_resolved = window_alert("hot", a, "t", "10s", 10, 3, "resolved", 65.25)
    hot_2 = window_alert("hot", a, "t", "10s", 10, 5, "firing", 88.0)
    # No reading from 0 s; firing at the deadline 30 s; a reading stamped 25 s arrives after
    # (its window still open) and resolves it: its end is before the firing's. Then quiet
    # again from that reading: firing at 55 s.
    quiet = absence_alert("quiet", a, "t", "firing", 0, 30)
    quiet_resolved = absence_alert("quiet", a, "t", "resolved", 25, 30)
    quiet_again = absence_alert("quiet", a, "t", "firing", 25, 30)
    partition_0 = [hot_1, quiet, hot_1_resolved, quiet_resolved]
    # The worker crashed before its changelog: it emits the same tail again, then goes on.
    partition_0 += [hot_1, quiet, hot_1_resolved, quiet_resolved, hot_2, quiet_again]

    muted = window_alert("hot", b, "t", "10s", 10, 2, "firing", 99.0, silenced=True)
    cold = window_alert("cold", b, "h", "1m", 60, 1, "firing", 10.0, aggregate="min")
    cold_resolved = window_alert("cold", b, "h", "1m", 60, 2, "resolved", 35.0, aggregate="min")
    # Rule "moved" judged 10s windows and fired; its window became 1m: the 1m series fires,
    # then the 10s series' next window resolves the old one. Two alerts of (rule, device).
    moved_10s = window_alert("moved", b, "t", "10s", 10, 1, "firing", 85.0, severity="page")
    moved_1m = window_alert("moved", b, "t", "1m", 60, 0, "firing", 84.0, severity="page")
    moved_10s_resolved = window_alert(
        "moved", b, "t", "10s", 10, 6, "resolved", 84.5, severity="page"
    )
    partition_1 = [muted, cold, moved_10s, moved_1m, cold_resolved, moved_10s_resolved]
    return partition_0, partition_1


async def run_writer(settings: Settings, records: int) -> AlertsWriter:
    return await run_until_written(AlertsWriter(settings), records)


async def redis_contents(
    redis_url: str, prefix: str
) -> tuple[dict[str, bytes], Events, dict[str, int]]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        active: dict[bytes, bytes] = await client.hgetall(f"{prefix}:alerts:active")  # type: ignore[assignment]
        events: Events = await client.xrange(f"{prefix}:events")  # type: ignore[assignment]
        ttls = {
            key: await client.ttl(key)
            for key in (f"{prefix}:alerts:active", f"{{{prefix}:alerts:active}}:v")
        }
    finally:
        await client.aclose()
    return {k.decode(): v for k, v in active.items()}, events, ttls


def test_active_alerts_and_their_events_follow_the_topic_once_whatever_replays(
    broker: str, redis_url: str, topic_prefix: str
) -> None:
    p = topic_prefix
    partition_0, partition_1 = scenario(p)
    garbage = [
        (b"x", b"{not json"),
        (
            f"{p}-b".encode(),
            partition_1[0].json().replace(b'"state":"firing"', b'"state":"pending"'),
        ),
    ]
    topic = f"{p}-alerts"
    asyncio.run(kafka.create_topics(broker, {topic: 2}))
    produced: list[tuple[int | None, bytes | None, bytes | None, int | None]] = [
        *[(0, k, v, None) for k, v in keyed(partition_0)],
        *[(1, k, v, None) for k, v in [*keyed(partition_1), *garbage]],
    ]
    stored = asyncio.run(kafka.produce(broker, topic, produced))

    settings = settings_for(p, broker, redis_url, f"{p}app")
    writer = asyncio.run(run_writer(settings, len(produced)))
    assert writer.group_id == f"{p}app-alerts"

    values_0 = [t.json() for t in partition_0]
    values_1 = [t.json() for t in partition_1]
    want_active, (events_0, events_1) = expected_alerts([values_0, values_1])
    # The contract's consequences, spelled out: a's second firings, b's muted alert and the
    # moved rule's 1m alert are active; every distinct transition is one event.
    hot_2, quiet_again = partition_0[-2:]
    muted, moved_1m = partition_1[0], partition_1[3]
    assert want_active == {alert_of(t): t.json() for t in (hot_2, quiet_again, muted, moved_1m)}
    assert events_0 == values_0[:4] + values_0[-2:]
    assert events_1 == values_1

    active, events, ttls = asyncio.run(redis_contents(redis_url, p))
    assert active == want_active
    assert [fields for _, fields in events if list(fields) != [b"alert"]] == []
    streamed = [fields[b"alert"] for _, fields in events]
    # Each partition's events in its order (the two partitions interleave by fetch).
    assert [v for v in streamed if orjson.loads(v)["device"] == f"{p}-a"] == events_0
    assert [v for v in streamed if orjson.loads(v)["device"] == f"{p}-b"] == events_1
    # The active alerts have no TTL (an alert fires as long as it fires); their versions do.
    assert ttls[f"{p}:alerts:active"] == -1
    assert 0 < ttls[f"{{{p}:alerts:active}}:v"] <= TTL
    assert writer.sink is not None and writer.sink.health.document() == {
        "state": "ok",
        "since": writer.sink.health.since,
        "dead_letters": 2,
    }
    assert writer.sink.events_added == len(events_0) + len(events_1)  # type: ignore[attr-defined]

    letters = asyncio.run(kafka.read_all(broker, f"{p}-output-dlq"))
    offsets = [s.offset for s in stored if s.partition == 1][-2:]
    assert [orjson.loads(r.value or b"") for r in letters] == [
        {
            "reason": "unreadable",
            "sink": "alerts",
            "target": f"topic {topic} partition 1 offset {offsets[0]}",
            "answer": "not an alert transition (not JSON: unexpected character, "
            "expected a string key: line 1 column 2 (char 1))",
            "key": "x",
            "output": "{not json",
        },
        {
            "reason": "unreadable",
            "sink": "alerts",
            "target": f"topic {topic} partition 1 offset {offsets[1]}",
            "answer": "not an alert transition: state 'pending' is not one",
            "key": f"{p}-b",
            "output": garbage[1][1].decode(),
        },
    ]

    # A replay of the whole topic (another group, from the beginning) adds no event and
    # changes no alert.
    again = asyncio.run(run_writer(settings_for(p, broker, redis_url, f"{p}again"), len(produced)))
    assert again.sink is not None
    assert again.sink.events_added == 0  # type: ignore[attr-defined]
    assert asyncio.run(redis_contents(redis_url, p)) == (active, events, ttls)

    # A writer that lost its partitions writes old fetches late, in any order: nothing moves.
    async def late_writes(*fetches: list[bytes]) -> int:
        sink = AlertsSink(redis_url, p, TTL)
        try:
            for fetch in fetches:
                records = [alert_record(v) for v in fetch]
                await sink.write_records(records, [None] * len(records))
        finally:
            await sink.stop()
        return sink.events_added

    fetches = (values_0[:4], values_1[:3], values_0[4:8][::-1], values_0[:1])
    assert asyncio.run(late_writes(*fetches)) == 0
    assert asyncio.run(redis_contents(redis_url, p))[:2] == (active, events)

    # The versions expired (a day without a transition): a firing alert's version is read
    # from its JSON, so older transitions of the alerts that fire still change nothing.
    async def forget_versions() -> None:
        client = aioredis.Redis.from_url(redis_url)
        await client.delete(f"{{{p}:alerts:active}}:v")
        await client.aclose()

    asyncio.run(forget_versions())
    assert asyncio.run(late_writes(values_0[:-1], values_0[2:6][::-1])) == 0
    assert asyncio.run(redis_contents(redis_url, p))[:2] == (active, events)


def test_the_sink_on_a_redis_cluster_adds_each_event_once(
    redis_cluster: RedisCluster, topic_prefix: str
) -> None:
    p = topic_prefix
    partition_0, partition_1 = scenario(p)
    values = [t.json() for t in [*partition_0, *partition_1]]
    want_active, (events_0, events_1) = expected_alerts(
        [[t.json() for t in partition_0], [t.json() for t in partition_1]]
    )

    async def run() -> tuple[dict[str, bytes], list[bytes], int]:
        sink = AlertsSink(redis_cluster.url, p, TTL)
        try:
            for begin in range(0, len(values), 3):  # fetches of three, then everything again
                chunk = [alert_record(v) for v in values[begin : begin + 3]]
                await sink.write_records(chunk, [None] * len(chunk))
            added = sink.events_added
            everything = [alert_record(v) for v in values]
            await sink.write_records(everything, [None] * len(everything))
            assert sink.events_added == added
        finally:
            await sink.stop()
        client = redis_cluster.client()
        try:
            active: dict[bytes, bytes] = client.hgetall(f"{p}:alerts:active")  # type: ignore[assignment]
            events: Events = client.xrange(f"{p}:events")  # type: ignore[assignment]
        finally:
            client.close()
        return (
            {k.decode(): v for k, v in active.items()},
            [fields[b"alert"] for _, fields in events],
            added,
        )

    active, streamed, added = asyncio.run(run())
    assert active == want_active
    assert streamed == events_0 + events_1  # one writer, in order
    assert added == len(streamed)
