"""The readings agent: topic ``readings`` in batches, windows, flushes to every sink.

It runs inside the Faust worker as a service, with its own aiokafka consumer: Faust's
per-event stream machinery tops out near 10,000 events/s here, while this loop takes whole
fetches (``getmany``) and updates state per batch.

One flush (every ``PULSE_FLUSH_INTERVAL``, or ``PULSE_CATCH_UP_FLUSH_INTERVAL`` while a backlog
waits), under one lock with processing:

1. drain each partition's state: closed windows, changed views and latest values, and the
   changelog delta (serialised at once); the loop goes on processing while 2-4 run;
2. write the outputs to every sink (aggregates + dead letters to Kafka, Redis, InfluxDB),
   each sink on its own lane in flush order, and wait until every sink has them durably;
3. after the previous flush's deltas, write this flush's deltas to the changelog and wait
   for the acks;
4. commit the input offsets (for lag monitoring; recovery uses the offsets in the changelog).

A crash between 2 and 3 makes the next owner process the same records again from the last
delta, and emit the same windows with identical content: outputs are at-least-once with
identical repeats, state is exactly-once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import TopicPartition
from mode import Service

from models.outputs import DeadLetter
from models.reading import Rejected, parse_reading
from pulse.changelog import ChangelogWriter, EncodedDelta, recover_partition
from pulse.settings import Settings
from pulse.sinks._base import FlushBatch, Sink
from pulse.sinks.influx import InfluxSink
from pulse.sinks.kafka import KafkaSink
from pulse.sinks.redis import RedisSink
from pulse.topics import ensure_topics
from tables.partition_state import Drained, PartitionState

log = logging.getLogger(__name__)

MAX_RECORDS_PER_FETCH = 20_000
INPUT_PAUSE = 1.0
"""Seconds of fetches without a record after which the input counts as paused (see
ReadingsProcessor.close_spread_us)."""
MAX_FLUSHES_IN_FLIGHT = 64
MAX_WINDOWS_IN_FLIGHT = 200_000
"""Bounds on flushes written but not complete: memory, and how far a slow sink may lag."""


class _SinkLane:
    """One sink's writes, one at a time and in flush order.

    Batches submitted while a write is under way wait; the next write takes all of them as
    one merged batch (:meth:`FlushBatch.merge`), so a sink that fell behind catches up with
    fewer, larger writes (Redis then writes each key once, with its newest value).
    """

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self._waiting: list[tuple[FlushBatch, asyncio.Future[None]]] = []
        self._task: asyncio.Future[None] | None = None

    @property
    def idle(self) -> bool:
        return not self._waiting and (self._task is None or self._task.done())

    def submit(self, batch: FlushBatch) -> asyncio.Future[None]:
        """Queue a batch; the future is done once the sink has written it durably."""
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((batch, written))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._write_waiting())
        return written

    async def _write_waiting(self) -> None:
        while self._waiting:
            taken, self._waiting = self._waiting, []
            batches = [batch for batch, _ in taken]
            try:
                await self.sink.write(
                    batches[0] if len(batches) == 1 else FlushBatch.merge(batches)
                )
            except Exception as exc:  # a bug in a sink: every flush waiting on it fails
                for _, written in taken + self._waiting:
                    if not written.done():
                        written.set_exception(exc)
                self._waiting = []
                return
            for _, written in taken:
                if not written.done():
                    written.set_result(None)


class ReadingsProcessor(Service):
    """Consumes ``readings`` in batches and keeps exact event-time windows per partition."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.states: dict[int, PartitionState] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.writer: ChangelogWriter | None = None
        self.sinks: list[Sink] = []
        self._lock = asyncio.Lock()
        self._dead_letters: list[DeadLetter] = []
        self._last_record: dict[int, float] = {}
        self._empty_since: float | None = 0.0
        """When the loop began the first of the fetches in a row that returned no record
        (None: the last fetch returned records)."""
        self._last_flush = time.monotonic()
        self._in_flight: deque[tuple[asyncio.Future[None], int]] = deque()
        """Flushes not yet complete (sinks, changelog, offsets), oldest first, with their
        closed-window counts."""
        self._windows_in_flight = 0
        self._flush_tail: asyncio.Future[None] | None = None
        self._lanes: dict[int, _SinkLane] = {}
        self.ready = asyncio.Event()
        """Set once the first assignment has been recovered (for tests and health checks)."""
        self.flushes = 0

    @property
    def group_id(self) -> str:
        return f"{self.settings.app_id}-readings"

    async def on_start(self) -> None:
        s = self.settings
        await ensure_topics(s)
        self.producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap_servers,
            acks="all",
            # No compression: on this path lz4 cost a sixth of the worker's CPU (profiled),
            # for records that mostly stay on one host; brokers may still compress at rest.
            compression_type=None,
            linger_ms=5,
            max_batch_size=512 << 10,
            max_request_size=4 << 20,
        )
        await self.producer.start()
        self.writer = ChangelogWriter(self.producer, s.changelog_topic)
        self.sinks = [
            KafkaSink(self.producer, s.topic_aggregates, s.topic_dlq),
            RedisSink(s.redis_url, s.redis_prefix, s.state_ttl),
            InfluxSink(s.influx_url, s.influx_token, s.influx_org, s.influx_bucket),
        ]
        for sink in self.sinks:
            await sink.start()
        session_ms = int(s.session_timeout * 1000)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers,
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
        self.consumer.subscribe([s.topic_readings], listener=_Rebalance(self))
        await self.consumer.start()
        self.add_future(self._run())
        self.add_future(self._close_idle_periodically())

    async def on_stop(self) -> None:
        if self.consumer is not None:
            async with self._lock:
                await self._flush_now()
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()
        for sink in self.sinks:
            await sink.stop()

    # -- the loop ------------------------------------------------------------------------

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
                            self._last_record[tp.partition] = now
            since = now - self._last_flush
            if self._catching_up():
                # A backlog: Redis is behind by the backlog anyway, and a longer flush writes
                # each key once for all its readings in it (open windows, latest values,
                # changelog rows), which is most of a flush's cost.
                if since >= catch_up_interval:
                    async with self._lock:
                        await self._start_flush(spread_closes=False)
                continue
            idle = all(lane.idle for lane in self._lanes.values())
            # At least every interval; sooner (up to 5x) while the sinks have written the
            # previous flushes, which keeps the delay from a reading to Redis low when the
            # load allows it.
            if since >= interval or (idle and since >= interval / 5):
                async with self._lock:
                    await self._start_flush(spread_closes=True)

    def note_fetch(self, began: float, got_records: bool) -> None:
        """Record a fetch that the loop began at ``began`` (monotonic seconds)."""
        if got_records:
            self._empty_since = None
        elif self._empty_since is None:
            self._empty_since = began

    def close_spread_us(self, now: float) -> int:
        """Event time over which a flush outside catch-up spreads windows that end together
        (``PULSE_CLOSE_SPREAD``; see PartitionState.close_ready).

        The epoch-aligned windows of every series end together. Closed at once, such a burst
        (the outputs of 20,000 windows to Kafka, Redis and InfluxDB, and the stand-in's
        indexing of them) saturated both cores of the test machine for seconds, and the
        fresh values of the flushes behind it waited (measured in bench/README.md).

        No spreading (0) once fetches have found no record for INPUT_PAUSE seconds (at least
        a flush interval): with the input paused or ended there is nothing to keep fresh,
        and the watermark, which spreading follows, no longer advances. That time counts
        from the first of the empty fetches in a row: the loop's own work (a long flush in a
        burst) is no pause in the input, and after it the next fetch may find nothing
        prefetched yet. It is a second, not a flush interval, because on a saturated machine
        fetches came back empty for longer while records waited (traced at 5,000
        readings/s: a burst of 17,742 windows closed at once). (Wall time since the last
        records, counted before, made one empty fetch close a whole burst at once too:
        14,379 windows, then a 1.1 s Redis write ahead of the fresh values.)
        """
        empty_since = self._empty_since
        pause = max(INPUT_PAUSE, self.settings.flush_interval)
        if empty_since is not None and now - empty_since >= pause:
            return 0
        return self.settings.close_spread_us

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

    def _process(self, tp: TopicPartition, state: PartitionState, records: list[Any]) -> None:
        process_records(
            state,
            records,
            self.settings.max_message_bytes,
            lambda record, reason, detail: self._dead_letter(tp, record, reason, detail),
        )

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
            )
        )

    # -- flushing ------------------------------------------------------------------------
    #
    # A flush is prepared synchronously (drain the states, compute every output, serialise
    # the deltas) and then written in the background while the loop goes on processing the
    # next records: the sinks' servers and the broker work on the other core meanwhile.
    #
    # Each sink writes its batches one at a time, in flush order, on its own lane, so a slow
    # sink (InfluxDB indexing new series, a 429) does not hold back the others: Redis stays
    # fresh while InfluxDB catches up, and a lane that fell behind merges what waits. A
    # flush's changelog deltas are written once every sink has its outputs, and after the
    # previous flush's deltas, so the state never runs ahead of any output. At most
    # MAX_FLUSHES_IN_FLIGHT flushes (and MAX_WINDOWS_IN_FLIGHT closed windows) wait; beyond
    # that processing waits for the oldest, which is how a stalled sink holds back
    # consumption (backpressure, not loss).

    async def flush(self) -> None:
        """Flush now (outputs, changelog, offsets); returns when all are durable."""
        async with self._lock:
            await self._flush_now()

    async def _flush_now(self, partitions: set[int] | None = None) -> None:
        prepared = self._prepare_flush(partitions)
        if prepared is not None:
            self._submit_flush(*prepared)
        await self._settle(0)

    async def _start_flush(self, spread_closes: bool) -> None:
        await self._settle(MAX_FLUSHES_IN_FLIGHT - 1, MAX_WINDOWS_IN_FLIGHT)
        prepared = self._prepare_flush(spread_closes=spread_closes)
        if prepared is not None:
            self._submit_flush(*prepared)

    async def _settle(self, flushes: int, windows: int | None = None) -> None:
        """Wait for the oldest flushes until at most ``flushes`` (and ``windows`` closed
        windows) are in flight; raise what a finished flush raised."""
        in_flight = self._in_flight
        while in_flight and (
            len(in_flight) > flushes
            or in_flight[0][0].done()
            or (windows is not None and self._windows_in_flight > windows)
        ):
            finished, closed = in_flight[0]
            await finished
            in_flight.popleft()
            self._windows_in_flight -= closed

    def _submit_flush(self, batch: FlushBatch, deltas: list[EncodedDelta]) -> None:
        written: list[asyncio.Future[None]] = []
        if not batch.empty:
            for index, sink in enumerate(self.sinks):
                lane = self._lanes.get(index)
                if lane is None or lane.sink is not sink:
                    lane = self._lanes[index] = _SinkLane(sink)
                written.append(lane.submit(batch))
        finished = asyncio.ensure_future(self._complete_flush(self._flush_tail, written, deltas))
        self._flush_tail = finished
        self._in_flight.append((finished, len(batch.closed)))
        self._windows_in_flight += len(batch.closed)

    def _prepare_flush(
        self, partitions: set[int] | None = None, spread_closes: bool = False
    ) -> tuple[FlushBatch, list[EncodedDelta]] | None:
        assert self.writer is not None
        self._last_flush = time.monotonic()
        spread_us = self.close_spread_us(self._last_flush) if spread_closes else 0
        drains: list[Drained] = []
        deltas: list[EncodedDelta] = []
        for partition, state in self.states.items():
            if partitions is not None and partition not in partitions:
                continue
            drained = state.drain(self.writer.snapshot_due(partition), spread_us)
            drains.append(drained)
            delta = drained.delta
            if delta.snapshot or not delta.empty or delta.to_offset != delta.from_offset:
                deltas.append(self.writer.encode(partition, delta))
        batch = FlushBatch.of(drains, self._dead_letters)
        self._dead_letters = []
        if batch.empty and not deltas:
            return None
        return batch, deltas

    async def _complete_flush(
        self,
        previous: asyncio.Future[None] | None,
        written: list[asyncio.Future[None]],
        deltas: list[EncodedDelta],
    ) -> None:
        """After every sink wrote this flush and the previous flush completed: the changelog
        deltas (acked), then the input offsets."""
        if written:
            await asyncio.gather(*written)
        if previous is not None:
            await previous
        if not deltas:
            return
        assert self.writer is not None and self.consumer is not None
        acks = []
        for delta in deltas:
            acks += await self.writer.send(delta)
        await asyncio.gather(*acks)
        self.flushes += 1
        topic = self.settings.topic_readings
        offsets = {TopicPartition(topic, d.partition): d.to_offset for d in deltas}
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # Harmless: the changelog, not the group, says where to resume.
            log.info("offset commit skipped (%s); the changelog holds the position", exc)

    # -- idle close ----------------------------------------------------------------------

    async def _close_idle_periodically(self) -> None:
        period = min(1.0, self.settings.idle_close / 4)
        while not self.should_stop:
            began = time.monotonic()
            await asyncio.sleep(period)
            if time.monotonic() - began > period + 1.0:
                # The process was stalled (blocked loop, paused, overloaded): wall-clock gaps
                # say nothing about the partitions now; look again next round.
                continue
            await self.close_idle()

    async def close_idle(self) -> None:
        """Advance the watermark of caught-up partitions that got no record for a while."""
        consumer = self.consumer
        if consumer is None:
            return
        now = time.monotonic()
        floor_us = int(time.time() * 1_000_000) - self.settings.grace_us
        now_ms = time.time() * 1000
        async with self._lock:
            for partition, state in self.states.items():
                if now - self._last_record.get(partition, now) < self.settings.idle_close:
                    continue
                tp = TopicPartition(self.settings.topic_readings, partition)
                try:
                    highwater = consumer.highwater(tp)
                    polled_ms = consumer.last_poll_timestamp(tp)
                except (AssertionError, IllegalStateError):
                    continue  # revoked meanwhile
                # Caught up means: every record below the high watermark of a fetch response
                # is applied (not merely handed out by the consumer), and that response is
                # fresh, so no record can be waiting unseen.
                if highwater is None or polled_ms is None or state.next_offset < highwater:
                    continue
                if now_ms - polled_ms > 2000:
                    continue
                state.advance_idle(floor_us)

    # -- rebalancing ---------------------------------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        partitions = {tp.partition for tp in revoked if tp.partition in self.states}
        if not partitions:
            return
        async with self._lock:
            await self._flush_now(partitions)
            for partition in partitions:
                del self.states[partition]
                self._last_record.pop(partition, None)
                assert self.writer is not None
                self.writer.forget(partition)
        log.info("readings: handed over partitions %s", sorted(partitions))

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer, writer, s = self.consumer, self.writer, self.settings
        assert consumer is not None and writer is not None
        new = sorted(tp for tp in assigned if tp.partition not in self.states)
        recovered = await asyncio.gather(
            *(
                recover_partition(
                    s.bootstrap_servers, s.changelog_topic, tp.partition, s.windows, s.grace_us
                )
                for tp in new
            )
        )
        # A partition never processed starts at its committed offset (if the changelog was
        # lost) or at its beginning. (``position()`` here would wait ~0.5 s per partition.)
        fresh = [tp for tp, (state, _) in zip(new, recovered, strict=True) if state is None]
        starts = {tp: await consumer.committed(tp) for tp in fresh}
        unstarted = [tp for tp, offset in starts.items() if offset is None]
        if unstarted:
            starts.update(await consumer.beginning_offsets(unstarted))
        async with self._lock:
            now = time.monotonic()
            for tp, (state, base) in zip(new, recovered, strict=True):
                if state is None:
                    state = PartitionState(s.windows, s.grace_us, next_offset=starts[tp])
                writer.adopt(tp.partition, base)
                consumer.seek(tp, state.next_offset)
                self.states[tp.partition] = state
                self._last_record[tp.partition] = now
        log.info(
            "readings: partitions %s assigned (%d recovered, %d new)",
            sorted(tp.partition for tp in assigned),
            len(new) - len(fresh),
            len(fresh),
        )
        self.ready.set()


def process_records(
    state: PartitionState,
    records: list[Any],
    max_bytes: int,
    reject: Callable[[Any, str, str], None],
) -> None:
    """Apply one fetch of a partition's records (``offset``, ``key``, ``value``,
    ``timestamp``) to its state in offset order; a record that is no valid reading, or is
    late for every window, goes to ``reject(record, reason, detail)`` and nothing else.

    The common readings go through in batches (PartitionState.apply_records); each record
    it leaves is parsed and applied here, and the batch resumes after it.
    """
    apply_records, apply = state.apply_records, state.apply
    end = len(records)
    at = apply_records(records, 0, max_bytes)
    while at < end:
        record = records[at]
        at += 1
        offset = record.offset
        if offset >= state.next_offset:  # else already in the recovered state
            try:
                reading = parse_reading(record.key, record.value, record.timestamp, max_bytes)
            except Rejected as rejected:
                state.skip(offset)
                reject(record, rejected.reason, rejected.detail)
            except Exception as exc:  # a bug for this input: not a reason to stop the partition
                log.exception("readings: the record at offset %d could not be parsed", offset)
                state.skip(offset)
                reject(
                    record,
                    "invalid_reading",
                    f"the reading could not be parsed: {type(exc).__name__}: {exc}",
                )
            else:
                if not apply(reading, offset):
                    reject(
                        record,
                        "late",
                        f"event time {_iso(reading.t_us)} is before the partition's watermark "
                        f"{_iso(state.watermark)}: every window it belongs to has closed",
                    )
        at = apply_records(records, at, max_bytes)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, processor: ReadingsProcessor) -> None:
        self.processor = processor

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.processor._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.processor._on_assigned(assigned)


def _iso(t_us: int) -> str:
    try:
        return datetime.fromtimestamp(t_us / 1_000_000, UTC).isoformat()
    except (OverflowError, ValueError, OSError):
        return "none"
