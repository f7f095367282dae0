"""The history writer: the aggregates topic into Redis history and the event stream.

Real servers: the session's tansu broker and redis-server. Records written as the Kafka sink
writes them go into a two-partition topic: more windows of a series than the history keeps,
an older one after those, a window closed early (fewer readings, as a zombie's idle close
does) before and after its full version, identical repeats, and records that are no
aggregates records. The history must equal what the contract says it keeps (computed here
by :func:`history_reference`, which shares nothing with the Lua script), with one event per
window that changed it; a second writer reading the whole topic again (a new group) must add
no event and change nothing.
"""

from __future__ import annotations

import asyncio

import orjson
import redis.asyncio as aioredis

from agents.history_writer import HistoryWriter
from pulse.settings import Settings
from pulse.sinks.kafka import aggregate_records
from tests.helpers import kafka
from tests.helpers.history import closed_window
from tests.helpers.redis_windows import ORDER as WINDOW_FIELDS
from tests.helpers.topic_writers import run_until_written

LENGTH = 5
TTL = 3600


def history_reference(
    records: list[tuple[int, bytes]], length: int
) -> tuple[dict[tuple[str, str, str], list[bytes]], list[bytes]]:
    """What the history holds per (window, device, metric), oldest first, and the events in
    the order each partition's records cause them, from the contract: per window start the
    record with the highest count (the first of equal ones), the newest ``length`` starts
    kept, and an event for each record that entered the history."""
    held: dict[tuple[str, str, str], dict[float, tuple[int, bytes]]] = {}
    events: list[bytes] = []
    for _, value in records:
        doc = orjson.loads(value)
        series = held.setdefault((doc["window"], doc["device"], doc["metric"]), {})
        before = series.get(doc["start"])
        if before is not None and before[0] >= doc["count"]:
            continue
        series[doc["start"]] = (doc["count"], value)
        for start in sorted(series)[:-length]:
            del series[start]
        if doc["start"] in series:
            events.append(value)
    history = {key: [series[s][1] for s in sorted(series)] for key, series in held.items()}
    return history, events


def settings_for(prefix: str, broker: str, redis_url: str, app: str) -> Settings:
    return Settings.from_env(
        {
            "PULSE_BROKER": broker,
            "PULSE_REDIS_URL": redis_url,
            "PULSE_APP_ID": app,
            "PULSE_TOPIC_READINGS": f"{prefix}-readings",
            "PULSE_TOPIC_AGGREGATES": f"{prefix}-aggregates",
            "PULSE_TOPIC_DLQ": f"{prefix}-dlq",
            "PULSE_TOPIC_OUTPUT_DLQ": f"{prefix}-output-dlq",
            "PULSE_REDIS_PREFIX": prefix,
            "PULSE_PARTITIONS": "2",
            "PULSE_SESSION_TIMEOUT": "2",
            "PULSE_STATE_TTL": str(TTL),
            "PULSE_HISTORY_LENGTH": str(LENGTH),
        }
    )


async def run_writer(settings: Settings, records: int) -> HistoryWriter:
    return await run_until_written(HistoryWriter(settings), records)


async def redis_contents(
    redis_url: str, prefix: str
) -> tuple[
    dict[str, list[tuple[bytes, float]]], dict[str, int], list[tuple[bytes, dict[bytes, bytes]]]
]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = sorted([k.decode() async for k in client.scan_iter(f"{prefix}:history:*")])
        history = {k: await client.zrange(k, 0, -1, withscores=True) for k in keys}
        ttls = {k: await client.ttl(k) for k in keys}
        events = await client.xrange(f"{prefix}:events")
    finally:
        await client.aclose()
    return history, ttls, events  # type: ignore[return-value]


def test_the_history_holds_the_newest_windows_once_and_a_replay_changes_nothing(
    broker: str, redis_url: str, topic_prefix: str
) -> None:
    p = topic_prefix
    a = [closed_window(f"{p}-a", "t", "10s", 10, k, [float(k), k + 0.5]) for k in range(1, 9)]
    older = closed_window(f"{p}-a", "t", "10s", 10, 0, [7.0])  # older than the newest LENGTH
    b1 = closed_window(f"{p}-b", "h", "1m", 60, 1, [1.0, 2.0])
    b2_early = closed_window(f"{p}-b", "h", "1m", 60, 2, [3.0])
    b2_full = closed_window(f"{p}-b", "h", "1m", 60, 2, [3.0, 4.0, 5.0])
    b3 = closed_window(f"{p}-b", "h", "1m", 60, 3, [6.0])
    c1 = closed_window(f"{p}-c", "t", "30s/10s", 30, 1, [1.25, -2.5])
    partition_0 = aggregate_records([*a, older])
    partition_1 = aggregate_records([b1, b2_early, b2_full, b2_early, c1, c1, b3])
    garbage = [
        (b"x", b"{not json"),
        (f"{p}-b".encode(), partition_1[0][1].replace(b'"device":"', b'"device":"bad:')),
    ]
    topic = f"{p}-aggregates"
    asyncio.run(kafka.create_topics(broker, {topic: 2}))
    produced: list[tuple[int | None, bytes | None, bytes | None, int | None]] = [
        *[(0, k, v, None) for k, v in partition_0],
        *[(1, k, v, None) for k, v in [*partition_1, *garbage]],
    ]
    stored = asyncio.run(kafka.produce(broker, topic, produced))

    settings = settings_for(p, broker, redis_url, f"{p}app")
    writer = asyncio.run(run_writer(settings, len(produced)))
    assert writer.group_id == f"{p}app-history"

    history, events_0 = history_reference([(0, v) for _, v in partition_0], LENGTH)
    history_1, events_1 = history_reference([(1, v) for _, v in partition_1], LENGTH)
    history.update(history_1)
    # The contract's consequences, spelled out: the newest LENGTH of series a (not the older
    # one), b's second window in full, c's once.
    assert history[("10s", f"{p}-a", "t")] == [v for _, v in aggregate_records(a[-LENGTH:])]
    assert history[("1m", f"{p}-b", "h")] == [v for _, v in aggregate_records([b1, b2_full, b3])]
    assert len(events_0) == len(a) and len(events_1) == 5

    found, ttls, events = asyncio.run(redis_contents(redis_url, p))
    # Each member is the window as readers answer it: its fields in the contract's order.
    assert {
        key: [(list(orjson.loads(member).items()), score) for member, score in members]
        for key, members in found.items()
    } == {
        f"{p}:history:{label}:{device}:{metric}": [
            ([(n, orjson.loads(v)[n]) for n in WINDOW_FIELDS], orjson.loads(v)["start"])
            for v in values
        ]
        for (label, device, metric), values in history.items()
    }
    assert all(0 < ttl <= TTL for ttl in ttls.values()), ttls
    assert [fields for _, fields in events if b"window" not in fields] == []
    streamed = [fields[b"window"] for _, fields in events]
    # Each partition's events in its order (the two partitions interleave by fetch).
    assert [v for v in streamed if orjson.loads(v)["device"] == f"{p}-a"] == events_0
    assert [v for v in streamed if orjson.loads(v)["device"] != f"{p}-a"] == events_1
    assert writer.sink is not None and writer.sink.health.document() == {
        "state": "ok",
        "since": writer.sink.health.since,
        "dead_letters": 2,
    }

    letters = asyncio.run(kafka.read_all(broker, f"{p}-output-dlq"))
    offsets = [s.offset for s in stored if s.partition == 1][-2:]
    assert [orjson.loads(r.value or b"") for r in letters] == [
        {
            "reason": "unreadable",
            "sink": "history",
            "target": f"topic {topic} partition 1 offset {offsets[0]}",
            "answer": "not an aggregates record (not JSON: unexpected character, "
            "expected a string key: line 1 column 2 (char 1))",
            "key": "x",
            "output": "{not json",
        },
        {
            "reason": "unreadable",
            "sink": "history",
            "target": f"topic {topic} partition 1 offset {offsets[1]}",
            "answer": f"not an aggregates record: device or metric 'bad:{p}-b' is no name",
            "key": f"{p}-b",
            "output": garbage[1][1].decode(),
        },
    ]

    # A replay of the whole topic (another group, from the beginning) adds no event and
    # changes no member.
    again = asyncio.run(run_writer(settings_for(p, broker, redis_url, f"{p}again"), len(produced)))
    assert again.sink is not None
    assert again.sink.events_added == 0  # type: ignore[attr-defined]
    found_again, _, events_again = asyncio.run(redis_contents(redis_url, p))
    assert found_again == found
    assert events_again == events
