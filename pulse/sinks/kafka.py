"""Closed windows to topic ``aggregates``, alert transitions to ``alerts`` and rejected records
to the dead-letter topic."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from models.outputs import ClosedWindow, RefusedOutput
from pulse.sinks._base import FlushBatch, Sink
from pulse.sinks._retry import Backoff
from pulse.sinks._text import aggregate_text, seconds_text, tags_json
from pulse.sinks.dead_letters import OutputDeadLetters, kafka_refusal
from tables import _native
from tables.aggregators import Summary

log = logging.getLogger(__name__)

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


Record = tuple[bytes | None, bytes]
"""(key, value) of one output record."""


@dataclass
class _Part:
    """Records for one topic partition, sent together (in batches of the producer's size)."""

    topic: str
    partition: int
    records: list[Record]


class KafkaSink(Sink):
    """Produces with the processor's producer, keyed by device (Kafka's default partitioning).

    Aggregates and dead letters go in per-partition batches (``send_batch``), which costs a
    fraction of one ``send`` per record; a flush returns once the broker has acknowledged
    every record. Each failed batch is sorted by its error (pulse/sinks/dead_letters.py,
    ``kafka_refusal``): a batch whose content the broker refuses (too large, say) is split in
    halves until each refused record is alone, and that record goes to the output dead-letter
    topic with the broker's answer; any other failure (the broker away for longer than the
    producer's request timeout, no ACL) is sent again with backoff until stored: only the
    failed batches, so a repeat is rare and identical.
    """

    name = "kafka"

    def __init__(
        self,
        producer: AIOKafkaProducer,
        aggregates_topic: str,
        dlq_topic: str,
        dead_letters: OutputDeadLetters | None = None,
        alerts_topic: str = "alerts",
    ):
        self.producer = producer
        self.aggregates_topic = aggregates_topic
        self.dlq_topic = dlq_topic
        self.alerts_topic = alerts_topic
        self.dead_letters = dead_letters
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
        parts: list[_Part] = []
        if batch.closed:
            parts += await self._until(lambda: self._aggregate_parts(batch))
        if batch.alerts:
            alerts: list[Record] = [(t.device.encode(), t.json()) for t in batch.alerts]
            parts += await self._until(lambda: self._parts(self.alerts_topic, alerts))
        if batch.dead_letters:
            letters: list[Record] = [
                (letter.key, orjson.dumps(letter.document())) for letter in batch.dead_letters
            ]
            parts += await self._until(lambda: self._parts(self.dlq_topic, letters))
        refused = await self._until_stored(parts)
        if refused:
            assert self.dead_letters is not None, "a refused record, and no dead-letter topic"
            await self.dead_letters.store(refused, self.health)

    async def _until(self, attempt: Callable[[], Awaitable[list[_Part]]]) -> list[_Part]:
        """``attempt`` (which asks the producer for a topic's partitions), until Kafka
        answers."""
        backoff = Backoff()
        while True:
            try:
                return await attempt()
            except KafkaError as exc:
                self._report(exc)
                await asyncio.sleep(backoff.next_wait())

    def _report(self, error: BaseException) -> None:
        if kafka_refusal(error) == "client":
            self.health.refused(repr(error))
        else:
            self.health.waiting(repr(error))

    async def _until_stored(self, parts: list[_Part]) -> list[RefusedOutput]:
        """Send ``parts`` until every record is stored or refused; returns the refused."""
        backoff = Backoff()
        refused: list[RefusedOutput] = []
        while parts:
            again: list[_Part] = []
            halves: list[_Part] = []
            error: BaseException | None = None
            started: list[tuple[_Part, asyncio.Future]] = []
            for part in parts:
                started += await self._send(part)
            for part, future in started:
                try:
                    await future
                except KafkaError as exc:
                    if kafka_refusal(exc) != "content":
                        again.append(part)
                        error = exc
                    elif len(part.records) == 1:
                        key, value = part.records[0]
                        refused.append(self._refused(part.topic, repr(exc), key, value))
                    else:  # the halves go out at once: only what the broker refuses waits
                        middle = len(part.records) // 2
                        for records in (part.records[:middle], part.records[middle:]):
                            halves.append(_Part(part.topic, part.partition, records))
            if again:
                assert error is not None
                self._report(error)
                log.debug("kafka sink: %d batches failed, retrying: %r", len(again), error)
                await asyncio.sleep(backoff.next_wait())
            else:
                self.health.ok()
            parts = halves + again
        return refused

    def _refused(self, topic: str, answer: str, key: bytes | None, value: bytes) -> RefusedOutput:
        if self.dead_letters is None:
            raise RuntimeError("KafkaSink: a refused record, and no output dead-letter topic")
        return self.dead_letters.refused(self.name, f"topic {topic}", answer, key, value)

    async def _parts(self, topic: str, records: Sequence[Record]) -> list[_Part]:
        """``records`` grouped by the partition Kafka's default partitioner gives each key."""
        partitions = sorted(await self.producer.partitions_for(topic))
        by_partition: dict[int, list[Record]] = {}
        for key, value in records:
            partition = self._partitioner(key, partitions, partitions)
            by_partition.setdefault(partition, []).append((key, value))
        return [_Part(topic, p, found) for p, found in by_partition.items()]

    async def _aggregate_parts(self, batch: FlushBatch) -> list[_Part]:
        partitions = sorted(await self.producer.partitions_for(self.aggregates_topic))
        if len(partitions) != self._partition_count:
            self._partition_of, self._partition_of_before = {}, {}
            self._partition_count = len(partitions)
        if len(self._partition_of) > PARTITIONS_REMEMBERED:
            self._partition_of_before, self._partition_of = self._partition_of, {}
        known, before = self._partition_of, self._partition_of_before
        by_partition: dict[int, list[Record]] = {}
        for key, value in aggregate_records(batch.closed):
            partition = known.get(key)
            if partition is None:
                partition = before.get(key)
                if partition is None:
                    partition = self._partitioner(key, partitions, partitions)
                known[key] = partition
            by_partition.setdefault(partition, []).append((key, value))
        return [_Part(self.aggregates_topic, p, found) for p, found in by_partition.items()]

    async def _send(self, part: _Part) -> list[tuple[_Part, asyncio.Future]]:
        """Queue ``part``'s records in batches; each batch's records (as a part of their own)
        with the future of its acknowledgement. A record too large for a batch of its own
        goes alone through ``send`` (which refuses it if it exceeds the largest request). A
        batch the producer does not take (Kafka away) gets a failed future: only it is sent
        again."""
        sent: list[tuple[_Part, asyncio.Future]] = []
        records = part.records
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
                key, value = records[done]
                done += 1
                alone = _Part(part.topic, part.partition, [(key, value)])
                try:
                    future = await self.producer.send(
                        part.topic, value=value, key=key, partition=part.partition
                    )
                except KafkaError as exc:
                    future = _failed(exc)
                sent.append((alone, future))
                continue
            kafka_batch.close()
            try:
                future = await self.producer.send_batch(
                    kafka_batch, part.topic, partition=part.partition
                )
            except KafkaError as exc:
                future = _failed(exc)
            sent.append((_Part(part.topic, part.partition, records[first:done]), future))
        return sent


def _failed(error: BaseException) -> asyncio.Future:
    future: asyncio.Future = asyncio.get_running_loop().create_future()
    future.set_exception(error)
    return future
