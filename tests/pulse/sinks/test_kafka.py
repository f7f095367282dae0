"""closed_window_json: the value of an ``aggregates`` record; KafkaSink sends again what
the producer gave up on, until stored, and dead-letters what the broker refuses."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaTimeoutError

from models.outputs import ClosedWindow, DeadLetter
from pulse.sinks import kafka as kafka_sink
from pulse.sinks._base import FlushBatch
from pulse.sinks.dead_letters import OutputDeadLetters
from pulse.sinks.kafka import KafkaSink, closed_window_json
from tables.aggregators import Summary
from tests.helpers import kafka

S = 1_000_000


def closed_window_document(window: ClosedWindow) -> dict:
    return orjson.loads(closed_window_json(window))


def window(tags_last: dict[str, str] | None = None) -> ClosedWindow:
    state = Summary.initialize(12 * S, 2.0, {"site": "old"})
    Summary.add(state, 11 * S, 1.0, None)
    Summary.add(state, 13 * S, 4.5, tags_last)
    return ClosedWindow("dev-1", "temperature", "10s", 10 * S, 20 * S, state)


def test_closed_window_document() -> None:
    doc = closed_window_document(window({"site": "plant-a"}))
    assert doc == {
        "device": "dev-1",
        "metric": "temperature",
        "window": "10s",
        "start": 10,
        "end": 20,
        "count": 3,
        "sum": 7.5,
        "min": 1.0,
        "max": 4.5,
        "mean": 2.5,
        "first": 1.0,
        "last": 4.5,
        "p50": doc["p50"],
        "p95": doc["p95"],
        "p99": doc["p99"],
        "tags": {"site": "plant-a"},
    }
    assert list(doc) == [
        "device",
        "metric",
        "window",
        "start",
        "end",
        "count",
        "sum",
        "min",
        "max",
        "mean",
        "first",
        "last",
        "p50",
        "p95",
        "p99",
        "tags",
    ]
    assert abs(doc["p50"] - 2.0) <= 0.02
    assert abs(doc["p95"] - 2.0) <= 0.02  # rank floor(0.95 * 2) = 1 of [1, 2, 4.5]
    assert abs(doc["p99"] - 2.0) <= 0.02
    assert type(doc["count"]) is int
    # numbers survive JSON exactly
    assert orjson.loads(orjson.dumps(doc)) == doc


def test_closed_window_tags_are_those_of_last_even_when_none() -> None:
    assert closed_window_document(window(None))["tags"] == {}


def test_fractional_window_bounds() -> None:
    state = Summary.initialize(1_500, 1.0, None)
    doc = closed_window_document(ClosedWindow("d", "m", "500ms", 1_000, 501_000, state))
    assert (doc["start"], doc["end"]) == (0.001, 0.501)


class Builder:
    """A producer batch (room for every record here)."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []

    def append(self, key: bytes, value: bytes, timestamp: None) -> object | None:
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        pass


class FlakyProducer:
    """Stores what it is sent; the first attempt of each send in ``failing`` fails, either
    when queued or in its ack (the broker away for longer than the request timeout)."""

    def __init__(self, failing: dict[tuple[str, object], str]) -> None:
        self.failing = failing
        self.stored: list[tuple[str, bytes, bytes]] = []
        self.attempts: dict[tuple[str, object], int] = {}

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    def create_batch(self) -> Builder:
        return Builder()

    async def send_batch(self, batch: Builder, topic: str, *, partition: int) -> asyncio.Future:
        return self._attempt(topic, partition, batch.records)

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future:
        return self._attempt(topic, key, [(key, value)])

    def _attempt(
        self, topic: str, where: object, records: list[tuple[bytes, bytes]]
    ) -> asyncio.Future:
        self.attempts[topic, where] = self.attempts.get((topic, where), 0) + 1
        ack: asyncio.Future = asyncio.get_running_loop().create_future()
        how = self.failing.pop((topic, where), None)
        if how == "queue":
            raise KafkaTimeoutError()
        if how == "ack":
            ack.set_exception(KafkaTimeoutError())
            return ack
        self.stored += [(topic, key, value) for key, value in records]
        ack.set_result(None)
        return ack


def test_failed_sends_are_sent_again_until_stored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncio, "sleep", no_sleep)
    windows = [window()._replace(device=f"dev-{i}") for i in range(12)]
    # Keys k0, k2, k3 fall on partitions 2, 0 and 1 of three.
    letters = [DeadLetter("late", "", "readings", 0, i, b"k%d" % i, b"{}", 100) for i in (0, 2, 3)]
    sink = KafkaSink(cast(Any, None), "aggregates", "dlq")
    partition_of = {
        w.device: sink._partitioner(w.device.encode(), [0, 1, 2], [0, 1, 2]) for w in windows
    }
    assert set(partition_of.values()) == {0, 1, 2}
    acked_late, queued_late = partition_of["dev-0"], (partition_of["dev-0"] + 1) % 3
    letter_partitions = {
        letter.key: sink._partitioner(letter.key, [0, 1, 2], [0, 1, 2]) for letter in letters
    }
    assert sorted(letter_partitions.values()) == [0, 1, 2]  # one dead letter per partition
    producer = FlakyProducer(
        {
            ("aggregates", acked_late): "ack",
            ("aggregates", queued_late): "queue",
            ("dlq", letter_partitions[b"k3"]): "ack",
            ("dlq", letter_partitions[b"k2"]): "queue",
        }
    )
    sink.producer = cast(Any, producer)
    asyncio.run(sink.write(FlushBatch(closed=windows, dead_letters=letters)))
    # Each record stored once; only the failed sends were made again.
    assert sorted(v for t, _, v in producer.stored if t == "aggregates") == sorted(
        closed_window_json(w) for w in windows
    )
    assert sorted(k for t, k, _ in producer.stored if t == "dlq") == [b"k0", b"k2", b"k3"]
    assert producer.attempts == {
        ("aggregates", acked_late): 2,
        ("aggregates", queued_late): 2,
        ("aggregates", 3 - acked_late - queued_late): 1,
        ("dlq", letter_partitions[b"k0"]): 1,
        ("dlq", letter_partitions[b"k3"]): 2,
        ("dlq", letter_partitions[b"k2"]): 2,
    }


def test_a_bug_is_not_retried() -> None:
    sink = KafkaSink(cast(Any, None), "aggregates", "dlq")

    class Broken(FlakyProducer):
        async def send_batch(self, batch: Builder, topic: str, *, partition: int) -> asyncio.Future:
            raise ValueError("a bug")

    sink.producer = cast(Any, Broken({}))
    letter = DeadLetter("late", "", "readings", 0, 1, b"k", b"{}", 100)
    with pytest.raises(ValueError, match="a bug"):
        asyncio.run(sink.write(FlushBatch(dead_letters=[letter])))


async def no_sleep(delay: float) -> None:
    pass


def test_the_partitions_of_devices_that_stopped_reporting_are_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A flood of new device names must not grow the sink's cache of partitions without end:
    # it keeps two generations of at most PARTITIONS_REMEMBERED devices, and a device that
    # keeps reporting stays in the newer one.
    monkeypatch.setattr(kafka_sink, "PARTITIONS_REMEMBERED", 10)
    sink = KafkaSink(cast(Any, None), "aggregates", "dlq")
    sink.producer = cast(Any, FlakyProducer({}))
    for flush in range(30):
        devices = ["dev-steady", *(f"dev-{flush}-{i}" for i in range(4))]
        batch = FlushBatch(closed=[window()._replace(device=d) for d in devices])
        asyncio.run(sink.write(batch))
        remembered = {**sink._partition_of_before, **sink._partition_of}
        assert len(remembered) <= 2 * (10 + len(devices))
        assert b"dev-0-0" not in remembered or flush < 6
        assert sink._partition_of[b"dev-steady"] == sink._partitioner(
            b"dev-steady", [0, 1, 2], [0, 1, 2]
        )
    for key, partition in {**sink._partition_of_before, **sink._partition_of}.items():
        assert partition == sink._partitioner(key, [0, 1, 2], [0, 1, 2])


async def _create_topic(broker: str, topic: str, configs: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap(broker))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1, topic_configs=configs)])
    finally:
        await admin.close()


def test_records_the_broker_refuses_are_dead_lettered_and_the_rest_stored(
    kafka_broker: str, topic_prefix: str
) -> None:
    # Apache Kafka refuses record batches above the topic's max.message.bytes. The sink
    # splits the refused batches until they pass, and a record too large alone goes to the
    # output dead-letter topic with the broker's answer; every other record is stored once.
    aggregates, dlq, output_dlq = (
        f"{topic_prefix}-aggregates",
        f"{topic_prefix}-dlq",
        f"{topic_prefix}-output-dlq",
    )
    windows = [window()._replace(device=f"{topic_prefix}-{i}") for i in range(60)]
    huge = {7, 31}
    for i in huge:  # tags of about 3 KB: a record no batch can hold
        windows[i] = window({"site": "x" * 3000})._replace(device=f"{topic_prefix}-{i}")
    letter = DeadLetter("late", "", "readings", 0, 5, b"k", b"{}", 100)

    async def run() -> KafkaSink:
        await _create_topic(kafka_broker, aggregates, {"max.message.bytes": "2000"})
        await _create_topic(kafka_broker, dlq, {})
        await _create_topic(kafka_broker, output_dlq, {})
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap(kafka_broker), acks="all")
        await producer.start()
        try:
            dead_letters = OutputDeadLetters(producer, output_dlq, 65536)
            sink = KafkaSink(producer, aggregates, dlq, dead_letters)
            await sink.write(FlushBatch(closed=windows, dead_letters=[letter]))
            return sink
        finally:
            await producer.stop()

    sink = asyncio.run(run())
    stored = asyncio.run(kafka.read_all(kafka_broker, aggregates))
    assert sorted(r.value or b"" for r in stored) == sorted(
        closed_window_json(w) for i, w in enumerate(windows) if i not in huge
    )
    assert [r.value for r in asyncio.run(kafka.read_all(kafka_broker, dlq))] == [
        orjson.dumps(letter.document())
    ]
    refused = asyncio.run(kafka.read_all(kafka_broker, output_dlq))
    letters = sorted((orjson.loads(r.value or b"") for r in refused), key=lambda d: d["key"])
    assert [r.key for r in sorted(refused, key=lambda r: r.key or b"")] == sorted(
        f"{topic_prefix}-{i}".encode() for i in huge
    )
    assert letters == [
        {
            "reason": "refused",
            "sink": "kafka",
            "target": f"topic {aggregates}",
            "answer": "MessageSizeTooLargeError()",
            "key": f"{topic_prefix}-{i}",
            "output": closed_window_json(windows[i]).decode(),
        }
        for i in sorted(huge, key=lambda i: f"{topic_prefix}-{i}")
    ]
    assert sink.health.dead_letters == 2
    assert sink.health.state == "ok"
