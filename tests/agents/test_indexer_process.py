"""``pulse indexer`` as a process: SIGKILLed mid-stream and started again, its index exact.

Real servers: the session's tansu broker and OpenSearch. 20,000 dead letters and 2,000
alert transitions (the worker's own types) in four-partition topics; the indexer runs with
small bulk requests, is killed (SIGKILL) once some but not all documents are in, and a new
one finishes from the groups' last commits: every document equals what
tests/helpers/search.py computes from the records, once each. Its ``/health`` and
``/metrics`` say what it did.
"""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from opensearchpy import AsyncOpenSearch

from models.alerts import AlertTransition
from models.outputs import DeadLetter
from tests.helpers import kafka
from tests.helpers import search as reference
from tests.helpers.worker import WorkerProcess

pytestmark = pytest.mark.integration

LETTERS = 20_000
TRANSITIONS = 2_000
NOW_MS = int(time.time() * 1000)


def _letters(prefix: str) -> list[DeadLetter]:
    out = []
    for i in range(LETTERS):
        device = f"dev-{i % 500:04d}"
        value = b'{"device":"%s","metric":"t","value":"x%d","tags":{"site":"s%d"}}' % (
            device.encode(),
            i,
            i % 7,
        )
        # Over two days: the letters of the first hours of today and of yesterday's last.
        t = NOW_MS - 86_400_000 + i * 3_000
        out.append(
            DeadLetter(
                "invalid_reading", f"value {i} is not a number", f"{prefix}-readings",
                i % 4, i // 4, device.encode(), value, 65_536, t,
            )
        )  # fmt: skip
    return out


def _transitions(prefix: str) -> list[AlertTransition]:
    out = []
    for i in range(TRANSITIONS):
        start = (NOW_MS // 10_000 * 10_000 - 10_000_000 + i * 5_000) * 1000
        out.append(
            AlertTransition(
                rule=f"r{i % 3}", device=f"{prefix}-d{i % 40}", site=f"s{i % 7}",
                labels={"line": str(i % 2)}, metric="t", window="10s", start_us=start,
                end_us=start + 10_000_000, aggregate="mean", value=80.0 + i / 8,
                threshold=80.0, state="firing" if i % 2 == 0 else "resolved",
                severity="warning", silenced=False,
            )
        )  # fmt: skip
    return out


async def _produce(broker: str, records: dict[str, list[tuple[bytes, bytes]]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap(broker), linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value=value, key=key)
            for topic, pairs in records.items()
            for key, value in pairs
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _count(url: str, alias: str) -> int:
    client = AsyncOpenSearch(hosts=[url])
    try:
        if not await client.indices.exists_alias(name=alias):
            return 0
        await client.indices.refresh(index=alias)
        answer = await client.count(index=alias)
        return int(answer["count"])
    finally:
        await client.close()


def _get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        body: bytes = response.read()
        return body


def test_an_indexer_killed_mid_stream_leaves_the_index_exact(
    broker: str, search_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    p = topic_prefix
    asyncio.run(kafka.create_topics(broker, {f"{p}-dlq": 4, f"{p}-alerts": 4}))
    letters = _letters(p)
    transitions = _transitions(p)
    asyncio.run(
        _produce(
            broker,
            {
                f"{p}-dlq": [(x.key or b"", orjson.dumps(x.document())) for x in letters],
                f"{p}-alerts": [(t.device.encode(), t.json()) for t in transitions],
            },
        )
    )
    env = {
        "PULSE_BROKER": broker,
        "PULSE_SEARCH_URL": search_url,
        "PULSE_SEARCH_PREFIX": p,
        "PULSE_SEARCH_REPLICAS": "0",
        "PULSE_SEARCH_BULK_DOCS": "200",
        "PULSE_APP_ID": f"{p}app",
        "PULSE_TOPIC_READINGS": f"{p}-readings",
        "PULSE_TOPIC_AGGREGATES": f"{p}-aggregates",
        "PULSE_TOPIC_ALERTS": f"{p}-alerts",
        "PULSE_TOPIC_DLQ": f"{p}-dlq",
        "PULSE_TOPIC_OUTPUT_DLQ": f"{p}-output-dlq",
        "PULSE_PARTITIONS": "4",
        "PULSE_SESSION_TIMEOUT": "2",
    }
    alias = f"{p}-dead-letters"
    first = WorkerProcess(
        env, tmp_path, "indexer-1", command="indexer", port_variable="PULSE_INDEXER_PORT"
    )
    first.start()
    try:
        first.wait_ready(90)
        deadline = time.monotonic() + 120
        indexed = 0
        while indexed < LETTERS // 10:
            assert time.monotonic() < deadline, f"{indexed} indexed:\n{first.log_tail()}"
            time.sleep(0.2)
            indexed = asyncio.run(_count(search_url, alias))
    finally:
        first.stop(signal.SIGKILL)
    at_kill = asyncio.run(_count(search_url, alias))
    assert 0 < at_kill < LETTERS, "the kill was not mid-stream"

    second = WorkerProcess(
        env, tmp_path, "indexer-2", command="indexer", port_variable="PULSE_INDEXER_PORT"
    )
    second.start()
    try:
        health = second.wait_ready(90)
        assert health["kinds"] == ["dead-letters", "alerts"]
        deadline = time.monotonic() + 180
        while (
            asyncio.run(_count(search_url, alias)) < LETTERS
            or asyncio.run(_count(search_url, f"{p}-alerts")) < TRANSITIONS
        ):
            assert time.monotonic() < deadline, second.log_tail()
            time.sleep(0.5)
        health = orjson.loads(_get(second.port, "/health"))
        assert health["ready"] is True
        assert {name: s["state"] for name, s in health["sinks"].items()} == {
            "search-dead-letters": "ok",
            "search-alerts": "ok",
        }
        assert "redis" not in health["dependencies"]
        assert health["opensearch"] == {"state": "ok"}
        metrics = _get(second.port, "/metrics").decode()
        assert 'pulse_indexer_documents_total{kind="dead-letters",outcome="indexed"}' in metrics
        assert 'pulse_sink_state{sink="search-alerts",state="ok"} 1.0' in metrics
        assert second.stop() == 0
    finally:
        if second.process is not None and second.process.poll() is None:
            second.stop(signal.SIGKILL)

    stored = asyncio.run(kafka.read_all(broker, f"{p}-dlq"))
    want = reference.expected(reference.dead_letter(p, r.value, r.timestamp) for r in stored)
    assert len(want) == LETTERS
    assert reference.read(search_url, alias) == want
    stored_alerts = asyncio.run(kafka.read_all(broker, f"{p}-alerts"))
    want_alerts = reference.expected(reference.alert(p, r.value) for r in stored_alerts)
    assert len(want_alerts) == TRANSITIONS
    assert reference.read(search_url, f"{p}-alerts") == want_alerts
