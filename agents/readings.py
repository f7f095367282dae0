"""The readings processor: topic ``readings`` in whole fetches, applied to exact windows.

It runs inside the Faust worker as a service with its own aiokafka consumer, not as a Faust
agent: Faust's per-event stream tops out near 10,000 events/s here, while this loop takes
whole fetches (``getmany``) and applies them per batch. Records are applied under the same
lock as a flush is prepared, so each flush sees every partition at one offset; the loop
flushes every ``PULSE_FLUSH_INTERVAL``, or every ``PULSE_CATCH_UP_FLUSH_INTERVAL`` while a
backlog waits (see agents/flush.py for what a flush guarantees).
"""

from __future__ import annotations

import bisect
import logging
import time
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import IllegalStateError
from aiokafka.structs import TopicPartition

from agents.ingest import process_records
from agents.partitions import PartitionOwner, RebalanceListener
from models.outputs import DeadLetter
from pulse.app import pulse_agent, registry_cache, sink_health, worker_metrics
from pulse.changelog import (
    ChangelogWriter,
    transactional_producer_factory,
    transactions_unsupported,
)
from pulse.kafka_clients import client_options
from pulse.redis_clients import resp_options
from pulse.registry.cache import RegistryCache
from pulse.settings import Settings
from pulse.sinks._base import SinkHealth
from pulse.sinks.dead_letters import OutputDeadLetters
from pulse.sinks.kafka import KafkaSink
from pulse.sinks.redis import RedisSink
from pulse.topics import ensure_topics
from tables.partition_state import PartitionState

log = logging.getLogger(__name__)

MAX_RECORDS_PER_FETCH = 20_000


class ReadingsProcessor(PartitionOwner):
    """Consumes ``readings`` in batches and keeps exact event-time windows per partition."""

    def __init__(
        self,
        settings: Settings,
        sink_health: list[SinkHealth] | None = None,
        registry: RegistryCache | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(settings, **kwargs)
        self.producer: AIOKafkaProducer | None = None
        self.sink_health = [] if sink_health is None else sink_health
        """Where the health of this processor's sinks is shown (see pulse.app.sink_health)."""
        self.metrics.processor = self
        self.registry_cache = registry
        """The registry alerts are judged by; started and stopped with the processor."""
        self.registry_source = registry
        self.registry_required = settings.registry_required == "true"

    @property
    def group_id(self) -> str:
        return f"{self.settings.app_id}-readings"

    async def on_start(self) -> None:
        s = self.settings
        await ensure_topics(s)
        if self.registry_cache is not None:
            # PostgreSQL away is no error: the cache keeps trying, the health says so.
            await self.registry_cache.start()
        transactional = await self._changelog_transactions()
        self.producer = AIOKafkaProducer(
            **client_options(s),
            acks="all",
            # No compression: on this path lz4 cost a sixth of the worker's CPU (profiled),
            # for records that mostly stay on one host; brokers may still compress at rest.
            compression_type=None,
            linger_ms=5,
            max_batch_size=512 << 10,
            max_request_size=4 << 20,
        )
        await self.producer.start()
        factory = transactional_producer_factory(client_options(s), s.app_id)
        self.writer = ChangelogWriter(
            self.producer, s.changelog_topic, factory if transactional else None
        )
        self.writer.on_lost = self.partition_lost
        dead_letters = OutputDeadLetters(self.producer, s.topic_output_dlq, s.max_message_bytes)
        # InfluxDB is written from the aggregates topic by its own writer
        # (agents/influx_writer.py): a flush waits for Kafka and Redis only.
        self.sinks = [
            KafkaSink(self.producer, s.topic_aggregates, s.topic_dlq, dead_letters, s.topic_alerts),
            RedisSink(
                s.redis_url,
                s.redis_prefix,
                s.state_ttl,
                parts=frozenset({RedisSink.LATEST}),
                **resp_options(s),
            ),
            RedisSink(
                s.redis_url,
                s.redis_prefix,
                s.state_ttl,
                parts=frozenset({RedisSink.WINDOWS}),
                **resp_options(s),
            ),
        ]
        for sink in self.sinks:
            await sink.start()
            self.sink_health.append(sink.health)
        session_ms = int(s.session_timeout * 1000)
        self.consumer = AIOKafkaConsumer(
            **client_options(s),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(session_ms // 6, 100),
            rebalance_timeout_ms=max(session_ms, 10_000),
            max_poll_interval_ms=300_000,
            fetch_max_bytes=64 << 20,
            # A fetch that finds no new record waits up to this long for one. The local
            # broker answers such a fetch only when the wait ends, even if records arrive
            # meanwhile: with the default 500 ms, records waited ~0.4 s before the worker saw
            # them (measured). A fifth of the flush interval keeps that wait within the
            # freshness a flush promises; idle fetches cost little.
            fetch_max_wait_ms=max(int(s.flush_interval * 200), 10),
            max_partition_fetch_bytes=8 << 20,
        )
        self.consumer.subscribe([s.topic_readings], listener=RebalanceListener(self))
        await self.consumer.start()
        self.add_future(self._run())
        self.add_future(self._close_idle_periodically())

    async def _changelog_transactions(self) -> bool:
        """Whether the changelog is written in transactions (``PULSE_CHANGELOG_TRANSACTIONS``):
        ``auto`` asks the broker once."""
        s = self.settings
        if s.changelog_transactions == "off":
            log.info("changelog: without transactions (PULSE_CHANGELOG_TRANSACTIONS=off)")
            return False
        unsupported = await transactions_unsupported(client_options(s), s.app_id)
        if unsupported is None:
            log.info("changelog: one transactional producer per owned partition")
            return True
        if s.changelog_transactions == "on":
            raise RuntimeError(
                "PULSE_CHANGELOG_TRANSACTIONS=on, but the broker refuses transactions: "
                f"{unsupported}"
            )
        log.warning(
            "changelog: without transactions, which the broker refuses (%s): a worker that "
            "lost its partitions is not fenced; PULSE_CHANGELOG_TRANSACTIONS=on would stop "
            "here instead",
            unsupported,
        )
        return False

    async def on_stop(self) -> None:
        if self.consumer is not None:
            async with self._lock:
                await self._flush_now()
            await self.consumer.stop()
        await self.close_lanes()
        if self.writer is not None:
            await self.writer.release_all()
        if self.producer is not None:
            await self.producer.stop()
        for sink in self.sinks:
            await sink.stop()
        if self.registry_cache is not None:
            await self.registry_cache.stop()

    async def _run(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        interval = self.settings.flush_interval
        catch_up_interval = max(interval, self.settings.catch_up_flush_interval)
        while not self.should_stop:
            began = time.monotonic()
            batches = await consumer.getmany(
                timeout_ms=int(interval * 200), max_records=MAX_RECORDS_PER_FETCH
            )
            now = time.monotonic()
            self.note_fetch(began, bool(batches))
            if batches:
                async with self._lock:
                    for tp, records in batches.items():
                        state = self.states.get(tp.partition)
                        if state is not None:
                            self._process(tp, state, records)
                            self.note_records(tp.partition, now)
            since = now - self._last_flush
            # A registry version loaded that a partition does not use yet: the flush that
            # switches to it comes now, not after the interval.
            switch = self.registry_pending()
            if self._catching_up():
                # A backlog: Redis is behind by the backlog anyway, and a longer flush writes
                # each key once for all its readings in it (open windows, latest values,
                # changelog rows), which is most of a flush's cost.
                if since >= catch_up_interval or switch:
                    async with self._lock:
                        await self._start_flush(spread_closes=False)
                continue
            idle = self.sinks_idle
            # At least every interval; sooner (up to 5x) while the sinks that pace flushes
            # (Kafka, Redis's latest values; not Redis's windows, which catch up with merged
            # batches) have written the previous flushes, which keeps the delay from a
            # reading to its latest value in Redis low when the load allows it.
            if since >= interval or (idle and since >= interval / 5) or switch:
                async with self._lock:
                    await self._start_flush(spread_closes=True)

    def _catching_up(self) -> bool:
        """More than one fetch's worth of records waits in the assigned partitions."""
        consumer = self.consumer
        assert consumer is not None
        waiting = 0
        for partition, state in self.states.items():
            try:
                highwater = consumer.highwater(
                    TopicPartition(self.settings.topic_readings, partition)
                )
            except (AssertionError, IllegalStateError):
                continue  # revoked meanwhile
            if highwater is not None:
                waiting += max(highwater - state.next_offset, 0)
        return waiting > MAX_RECORDS_PER_FETCH

    def lag(self) -> dict[int, int]:
        """Per assigned partition a fetch has reported on, records not applied yet: the
        consumer's high watermark minus the state's position (for ``/metrics``)."""
        consumer = self.consumer
        lags: dict[int, int] = {}
        if consumer is None:
            return lags
        for partition, state in list(self.states.items()):
            try:
                highwater = consumer.highwater(
                    TopicPartition(self.settings.topic_readings, partition)
                )
            except (AssertionError, IllegalStateError):
                continue  # revoked meanwhile
            if highwater is not None:
                lags[partition] = max(highwater - state.next_offset, 0)
        return lags

    def _process(self, tp: TopicPartition, state: PartitionState, records: list[Any]) -> None:
        before = state.next_offset
        # Records below the state's position are already in it (a recovered state) and are
        # skipped; counted per fetch, from the offsets (in order), not per record.
        taken = (
            len(records)
            if records[0].offset >= before
            else len(records) - bisect.bisect_left(records, before, key=lambda r: r.offset)
        )
        process_records(
            state,
            records,
            self.settings.max_message_bytes,
            self.settings.max_future_us,
            lambda record, reason, detail: self._dead_letter(tp, record, reason, detail),
        )
        self.metrics.count_fetch(tp.partition, taken)

    def _dead_letter(self, tp: TopicPartition, record: Any, reason: str, detail: str) -> None:
        self._dead_letters.append(
            DeadLetter(
                reason,
                detail,
                tp.topic,
                tp.partition,
                record.offset,
                record.key,
                record.value,
                self.settings.max_message_bytes,
                record.timestamp,
            )
        )


@pulse_agent
def register(app: faust.App, settings: Settings) -> None:
    """Add the readings processor to ``app`` (as ``app.pulse_processor``)."""
    processor = ReadingsProcessor(
        settings,
        sink_health(app),
        registry_cache(app, settings),
        metrics=worker_metrics(app),
    )
    app.pulse_processor = processor  # type: ignore[attr-defined]
    # A child of the app, not an @app.service: those start only after Faust's own consumer
    # group has formed, and two group joins in a row would double the start-up time.
    app.add_dependency(processor)
