"""The indexer: dead letters and alert transitions from their topics into OpenSearch.

Real servers: the session's tansu broker and OpenSearch. Records made by the worker's own
types (models.outputs.DeadLetter, models.alerts.AlertTransition) go into two-partition
topics, with a worker's repeat of a tail (the same records again, later in the topic), a
letter from before letters carried their record's time, and records that are no letters or
transitions. Every document must equal what tests/helpers/search.py computes from the
records without Pulse's code: one per id, in the daily index of its event time, the
unreadable records in the output dead-letter topic. Then: a mapping conflict (a daily index
made with another mapping) sends that day's documents to the output dead-letter topic and
indexes the rest; OpenSearch answering 429 (an index blocked for disk) is waited out; the
retention deletes whole daily indices and indexes nothing older.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from opensearchpy import AsyncOpenSearch

from agents.indexer import AlertsIndexer, DeadLettersIndexer, Indexer
from models.alerts import AlertTransition
from models.outputs import DeadLetter
from pulse.search.documents import MS_PER_DAY
from pulse.settings import Settings
from pulse.sinks.search import SearchSink
from tests.helpers import kafka
from tests.helpers import search as reference
from tests.helpers.alerts import absence_alert, window_alert

pytestmark = pytest.mark.integration

DAY = MS_PER_DAY
TODAY = int(time.time() * 1000) // DAY * DAY
"""Midnight (UTC, epoch ms) of the day the tests run."""


def settings_for(prefix: str, broker: str, search_url: str, **extra: str) -> Settings:
    return Settings.from_env(
        {
            "PULSE_BROKER": broker,
            "PULSE_SEARCH_URL": search_url,
            "PULSE_SEARCH_PREFIX": prefix,
            "PULSE_SEARCH_REPLICAS": "0",
            "PULSE_SEARCH_RETENTION_DAYS": "0",
            "PULSE_APP_ID": f"{prefix}app",
            "PULSE_TOPIC_READINGS": f"{prefix}-readings",
            "PULSE_TOPIC_AGGREGATES": f"{prefix}-aggregates",
            "PULSE_TOPIC_ALERTS": f"{prefix}-alerts",
            "PULSE_TOPIC_DLQ": f"{prefix}-dlq",
            "PULSE_TOPIC_OUTPUT_DLQ": f"{prefix}-output-dlq",
            "PULSE_PARTITIONS": "2",
            "PULSE_SESSION_TIMEOUT": "2",
            **extra,
        }
    )


def letters(prefix: str) -> list[DeadLetter]:
    """Dead letters as the worker makes them, of yesterday and today (UTC)."""
    t = f"{prefix}-readings"
    yesterday, today = TODAY - DAY + 3_600_000, TODAY + 60_000
    big = b'{"device":"dev-7","metric":"t","value":1,"note":"' + b"x" * 2000 + b'"}'
    return [
        DeadLetter("invalid_json", "not JSON", t, 0, 0, b"dev-1", b"{oops", 100_000, yesterday),
        DeadLetter(
            "invalid_reading",
            "the record key is not the device",
            t, 0, 1, b"dev-2",
            b'{"device":"dev-3","metric":"temp","value":1,"tags":{"site":"plant-b"}}',
            100_000, yesterday + 5,
        ),
        DeadLetter("invalid_json", "not UTF-8", t, 1, 0, b"dev-4", b"\xff\xfe", 100_000, today),
        DeadLetter("invalid_json", "a tombstone", t, 1, 1, None, None, 100_000, today + 1),
        DeadLetter("too_large", "over 64 KiB", t, 1, 2, b"dev-5", b"y" * 300, 100, today + 2),
        DeadLetter("late", "window closed", t, 0, 2, b"dev-7", big, 100_000, today + 3),
        DeadLetter("late", "no key, a name", t, 0, 3, b"not a name", b"7", 100_000, today + 4),
    ]  # fmt: skip


def alerts(prefix: str) -> list[AlertTransition]:
    a, b = f"{prefix}-a", f"{prefix}-b"
    return [
        window_alert("hot", a, "t", "10s", 10, 1, "firing", 91.5),
        window_alert("hot", a, "t", "10s", 10, 3, "resolved", 65.25),
        absence_alert("quiet", a, "t", "firing", 0.5, 30),
        window_alert("hot", b, "t", "10s", 10, 2, "firing", 99.0, silenced=True, site=None),
        window_alert("cold", b, "h", "1m", 60, 1, "firing", 10.0, aggregate="min"),
    ]


async def run_indexers(writers: list[Indexer], records: int, timeout: float = 60.0) -> None:
    """Run ``writers`` until together they have written and committed ``records``."""
    for writer in writers:
        await writer.start()
    try:
        deadline = time.monotonic() + timeout
        while sum(w.written for w in writers) < records:
            written = sum(w.written for w in writers)
            assert time.monotonic() < deadline, f"wrote {written} of {records} records"
            assert not any(w.crashed for w in writers), [w.crash_reason for w in writers]
            await asyncio.sleep(0.1)
        assert sum(w.written for w in writers) == records
    finally:
        for writer in writers:
            await writer.stop()


def produce_letters(broker: str, topic: str, records: list[tuple[int, DeadLetter]]) -> list[Any]:
    return asyncio.run(
        kafka.produce(
            broker,
            topic,
            [(p, letter.key, orjson.dumps(letter.document()), None) for p, letter in records],
        )
    )


def test_dead_letters_and_alerts_are_indexed_once_each_in_the_day_of_their_event_time(
    broker: str, search_url: str, topic_prefix: str
) -> None:
    p = topic_prefix
    settings = settings_for(p, broker, search_url)
    asyncio.run(kafka.create_topics(broker, {f"{p}-dlq": 2, f"{p}-alerts": 2}))
    made = letters(p)
    # Partition 0: its letters, then a worker's repeat of its tail; partition 1 likewise.
    on_0 = [x for x in made if x.partition == 0]
    on_1 = [x for x in made if x.partition == 1]
    stored = produce_letters(
        broker,
        f"{p}-dlq",
        [(0, x) for x in [*on_0, *on_0[1:]]] + [(1, x) for x in [*on_1, on_1[-1]]],
    )
    # A letter of a worker from before letters carried their record's time: its own record's
    # time stands in. And records that are no dead letters.
    old = DeadLetter("late", "old", f"{p}-readings", 1, 9, b"dev-9", b"{}", 100, None)
    stored += asyncio.run(
        kafka.produce(
            broker,
            f"{p}-dlq",
            [
                (1, b"dev-9", orjson.dumps(old.document()), TODAY + 7_000),
                (0, b"x", b"{not json", None),
                (1, b"x", b'{"reason":"late","detail":"no position"}', None),
            ],
        )
    )
    transitions = alerts(p)
    alert_records: list[tuple[int | None, bytes | None, bytes | None, int | None]] = [
        (i % 2, t.device.encode(), t.json(), None) for i, t in enumerate(transitions)
    ]
    alert_records += [*alert_records[:2], (1, b"x", b'{"id":"x"}', None)]
    stored_alerts = asyncio.run(kafka.produce(broker, f"{p}-alerts", alert_records))

    writers: list[Indexer] = [DeadLettersIndexer(settings), AlertsIndexer(settings)]
    asyncio.run(run_indexers(writers, len(stored) + len(stored_alerts)))
    assert [w.group_id for w in writers] == [f"{p}app-search-dead-letters", f"{p}app-search-alerts"]

    want_letters = reference.expected(
        reference.dead_letter(p, r.value, r.timestamp)
        for r in stored
        if r.value and r.value.startswith(b'{"reason"') and b'"topic"' in r.value
    )
    assert len(want_letters) == len(made) + 1
    assert reference.read(search_url, f"{p}-dead-letters") == want_letters
    days = {index for index, _ in want_letters}
    assert days == {
        reference.day_index(p, "dead-letters", TODAY - DAY),
        reference.day_index(p, "dead-letters", TODAY),
    }
    want_alerts = reference.expected(
        reference.alert(p, r.value) for r in stored_alerts if r.key != b"x"
    )
    assert len(want_alerts) == len(transitions)
    assert reference.read(search_url, f"{p}-alerts") == want_alerts

    # The records that are no letters or transitions, in the output dead-letter topic.
    unreadable = asyncio.run(kafka.read_all(broker, f"{p}-output-dlq"))
    found = sorted(
        (doc["sink"], doc["reason"], doc["output"])
        for doc in (orjson.loads(r.value or b"") for r in unreadable)
    )
    assert found == [
        ("search-alerts", "unreadable", '{"id":"x"}'),
        ("search-dead-letters", "unreadable", '{"reason":"late","detail":"no position"}'),
        ("search-dead-letters", "unreadable", "{not json"),
    ]
    # The daily indices were made by Pulse's template: its mapping, behind the alias.
    mapping = asyncio.run(_mapping(search_url, f"{p}-alerts"))
    assert mapping["dynamic"] == "false"
    assert mapping["properties"]["labels"] == {"type": "flat_object"}
    assert mapping["properties"]["time"] == {"type": "date", "format": "epoch_millis"}


async def _mapping(url: str, alias: str) -> dict[str, Any]:
    client = AsyncOpenSearch(hosts=[url])
    try:
        answer = await client.indices.get_mapping(index=alias)
    finally:
        await client.close()
    (index,) = answer.values()
    mapping: dict[str, Any] = index["mappings"]
    return mapping


async def _admin(url: str, action: str, index: str, body: dict[str, Any] | None = None) -> None:
    client = AsyncOpenSearch(hosts=[url])
    try:
        if action == "create":
            await client.indices.create(index=index, body=body)
        else:
            await client.indices.put_settings(index=index, body=body)
    finally:
        await client.close()


def test_a_mapping_conflict_sends_the_refused_documents_to_the_output_dead_letters(
    broker: str, search_url: str, topic_prefix: str
) -> None:
    p = topic_prefix
    settings = settings_for(p, broker, search_url)
    asyncio.run(kafka.create_topics(broker, {f"{p}-dlq": 1}))
    # Today's index made by hand with ``detail`` a number: today's letters are refused.
    today = reference.day_index(p, "dead-letters", TODAY)
    conflict = {"mappings": {"properties": {"detail": {"type": "long"}}}}
    asyncio.run(_admin(search_url, "create", today, conflict))
    made = [x for x in letters(p) if x.partition == 0]
    stored = produce_letters(broker, f"{p}-dlq", [(0, x) for x in made])
    writer = DeadLettersIndexer(settings)
    asyncio.run(run_indexers([writer], len(stored)))

    entries = [reference.dead_letter(p, r.value, r.timestamp) for r in stored]
    indexed = reference.expected(e for e in entries if e[0] != today)
    refused = [e for e in entries if e[0] == today]
    assert indexed and refused
    assert reference.read(search_url, f"{p}-dead-letters") == indexed
    letters_out = [
        orjson.loads(r.value or b"") for r in asyncio.run(kafka.read_all(broker, f"{p}-output-dlq"))
    ]
    assert sorted((d["sink"], d["reason"], d["target"]) for d in letters_out) == [
        ("search-dead-letters", "refused", f"index {today}")
    ] * len(refused)
    assert all("mapper_parsing_exception" in d["answer"] for d in letters_out)
    assert sorted(orjson.loads(d["output"])["id"] for d in letters_out) == sorted(
        e[1] for e in refused
    )
    assert sorted(d["key"] for d in letters_out) == sorted(
        (x.key or b"").decode() for x in made if x.timestamp and x.timestamp >= TODAY
    )
    assert writer.search_sink is not None
    assert writer.search_sink.health.dead_letters == len(refused)


def test_opensearch_answering_429_is_waited_out_and_nothing_is_lost(
    broker: str, search_url: str, topic_prefix: str
) -> None:
    p = topic_prefix
    settings = settings_for(p, broker, search_url, PULSE_SEARCH_BULK_DOCS="2")
    asyncio.run(kafka.create_topics(broker, {f"{p}-dlq": 1}))
    made = [x for x in letters(p) if x.partition == 0]
    stored = produce_letters(broker, f"{p}-dlq", [(0, x) for x in made])
    # Both days' indices exist (made by the indexer's template) and refuse writes with 429,
    # as OpenSearch does for an index blocked at the disk's flood stage.
    asyncio.run(_blocked_run(search_url, settings, p, len(stored)))
    want = reference.expected(reference.dead_letter(p, r.value, r.timestamp) for r in stored)
    assert reference.read(search_url, f"{p}-dead-letters") == want


async def _blocked_run(url: str, settings: Settings, prefix: str, records: int) -> None:
    first = SearchSink(settings, "dead-letters")
    await first.start()
    await first.put_template()
    await first.stop()
    for day in (TODAY - DAY, TODAY):
        await _admin(url, "create", reference.day_index(prefix, "dead-letters", day))
    pattern = f"{prefix}-dead-letters-*"
    await _admin(url, "settings", pattern, {"index.blocks.read_only_allow_delete": True})
    writer = DeadLettersIndexer(settings)
    await writer.start()
    try:
        deadline = time.monotonic() + 60
        sink = writer.search_sink
        while sink is None or sink.health.state != "waiting":
            assert time.monotonic() < deadline, "the indexer never waited"
            await asyncio.sleep(0.1)
            sink = writer.search_sink
        assert writer.written == 0
        assert "429" in (sink.health.reason or "")
        await asyncio.sleep(1.0)
        assert writer.written == 0  # still waiting, nothing dropped or committed
        await _admin(url, "settings", pattern, {"index.blocks.read_only_allow_delete": None})
        while writer.written < records:
            assert time.monotonic() < deadline, f"wrote {writer.written} of {records}"
            await asyncio.sleep(0.1)
        assert sink.health.state == "ok"
        assert sink.health.backpressure >= 1
        assert sink.indexed == records
    finally:
        await writer.stop()


def test_retention_deletes_whole_daily_indices_and_indexes_nothing_older(
    search_url: str, topic_prefix: str
) -> None:
    p = topic_prefix
    settings = settings_for(p, "kafka://127.0.0.1:1", search_url, PULSE_SEARCH_RETENTION_DAYS="3")
    asyncio.run(_retention(search_url, settings, p))


async def _retention(url: str, settings: Settings, prefix: str) -> None:
    today = TODAY // DAY
    for day in (today - 40, today - 3, today - 2, today):
        await _admin(url, "create", reference.day_index(prefix, "alerts", day * DAY))
    other = reference.day_index(f"{prefix}x", "alerts", (today - 40) * DAY)
    await _admin(url, "create", other)  # another prefix's: not ours to delete
    sink = SearchSink(settings, "alerts", now=lambda: TODAY / 1000 + 3600)
    await sink.start()
    try:
        deadline = time.monotonic() + 30
        while not sink.deleted_indices:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert sink.deleted_indices == [
            reference.day_index(prefix, "alerts", (today - 40) * DAY),
            reference.day_index(prefix, "alerts", (today - 3) * DAY),
        ]
        assert await sink.expire() == []
        # A transition older than the retention (of 2023) is not indexed.
        old = window_alert("hot", "d", "t", "10s", 10, 0, "firing", 90.0)
        docs = [sink.read_record(t.json()) for t in (old,)]
        assert docs[0] is not None and docs[0].day < today - 2
        await sink.write_records(docs, [b"d"])
        assert (sink.expired, sink.indexed) == (1, 0)
        client = AsyncOpenSearch(hosts=[url])
        try:
            left = await client.cat.indices(index=f"{prefix}*-alerts-*", params={"format": "json"})
            assert sorted(entry["index"] for entry in left) == sorted(
                [
                    reference.day_index(prefix, "alerts", (today - 2) * DAY),
                    reference.day_index(prefix, "alerts", today * DAY),
                    other,
                ]
            )
        finally:
            await client.close()
    finally:
        await sink.stop()
