"""The InfluxDB writer: topic ``aggregates`` read back and written to InfluxDB, at its own pace.

InfluxDB is not on the flush path: a flush waits for Kafka and Redis only, and the closed
windows it wrote to ``aggregates`` (durably, acks from every in-sync replica) are this
writer's input. It reads them with its own consumer group, ``{PULSE_APP_ID}-influx``, turns
each record into the line the flush used to write (pulse/sinks/influx.py, ``record_line``),
writes a fetch's lines through InfluxSink and commits the group's offsets only once InfluxDB
has acknowledged them (or the output dead-letter topic holds the lines it refused). So an
InfluxDB away for hours delays only InfluxDB: the readings go on into Redis and the topic,
the windows wait in Kafka (not in memory), and a crash anywhere replays from the last
commit, writing identical points again (same measurement, tags and time: overwritten).

It runs in every worker (a child service of the app, beside the readings processor) unless
``PULSE_INFLUX_WRITER=off``, and alone with ``pulse influx-writer``; the group shares the
topic's partitions among all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import TopicPartition
from mode import Service

from models.outputs import RefusedOutput
from pulse.app import pulse_agent, sink_health, worker_metrics
from pulse.kafka_clients import client_options
from pulse.metrics import WorkerMetrics
from pulse.settings import Settings
from pulse.sinks._base import SinkHealth
from pulse.sinks.dead_letters import OutputDeadLetters
from pulse.sinks.influx import InfluxSink, record_line
from pulse.topics import ensure_topics

log = logging.getLogger(__name__)

RECORDS_PER_WRITE = 20_000
"""Records fetched and written at a time: what the writer holds in memory, at most, besides
the consumer's prefetched fetches; four requests of InfluxDB's recommended 5,000 lines."""
MAX_POLL_INTERVAL_MS = 7 * 24 * 3600 * 1000
"""The consumer's max.poll.interval: the writer waits out InfluxDB for as long as it is away
without leaving its group (a hung process still misses its heartbeats, which share the
event loop, and loses its partitions after the session timeout)."""


class InfluxWriter(Service):
    """Reads ``aggregates`` with group ``{PULSE_APP_ID}-influx`` and writes it to InfluxDB."""

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
        """Where this writer's progress and write latency show (``/metrics``)."""
        self.metrics.influx = self
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.sink: InfluxSink | None = None
        self._running: asyncio.Future[None] | None = None
        self.written = 0
        """Records written (or dead-lettered) and committed so far."""
        self.positions: dict[int, int] = {}
        """Per partition fetched from, the offset of the first record not written yet."""

    @property
    def group_id(self) -> str:
        return f"{self.settings.app_id}-influx"

    async def on_start(self) -> None:
        s = self.settings
        await ensure_topics(s)
        self.producer = AIOKafkaProducer(**client_options(s), acks="all", linger_ms=5)
        await self.producer.start()
        dead_letters = OutputDeadLetters(self.producer, s.topic_output_dlq, s.max_message_bytes)
        self.sink = InfluxSink(
            s.influx_url, s.influx_token, s.influx_org, s.influx_bucket, dead_letters
        )
        await self.sink.start()
        self.sink_health.append(self.sink.health)
        session_ms = int(s.session_timeout * 1000)
        self.consumer = AIOKafkaConsumer(
            s.topic_aggregates,
            **client_options(s),
            group_id=self.group_id,
            enable_auto_commit=False,
            # A new group starts at the topic's beginning: every window the topic still
            # holds reaches InfluxDB (at worst again, identical).
            auto_offset_reset="earliest",
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(session_ms // 6, 100),
            rebalance_timeout_ms=max(session_ms, 10_000),
            max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
            max_partition_fetch_bytes=4 << 20,
            fetch_max_bytes=16 << 20,
        )
        await self.consumer.start()
        self._running = self.add_future(self._run())

    async def on_stop(self) -> None:
        # A write may be waiting out InfluxDB: stop it first (nothing is committed for it,
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
                continue
            lines: list[str] = []
            keys: list[bytes | None] = []
            unreadable: list[RefusedOutput] = []
            for tp, records in batches.items():
                for record in records:
                    try:
                        lines.append(record_line(record.value))
                    except ValueError as exc:
                        assert sink.dead_letters is not None
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
            await sink.write_lines(lines, keys)
            if unreadable:
                assert sink.dead_letters is not None
                await sink.dead_letters.store(unreadable, sink.health)
            self.metrics.sink_write_seconds.labels(sink.name).observe(time.monotonic() - began)
            offsets = {tp: records[-1].offset + 1 for tp, records in batches.items()}
            await self._commit(consumer, offsets)
            self.written += sum(len(records) for records in batches.values())
            for tp, offset in offsets.items():
                self.positions[tp.partition] = offset

    def lag(self) -> dict[int, int]:
        """Per partition of the aggregates topic this writer holds and has fetched from,
        records not yet written: the consumer's high watermark as of its last fetch minus the
        offset of the first record not written (for ``/metrics``). While a write waits out
        InfluxDB the writer fetches nothing, so the lag shown then stays where it was."""
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
            # writes these lines again, identical points. Nothing is lost.
            log.info("influx writer: offset commit skipped (%s); a repeat is identical", exc)


@pulse_agent
def register(app: faust.App, settings: Settings) -> None:
    """Add the InfluxDB writer to ``app`` (unless ``PULSE_INFLUX_WRITER=off``)."""
    if settings.influx_writer == "off":
        return
    app.add_dependency(InfluxWriter(settings, sink_health(app), worker_metrics(app)))
