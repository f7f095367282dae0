"""The search index from a real worker: windows (opt-in) and dead letters, exact through a
SIGKILL of the worker and one of the indexer.

The crash tests' dataset (tests/helpers/scenarios.py: malformed, too large and late readings
of 6 devices over 4 partitions, windows ``10s,1m,30s/10s,sliding:20s``) goes through a
``pulse worker`` while ``pulse indexer`` indexes the windows of ``1m`` and ``30s/10s`` and
every dead letter. The worker is SIGKILLed mid-stream (its successor replays from its
changelog: dead letters and windows again, identical) and so is the indexer. Once all is
closed the index holds each window of those two labels once, with the aggregates of the
independent reference (tests/reference.py), none of the ``10s`` windows, and each rejected
record once with the reason the reference gives, filed on the day of its record's time.
On the session's tansu only: the indexer reads topics, and what differs between brokers is
tested with the worker.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from opensearchpy import AsyncOpenSearch

from tests.helpers import kafka
from tests.helpers import search as reference
from tests.helpers.redis_cluster import sync_redis
from tests.helpers.scenarios import (
    PacedProducer,
    build_entries,
    next_offsets,
    reference_of,
    scenario_env,
    wait_until,
)
from tests.helpers.worker import WorkerProcess
from tests.integration.test_pipeline import wait_for_all_closed
from tests.reference import assert_window_fields
from tests.servers import SessionServers

pytestmark = pytest.mark.integration

INDEXED = ("1m", "30s/10s")


@pytest.fixture
def broker(_session_servers: SessionServers) -> str:
    """The session's tansu (not both brokers, see the module's docstring)."""
    return _session_servers.get("broker").url


async def _count(url: str, alias: str) -> int:
    client = AsyncOpenSearch(hosts=[url])
    try:
        if not await client.indices.exists_alias(name=alias):
            return 0
        await client.indices.refresh(index=alias)
        return int((await client.count(index=alias))["count"])
    finally:
        await client.close()


def _indexer(env: dict[str, str], tmp_path: Path, name: str) -> WorkerProcess:
    return WorkerProcess(
        env, tmp_path, name, command="indexer", port_variable="PULSE_INDEXER_PORT"
    ).start()


def test_windows_and_dead_letters_of_a_worker_are_indexed_exactly_through_sigkills(
    broker: str,
    redis_url: str,
    influx_url: str,
    search_url: str,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    p = topic_prefix
    env = scenario_env(p, broker, redis_url, influx_url, partitions=4)
    env.update(
        PULSE_SEARCH_URL=search_url,
        PULSE_SEARCH_PREFIX=p,
        PULSE_SEARCH_WINDOWS=",".join(INDEXED),
        PULSE_SEARCH_REPLICAS="0",
        PULSE_SEARCH_RETENTION_DAYS="0",  # the dataset is of 2023
        PULSE_SEARCH_BULK_DOCS="50",
    )
    topic = env["PULSE_TOPIC_READINGS"]
    entries = build_entries(p, 4, 600)
    asyncio.run(kafka.create_topics(broker, {topic: 4}))
    producer = PacedProducer(broker, topic, entries).start()
    workers = [WorkerProcess(env, tmp_path, "worker-0").start()]
    indexers = [_indexer(env, tmp_path, "indexer-0")]
    try:
        workers[0].wait_ready()
        indexers[0].wait_ready()
        producer.allow(0.45)

        def applied() -> int:
            done = sum(next_offsets(workers[-1]).values())
            return done if done >= 0.35 * producer.total else 0

        wait_until(applied, "35% applied", workers, producer, timeout=60)
        workers[0].stop(signal.SIGKILL)
        workers.append(WorkerProcess(env, tmp_path, "worker-1").start())
        workers[-1].wait_ready()

        def some_windows() -> int:
            return asyncio.run(_count(search_url, f"{p}-windows"))

        wait_until(some_windows, "windows indexed", [*workers[1:], *indexers], producer, 60, 0.2)
        indexers[0].stop(signal.SIGKILL)
        indexers.append(_indexer(env, tmp_path, "indexer-1"))
        producer.allow(1.0)
        stored = producer.finish()
        _, ends, expected = reference_of(entries, stored)
        workers[-1].wait_caught_up(ends)
        series = {(d, m, label) for d, m, label, _ in expected.windows}
        wait_for_all_closed(sync_redis(redis_url), p, len(series))

        wanted_windows = {
            key: doc for key, doc in expected.aggregate_documents().items() if key[2] in INDEXED
        }
        assert wanted_windows and len(wanted_windows) < len(expected.windows)

        def all_indexed() -> bool:
            return asyncio.run(_count(search_url, f"{p}-windows")) >= len(
                wanted_windows
            ) and asyncio.run(_count(search_url, f"{p}-dead-letters")) >= len(expected.dead_letters)

        wait_until(all_indexed, "everything indexed", [workers[-1], indexers[-1]], None, 120, 0.5)
        time.sleep(1.0)  # nothing more arrives (a surplus would show below)
    finally:
        producer.close()
        for process in [*workers[:-1], *indexers[:-1]]:
            if process.process is not None and process.process.poll() is None:
                process.stop(signal.SIGKILL)
        assert workers[-1].stop() == 0, workers[-1].log_tail()
        assert indexers[-1].stop() == 0, indexers[-1].log_tail()

    # Windows: those of the indexed labels, once each, as the reference computes them.
    found = reference.read(search_url, f"{p}-windows")
    by_window = {
        (doc["device"], doc["metric"], doc["window"], doc["start"]): (index, doc_id, doc)
        for (index, doc_id), doc in found.items()
    }
    assert len(by_window) == len(found)
    assert set(by_window) == set(wanted_windows)
    for key, want in wanted_windows.items():
        index, doc_id, stored_doc = by_window[key]
        doc = dict(stored_doc)
        start_us = round(key[3] * 1_000_000)
        assert doc_id == f"{key[0]}:{key[1]}:{key[2]}:{start_us}"
        assert index == reference.day_index(p, "windows", start_us // 1000)
        assert doc.pop("id") == doc_id and doc.pop("time") == start_us // 1000
        assert_window_fields(doc, want, key)
    # And exactly the documents the topic's records make (tests/helpers/search.py).
    aggregates = asyncio.run(kafka.read_all(broker, env["PULSE_TOPIC_AGGREGATES"]))
    assert found == reference.expected(
        reference.window(p, r.value)
        for r in aggregates
        if r.value and any(f'"window":"{label}"'.encode() in r.value for label in INDEXED)
    )

    # Dead letters: each rejected record once, with the reference's reason, filed by the
    # rejected record's own time.
    letters = reference.read(search_url, f"{p}-dead-letters")
    assert {(d["partition"], d["offset"]): d["reason"] for d in letters.values()} == (
        expected.dead_letters
    )
    originals = asyncio.run(kafka.read_all(broker, topic))
    times = {(r.partition, r.offset): r.timestamp for r in originals}
    for (index, doc_id), doc in letters.items():
        position = (doc["partition"], doc["offset"])
        assert doc_id == f"{topic}:{position[0]}:{position[1]}"
        assert doc["time"] == times[position]
        assert index == reference.day_index(p, "dead-letters", times[position])
    dlq = asyncio.run(kafka.read_all(broker, env["PULSE_TOPIC_DLQ"]))
    assert letters == reference.expected(
        reference.dead_letter(p, r.value, r.timestamp) for r in dlq
    )
