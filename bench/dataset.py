"""The benchmark's input: a deterministic stream of sensor readings, produced once.

``python -m bench.dataset --bootstrap 127.0.0.1:9092 --topic readings`` creates the topic and
produces the default 1,000,000 readings. The same seed and sizes always give the same records
in the same partitions, so every system (and every run) reads identical input.

Event time advances evenly over ``span_seconds`` (default 300 s: thirty 10 s windows and five
1 m windows close per series) with up to ``jitter_seconds`` of out-of-order lateness, less
than Pulse's default 5 s grace so no reading is dropped as late.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2
from aiokafka.structs import ConsumerRecord

METRICS = ("temperature", "humidity")
# Fixed so the dataset is reproducible. It lies in the past on purpose: Faust expires windows
# by wall clock, so event times from the future would never close a textbook Faust window.
BASE_EVENT_TIME = 1_795_315_200.0
# The local broker reports only explicitly set topic configs; Quix Streams reads these two.
TOPIC_CONFIGS = {
    "retention.ms": str(365 * 24 * 3600 * 1000),
    "retention.bytes": "-1",
    "cleanup.policy": "delete",
}
BATCH_BYTES = 64 * 1024


@dataclass(frozen=True)
class DatasetSpec:
    readings: int = 1_000_000
    devices: int = 10_000
    partitions: int = 8
    span_seconds: float = 300.0
    jitter_seconds: float = 2.0
    seed: int = 4

    @property
    def first_event_time(self) -> float:
        return BASE_EVENT_TIME

    @property
    def last_event_time(self) -> float:
        return BASE_EVENT_TIME + self.span_seconds


def device_id(number: int) -> str:
    return f"dev-{number:05d}"


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), as aiokafka and the Java client compute it."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def generate(spec: DatasetSpec, limit: int | None = None) -> Iterator[tuple[bytes, bytes, int]]:
    """(key, JSON value, timestamp ms) of each reading, in production order.

    ``limit`` gives a prefix of the same sequence (the textbook Faust subset).
    """
    rng = random.Random(spec.seed)
    count = spec.readings if limit is None else min(limit, spec.readings)
    step = spec.span_seconds / spec.readings
    dumps = orjson.dumps
    for index in range(count):
        device = device_id(rng.randrange(spec.devices))
        metric = METRICS[rng.randrange(len(METRICS))]
        if metric == "temperature":
            value = round(rng.gauss(21.0, 3.0), 2)
        else:
            value = round(rng.gauss(45.0, 8.0), 2)
        # Readings arrive up to jitter_seconds late: event times increase with small disorder.
        event_time = round(BASE_EVENT_TIME + index * step - rng.random() * spec.jitter_seconds, 3)
        payload = {"device": device, "metric": metric, "value": value, "ts": event_time}
        yield device.encode(), dumps(payload), int(event_time * 1000)


def consumer_records(
    spec: DatasetSpec, topic: str
) -> dict[int, list[ConsumerRecord[bytes, bytes]]]:
    """The dataset as a consumer gets it, without a broker: each partition's records in offset
    order, as aiokafka's ``ConsumerRecord`` (for measuring the worker's pure steps alone)."""
    by_partition: dict[int, list[ConsumerRecord[bytes, bytes]]] = defaultdict(list)
    for key, value, ts_ms in generate(spec):
        partition = partition_for(key, spec.partitions)
        records = by_partition[partition]
        offset, size = len(records), len(value)
        records.append(
            ConsumerRecord(topic, partition, offset, ts_ms, 0, key, value, None, 0, size, ())
        )
    return dict(by_partition)


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, partitions, 1, topic_configs=dict(TOPIC_CONFIGS))]
        )
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, spec: DatasetSpec, limit: int | None = None) -> int:
    """Create ``topic`` and fill it; returns the number of readings produced."""
    await create_topic(bootstrap, topic, spec.partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=BATCH_BYTES, acks=1
    )
    await producer.start()
    produced = 0
    try:
        # Batches are filled per partition here and handed over whole: much cheaper than one
        # send() per record, which would make producing the slowest part of the benchmark.
        open_batches: dict[int, Any] = {}
        pending = []
        for key, value, timestamp_ms in generate(spec, limit):
            partition = partition_for(key, spec.partitions)
            batch = open_batches.get(partition)
            if batch is None:
                batch = open_batches[partition] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=timestamp_ms) is None:
                batch.close()
                pending.append(await producer.send_batch(batch, topic, partition=partition))
                batch = open_batches[partition] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=timestamp_ms)
            produced += 1
        for partition, batch in open_batches.items():
            batch.close()
            pending.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return produced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True, help="HOST:PORT of the broker")
    parser.add_argument("--topic", default="readings")
    parser.add_argument("--readings", type=int, default=DatasetSpec.readings)
    parser.add_argument("--devices", type=int, default=DatasetSpec.devices)
    parser.add_argument("--partitions", type=int, default=DatasetSpec.partitions)
    parser.add_argument("--span-seconds", type=float, default=DatasetSpec.span_seconds)
    parser.add_argument("--seed", type=int, default=DatasetSpec.seed)
    parser.add_argument("--limit", type=int, default=None, help="produce only this prefix")
    args = parser.parse_args()
    spec = DatasetSpec(
        readings=args.readings, devices=args.devices, partitions=args.partitions,
        span_seconds=args.span_seconds, seed=args.seed,
    )  # fmt: skip
    started = time.perf_counter()
    produced = asyncio.run(produce(args.bootstrap, args.topic, spec, args.limit))
    elapsed = time.perf_counter() - started
    print(
        f"produced {produced:,} readings to {args.topic} in {elapsed:.1f} s "
        f"({produced / elapsed:,.0f}/s)"
    )


if __name__ == "__main__":
    main()
