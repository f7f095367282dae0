"""An output topic read back into one more target, at that target's own pace.

The flush writes each closed window to ``aggregates`` and each alert transition to
``alerts`` durably (acks from every in-sync replica) and waits for Kafka and Redis's live
keys only. A target that must not slow the flush is written by a :class:`TopicWriter`
instead: the InfluxDB writer and the history writer read ``aggregates``
(:class:`AggregatesWriter`, agents/influx_writer.py, agents/history_writer.py), the alerts
writers read ``alerts`` (agents/alerts_writer.py). Each reads its topic with a consumer group
of its own, ``{PULSE_APP_ID}-{suffix}``, reads each record into its sink's item
(:meth:`RecordSink.read_record`; a record the sink cannot read goes to the output
dead-letter topic as ``unreadable``), writes a fetch's items through the sink
(:meth:`RecordSink.write_records`, which waits out a target that is away) and commits the
group's offsets only then. So a target away for hours delays only itself, its records wait
in Kafka (not in memory), and a crash anywhere replays from the last commit: every sink
written so absorbs a repeat (identical points; history keyed by window start; alerts fenced
per alert by its times).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import TopicPartition
from mode import Service

from models.outputs import RefusedOutput
from pulse.kafka_clients import client_options
from pulse.metrics import WorkerMetrics
from pulse.settings import Settings
from pulse.sinks._base import RecordSink, SinkHealth
from pulse.sinks.dead_letters import OutputDeadLetters
from pulse.topics import ensure_topics

log = logging.getLogger(__name__)

RECORDS_PER_WRITE = 20_000
"""Records fetched and written at a time: what a writer holds in memory, at most, besides
the consumer's prefetched fetches; four requests of InfluxDB's recommended 5,000 lines."""
MAX_POLL_INTERVAL_MS = 7 * 24 * 3600 * 1000
"""The consumer's max.poll.interval: a writer waits out its target for as long as it is away
without leaving its group (a hung process still misses its heartbeats, which share the
event loop, and loses its partitions after the session timeout)."""


class TopicWriter(Service, abc.ABC):
    """Reads the topic :meth:`source_topic` names with group
    ``{PULSE_APP_ID}-{group_suffix}`` into the sink that :meth:`make_sink` makes; its health
    joins ``sink_health`` (``/health``, ``/metrics``)."""

    group_suffix: str

    def __init__(
        self,
        settings: Settings,
        sink_health: list[SinkHealth] | None = None,
        metrics: WorkerMetrics | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.sink_health = [] if sink_health is None else sink_health
        self.metrics = WorkerMetrics() if metrics is None else metrics
        """Where this writer's write latency shows (``/metrics``)."""
        self.positions: dict[int, int] = {}
        """Per partition fetched from, the offset of the first record not written yet."""
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.sink: RecordSink[Any] | None = None
        self._running: asyncio.Future[None] | None = None
        self.written = 0
        """Records written (or dead-lettered) and committed so far."""

    @abc.abstractmethod
    def source_topic(self) -> str:
        """The topic this writer reads (one of the settings' ``topic_*``)."""

    @abc.abstractmethod
    def make_sink(self, dead_letters: OutputDeadLetters) -> RecordSink[Any]:
        """The sink this writer writes (not started yet)."""

    def read(self, sink: RecordSink[Any], record: Any) -> Any:
        """The sink's item of one consumer record: :meth:`RecordSink.read_record` of its
        value (a writer that needs more of the record, its timestamp, overrides this)."""
        return sink.read_record(record.value)

    @property
    def group_id(self) -> str:
        return f"{self.settings.app_id}-{self.group_suffix}"

    async def on_start(self) -> None:
        s = self.settings
        await ensure_topics(s)
        self.producer = AIOKafkaProducer(**client_options(s), acks="all", linger_ms=5)
        await self.producer.start()
        dead_letters = OutputDeadLetters(self.producer, s.topic_output_dlq, s.max_message_bytes)
        self.sink = self.make_sink(dead_letters)
        await self.sink.start()
        self.sink_health.append(self.sink.health)
        session_ms = int(s.session_timeout * 1000)
        self.consumer = AIOKafkaConsumer(
            **client_options(s),
            group_id=self.group_id,
            enable_auto_commit=False,
            # A new group starts at the topic's beginning: every record the topic still
            # holds reaches the target (at worst again, which it absorbs).
            auto_offset_reset="earliest",
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(session_ms // 6, 100),
            rebalance_timeout_ms=max(session_ms, 10_000),
            max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
            max_partition_fetch_bytes=4 << 20,
            fetch_max_bytes=16 << 20,
        )
        await self.consumer.start()
        # Subscribed after the start, which then returns at once: with the topic given to
        # the constructor, aiokafka's start waits for the group's first assignment (on tansu
        # a second or two per group, for each writer in turn as the worker starts); the join
        # now goes on beside the other services' starts, and the first fetch waits for it.
        self.consumer.subscribe([self.source_topic()])
        self._running = self.add_future(self._run())

    async def on_stop(self) -> None:
        # A write may be waiting out the target: stop it first (nothing is committed for it,
        # so whoever writes next starts with those records).
        if self._running is not None:
            self._running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._running
        if self.consumer is not None:
            await self.consumer.stop()
        if self.sink is not None:
            await self.sink.stop()
        if self.producer is not None:
            await self.producer.stop()

    async def _run(self) -> None:
        consumer, sink = self.consumer, self.sink
        assert consumer is not None and sink is not None
        while not self.should_stop:
            batches = await consumer.getmany(timeout_ms=500, max_records=RECORDS_PER_WRITE)
            if not batches:
                await self._note_positions(consumer)
                continue
            items: list[Any] = []
            keys: list[bytes | None] = []
            unreadable: list[RefusedOutput] = []
            for tp, records in batches.items():
                for record in records:
                    try:
                        items.append(self.read(sink, record))
                    except ValueError as exc:
                        unreadable.append(
                            RefusedOutput(
                                sink.name,
                                f"topic {tp.topic} partition {tp.partition} offset {record.offset}",
                                "unreadable",
                                str(exc),
                                record.key,
                                record.value or b"",
                                self.settings.max_message_bytes,
                            )
                        )
                        continue
                    keys.append(record.key)
            for tp, records in batches.items():
                self.positions[tp.partition] = records[0].offset  # the first not written
            began = time.monotonic()
            if items:
                await sink.write_records(items, keys)
            if unreadable:
                assert sink.dead_letters is not None
                await sink.dead_letters.store(unreadable, sink.health)
            self.metrics.sink_write_seconds.labels(sink.name).observe(time.monotonic() - began)
            offsets = {tp: records[-1].offset + 1 for tp, records in batches.items()}
            await self._commit(consumer, offsets)
            self.written += sum(len(records) for records in batches.values())
            for tp, offset in offsets.items():
                self.positions[tp.partition] = offset

    async def _note_positions(self, consumer: AIOKafkaConsumer) -> None:
        """After a fetch that found nothing: the position of each partition held that no
        write has placed yet (one whose records were all written before this writer took it),
        so that :meth:`lag` shows it too."""
        for tp in consumer.assignment():
            if tp.partition not in self.positions:
                with contextlib.suppress(IllegalStateError):  # revoked meanwhile
                    self.positions[tp.partition] = await consumer.position(tp)

    def lag(self) -> dict[int, int]:
        """Per partition of its topic this writer holds and knows the position of (after a
        write, or a fetch that found nothing), records not yet written: the consumer's high
        watermark as of its last fetch minus the offset of the first record not written (for
        ``/metrics``). While a write waits out its target the writer fetches nothing, so the
        lag shown then stays where it was."""
        consumer = self.consumer
        lags: dict[int, int] = {}
        if consumer is None:
            return lags
        for tp in consumer.assignment():
            position = self.positions.get(tp.partition)
            try:
                highwater = consumer.highwater(tp)
            except (AssertionError, IllegalStateError):
                continue
            if position is not None and highwater is not None:
                lags[tp.partition] = max(highwater - position, 0)
        return lags

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # The partitions moved meanwhile: their new owner starts at the last commit and
            # writes these records again, which the sink absorbs. Nothing is lost.
            log.info(
                "%s writer: offset commit skipped (%s); a repeat is absorbed",
                self.group_suffix,
                exc,
            )


class AggregatesWriter(TopicWriter):
    """A :class:`TopicWriter` of the ``aggregates`` topic (closed windows)."""

    def source_topic(self) -> str:
        return self.settings.topic_aggregates
