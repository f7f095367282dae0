"""Closed windows to topic ``aggregates`` and rejected records to the dead-letter topic."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from models.outputs import ClosedWindow
from pulse.sinks._base import FlushBatch, Sink
from pulse.sinks._retry import MAX_RETRY_DELAY
from pulse.sinks._text import aggregate_text, seconds_text, tags_json
from tables import _native
from tables.aggregators import Summary

log = logging.getLogger(__name__)

Send = Callable[[], Awaitable[list[asyncio.Future]]]
"""Queues some records (again, when retried); returns the futures of their acks."""

PARTITIONS_REMEMBERED = 100_000
"""Devices whose aggregates partition one generation of the sink's cache holds (see
KafkaSink): a device's partition is computed once while it keeps reporting."""


def closed_window_json(window: ClosedWindow) -> bytes:
    """The value of an ``aggregates`` record: one JSON object, keys in this order::

        {"device", "metric", "window", "start", "end",
         "count", "sum", "min", "max", "mean", "first", "last", "p50", "p95", "p99", "tags"}

    Written from the aggregates' text (the numbers every sink shares) rather than through a
    dict: device, metric and window label are validated names that JSON strings hold as
    they are (see models/reading.py and tables/windows.py).
    """
    count, total, low, high, mean, first, last, p50, p95, p99 = aggregate_text(window)
    return (
        f'{{"device":"{window.device}","metric":"{window.metric}","window":"{window.window}",'
        f'"start":{seconds_text(window.start_us)},"end":{seconds_text(window.end_us)},'
        f'"count":{count},"sum":{total},"min":{low},"max":{high},"mean":{mean},'
        f'"first":{first},"last":{last},"p50":{p50},"p95":{p95},"p99":{p99},'
        f'"tags":{tags_json(Summary.tags(window.state))}}}'
    ).encode()


def aggregate_records(closed: Sequence[ClosedWindow]) -> list[tuple[bytes, bytes]]:
    """(key, value) of the ``aggregates`` record of each closed window, in order:
    ``(window.device.encode(), closed_window_json(window))``."""
    return _native.aggregate_records(closed, closed_window_json)


class KafkaSink(Sink):
    """Produces with the processor's producer, keyed by device (Kafka's default partitioning).

    Aggregates go in per-partition batches (``send_batch``), which costs a fraction of one
    ``send`` per record; a flush returns once the broker has acknowledged every record. A
    send the producer gives up on (the broker away for longer than its request timeout) is
    sent again, with backoff capped at ``MAX_RETRY_DELAY``, until stored: only the failed
    ones, so a repeat is rare and identical.
    """

    name = "kafka"

    def __init__(self, producer: AIOKafkaProducer, aggregates_topic: str, dlq_topic: str):
        self.producer = producer
        self.aggregates_topic = aggregates_topic
        self.dlq_topic = dlq_topic
        self._partitioner = DefaultPartitioner()
        # murmur2 in pure Python costs microseconds per record: remember each device's
        # partition, in two generations of at most PARTITIONS_REMEMBERED devices each (a
        # device found in the older one moves to the newer; a full newer one becomes the
        # older, and the older is dropped), so devices that stopped reporting are forgotten
        # and the memory stays bounded; both are cleared when the partition count changes.
        self._partition_of: dict[bytes, int] = {}
        self._partition_of_before: dict[bytes, int] = {}
        self._partition_count = 0

    async def write(self, batch: FlushBatch) -> None:
        sends: list[Send] = []
        if batch.closed:
            sends += await self._aggregate_sends(batch)
        for letter in batch.dead_letters:
            sends.append(
                functools.partial(
                    self._send_one, self.dlq_topic, orjson.dumps(letter.document()), letter.key
                )
            )
        await self._until_stored(sends)

    async def _until_stored(self, sends: list[Send]) -> None:
        delay, failures = 0.1, 0
        while sends:
            failed: list[Send] = []
            error: KafkaError | None = None
            started = []
            for send in sends:
                try:
                    started.append((send, await send()))
                except KafkaError as exc:
                    failed.append(send)
                    error = exc
            for send, futures in started:
                results = await asyncio.gather(*futures, return_exceptions=True)
                errors = [r for r in results if isinstance(r, BaseException)]
                for failure in errors:
                    if not isinstance(failure, KafkaError):
                        raise failure
                if errors:
                    failed.append(send)
                    error = errors[0]
            sends = failed
            if sends:
                failures += 1
                log.warning(
                    "kafka sink: %d sends failed (try %d), retrying in %.2fs: %r",
                    len(sends),
                    failures,
                    delay,
                    error,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)

    async def _send_one(self, topic: str, value: bytes, key: bytes | None) -> list[asyncio.Future]:
        return [await self.producer.send(topic, value=value, key=key)]

    async def _aggregate_sends(self, batch: FlushBatch) -> list[Send]:
        partitions = sorted(await self.producer.partitions_for(self.aggregates_topic))
        if len(partitions) != self._partition_count:
            self._partition_of, self._partition_of_before = {}, {}
            self._partition_count = len(partitions)
        if len(self._partition_of) > PARTITIONS_REMEMBERED:
            self._partition_of_before, self._partition_of = self._partition_of, {}
        known, before = self._partition_of, self._partition_of_before
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for key, value in aggregate_records(batch.closed):
            partition = known.get(key)
            if partition is None:
                partition = before.get(key)
                if partition is None:
                    partition = self._partitioner(key, partitions, partitions)
                known[key] = partition
            by_partition.setdefault(partition, []).append((key, value))
        return [
            functools.partial(self._send_batches, partition, records)
            for partition, records in by_partition.items()
        ]

    async def _send_batches(
        self, partition: int, records: list[tuple[bytes, bytes]]
    ) -> list[asyncio.Future]:
        futures = []
        done = 0
        while done < len(records):
            kafka_batch = self.producer.create_batch()
            first = done
            while done < len(records):
                key, value = records[done]
                if kafka_batch.append(key=key, value=value, timestamp=None) is None:
                    break
                done += 1
            if done == first:
                raise ValueError("an aggregate record is larger than the producer's batch")
            kafka_batch.close()
            futures.append(
                await self.producer.send_batch(
                    kafka_batch, self.aggregates_topic, partition=partition
                )
            )
        return futures
