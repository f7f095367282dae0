"""Producing exact records and reading whole topics back, for the tests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


@dataclass(frozen=True)
class StoredRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


def bootstrap(broker: str) -> str:
    return broker.split("://", 1)[-1]


async def create_topics(broker: str, partitions: dict[str, int]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap(broker))
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(name, count, 1, topic_configs={"retention.ms": "-1"})
                for name, count in partitions.items()
            ]
        )
    finally:
        await admin.close()


async def produce(
    broker: str,
    topic: str,
    records: list[tuple[int | None, bytes | None, bytes | None, int | None]],
) -> list[StoredRecord]:
    """Produce ``(partition, key, value, timestamp_ms)`` in order, one at a time, so that each
    record's offset is known; returns them as stored."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap(broker), acks="all")
    await producer.start()
    stored = []
    try:
        for partition, key, value, timestamp_ms in records:
            meta = await producer.send_and_wait(
                topic, value=value, key=key, partition=partition, timestamp_ms=timestamp_ms
            )
            stored.append(
                StoredRecord(topic, meta.partition, meta.offset, key, value, meta.timestamp)
            )
    finally:
        await producer.stop()
    return stored


async def read_all(broker: str, topic: str, idle_ms: int = 1500) -> list[StoredRecord]:
    """Every record of ``topic`` up to the high watermarks of fetch responses."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap(broker), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[StoredRecord] = []
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        done: set[TopicPartition] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while len(done) < len(tps) and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=idle_ms)
            for records in batches.values():
                out += [
                    StoredRecord(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp)
                    for r in records
                ]
            for tp in tps:
                highwater = consumer.highwater(tp)
                if highwater is not None and await consumer.position(tp) >= highwater:
                    done.add(tp)
        assert len(done) == len(tps), f"could not read {topic} to its end"
    finally:
        await consumer.stop()
    return sorted(out, key=lambda r: (r.partition, r.offset))
