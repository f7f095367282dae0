"""Pulse's changelog: window state of each input partition, recoverable exactly after a crash.

Topic ``{app_id}-readings-state`` has as many partitions as ``readings``; changelog partition
``p`` holds the state of input partition ``p`` as a sequence of *deltas* (see
:mod:`tables.partition_state`), with a full *snapshot* now and then so recovery never replays
the whole history.

A delta may be larger than one Kafka record, so it is written as ``parts`` records sharing an
``id``; recovery applies a delta only once it has seen all its parts, so a delta cut short by a
crash is ignored (its input records are processed again). Every record carries ``base``: the
changelog offset where the writer's latest complete snapshot starts. Recovery reads the last
record, jumps to its ``base`` and reads forward to the end reported by *fetch* responses
(``ListOffsets`` under-reports the end on the local broker and is only used as a starting
hint).

Exact without transactions: a delta holds full values, and applying it is idempotent on any
state between its ``from`` and ``to`` offsets, so a delta written twice, or by a worker that
had already lost the partition, cannot double-count (and one of that worker written after an
idle close of its successor, at the same offsets, is ignored by its older idle floor:
PartitionState.apply_delta); the input offset to resume from is stored with the state, not
taken from the consumer group.

Fenced with them (Apache Kafka): each owned partition's deltas go through its own
transactional producer, ``{app_id}-changelog-{p}``, opened before the partition is
recovered. The broker then refuses the writes of any previous owner, and recovery reads
committed records only, to the last stable offset.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from tables.partition_state import Delta, PartitionState
from tables.windows import WindowSpec

log = logging.getLogger(__name__)

ROWS_PER_RECORD = 2_000
MAX_RECORD_BYTES = 512 << 10
"""A part larger than this (long tag values) is split again, to stay under Kafka's 1 MB."""
SNAPSHOT_MIN_BYTES = 16 << 20
"""Write a snapshot once the deltas since the last one exceed this and twice its size.

Recovery replays at most this much of deltas after the snapshot, which bounds its time
(``python -m bench.recovery`` measures the rate). A snapshot is encoded on the loop in the
flush that takes it, so with a small state this floor sets how often the loop pays for one: a
lower floor showed in the latency tail (bench/README.md's log)."""
SNAPSHOT_MAX_AGE_SECONDS = 24 * 3600
"""...and at least this often, so the latest snapshot is always well inside the changelog's
retention (:data:`pulse.topics.CHANGELOG_RETENTION_MS`); also once after each assignment."""

_ROW_LISTS = (
    "windows",
    "removed",
    "latest",
    "latest_removed",
    "sliding",
    "sliding_removed",
    "tag_values",
    "tag_values_removed",
    "alert_series",
    "alert_absence",
)


def encode_parts(delta: Delta, delta_id: str, base: int) -> list[bytes]:
    """Split a delta into record values of at most :data:`ROWS_PER_RECORD` rows and
    :data:`MAX_RECORD_BYTES` bytes each (a single row is never split)."""
    doc = delta.to_json()
    header = {k: v for k, v in doc.items() if k not in _ROW_LISTS}
    header.update(id=delta_id, base=base)
    # Chunks of at most ROWS_PER_RECORD rows, taken from the row lists in order by slicing
    # (a per-row pass here cost more than the JSON encoding).
    chunks: list[dict[str, list[Any]]] = []
    chunk: dict[str, list[Any]] = {}
    room = ROWS_PER_RECORD
    for name in _ROW_LISTS:
        rows = doc[name]
        taken = 0
        while taken < len(rows):
            piece = rows[taken : taken + room]
            chunk[name] = piece
            taken += len(piece)
            room -= len(piece)
            if room == 0:
                chunks.append(chunk)
                chunk, room = {}, ROWS_PER_RECORD
    if chunk or not chunks:
        chunks.append(chunk)
    pending = chunks[::-1]
    encoded: list[bytes] = []
    while pending:
        chunk = pending.pop()
        part = dict(header)
        for name in _ROW_LISTS:
            part[name] = chunk.get(name, [])
        value = orjson.dumps(part, option=orjson.OPT_NON_STR_KEYS)
        size = sum(len(rows) for rows in chunk.values())
        if len(value) > MAX_RECORD_BYTES and size > 1:
            pending += _halves(chunk)[::-1]
            continue
        encoded.append(value)
    # Part numbers are added last, as a suffix the assembler reads back as fields.
    total = len(encoded)
    return [
        value[:-1] + b',"part":%d,"parts":%d}' % (number, total)
        for number, value in enumerate(encoded)
    ]


def _halves(chunk: dict[str, list[Any]]) -> list[dict[str, list[Any]]]:
    """A chunk of rows split in two, in order (each half has at least one row)."""
    rows = [(name, row) for name in _ROW_LISTS for row in chunk.get(name, ())]
    half = len(rows) // 2
    out: list[dict[str, list[Any]]] = []
    for part in (rows[:half], rows[half:]):
        split: dict[str, list[Any]] = {}
        for name, row in part:
            split.setdefault(name, []).append(row)
        out.append(split)
    return out


class DeltaAssembler:
    """Joins the parts of deltas read back in log order; yields each complete delta once."""

    def __init__(self) -> None:
        self._pending: dict[str, dict[int, dict[str, Any]]] = {}

    def add(self, value: bytes) -> Delta | None:
        part = orjson.loads(value)
        if part["parts"] == 1:
            return Delta.from_json(part)
        # By part number: a part stored twice (a producer retry) must not stand in for another.
        parts = self._pending.setdefault(part["id"], {})
        parts[part["part"]] = part
        if len(parts) < part["parts"]:
            return None
        del self._pending[part["id"]]
        ordered = [parts[number] for number in sorted(parts)]
        whole = dict(ordered[0])
        for name in _ROW_LISTS:
            # (the tag and alert lists are absent from the changelogs of earlier versions)
            whole[name] = [row for p in ordered for row in p.get(name, ())]
        return Delta.from_json(whole)


@dataclass(frozen=True, slots=True)
class EncodedDelta:
    """A delta serialised into its record values, ready to send.

    ``owner`` is the partition's ownership it was encoded under (see
    :meth:`ChangelogWriter.open`): it is written only while that ownership lasts.
    """

    partition: int
    to_offset: int
    snapshot: bool
    values: list[bytes]
    owner: object = None


TRANSACTION_TIMEOUT_MS = 60_000
"""How long the broker lets a changelog transaction stay open before it aborts it (and fences
the producer). A transaction lasts one write, milliseconds; a broker away for longer than
this makes the writer lose its partitions, which the group then assigns again."""


class ChangelogWriter:
    """Writes one worker's deltas; remembers per partition where the last snapshot starts.

    Without transactions every delta goes through the worker's ``producer``. With them
    (``transactional_producer``: partition -> an unstarted producer with that partition's
    transactional id) each owned partition has its own producer, opened on assignment and
    closed on revocation, and each :meth:`write` commits one transaction per partition. A
    partition whose transaction fails (a newer owner fenced this one, or the broker aborted
    it) is *lost*: the writer forgets it and calls ``on_lost(partition)``.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer | None,
        topic: str,
        transactional_producer: Callable[[int], AIOKafkaProducer] | None = None,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self._transactional_producer = transactional_producer
        self.on_lost: Callable[[int], None] = lambda partition: None
        self._producers: dict[int, AIOKafkaProducer] = {}
        self._owner: dict[int, object] = {}
        self._writer_id = uuid.uuid4().hex[:12]
        self._sequence = 0
        self._base: dict[int, int] = {}
        self._bytes_since_snapshot: dict[int, int] = {}
        self._snapshot_bytes: dict[int, int] = {}
        self._snapshot_at: dict[int, float] = {}

    @property
    def transactional(self) -> bool:
        return self._transactional_producer is not None

    @property
    def open_producers(self) -> int:
        """Transactional producers open now (one per owned partition)."""
        return len(self._producers)

    async def open(self, partition: int) -> None:
        """Take ownership of ``partition``'s changelog, before recovering it.

        With transactions: start its producer, whose InitProducerId bumps the transactional
        id's epoch, so the broker refuses every later write of a previous owner, and aborts
        that owner's open transaction, so recovery reads committed records to the end.
        """
        await self.release(partition)
        if self._transactional_producer is None:
            self._owner[partition] = object()
            return
        producer = self._transactional_producer(partition)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producers[partition] = producer
        self._owner[partition] = producer

    async def release(self, partition: int) -> None:
        """Give up ``partition``: forget it and close its producer."""
        self.forget(partition)
        producer = self._producers.pop(partition, None)
        if producer is not None:
            await producer.stop()

    async def release_all(self) -> None:
        for partition in list(self._owner):
            await self.release(partition)

    def adopt(self, partition: int, base: int) -> None:
        """Continue from a recovered partition whose latest snapshot starts at ``base``."""
        self._base[partition] = base
        self._bytes_since_snapshot[partition] = 0
        self._snapshot_bytes.setdefault(partition, 0)
        self._snapshot_at[partition] = float("-inf")  # the recovered snapshot's age is unknown

    def forget(self, partition: int) -> None:
        self._owner.pop(partition, None)
        self._base.pop(partition, None)
        self._bytes_since_snapshot.pop(partition, None)
        self._snapshot_bytes.pop(partition, None)
        self._snapshot_at.pop(partition, None)

    def snapshot_due(self, partition: int) -> bool:
        if time.monotonic() - self._snapshot_at.get(partition, 0.0) > SNAPSHOT_MAX_AGE_SECONDS:
            return True
        written = self._bytes_since_snapshot.get(partition, 0)
        return written > max(SNAPSHOT_MIN_BYTES, 2 * self._snapshot_bytes.get(partition, 0))

    def encode(self, partition: int, delta: Delta) -> EncodedDelta:
        """Serialise a delta now (the state it refers to may change right after)."""
        self._sequence += 1
        delta_id = f"{self._writer_id}-{self._sequence}"
        values = encode_parts(delta, delta_id, self._base.get(partition, -1))
        size = sum(len(v) for v in values)
        if delta.snapshot:
            self._snapshot_bytes[partition] = size
            self._bytes_since_snapshot[partition] = 0
            self._snapshot_at[partition] = time.monotonic()
        else:
            self._bytes_since_snapshot[partition] = (
                self._bytes_since_snapshot.get(partition, 0) + size
            )
        owner = self._owner.get(partition)
        return EncodedDelta(partition, delta.to_offset, delta.snapshot, values, owner)

    async def write(self, deltas: list[EncodedDelta]) -> set[int]:
        """Write deltas (each partition's in the order they were encoded) until durable;
        returns the partitions whose deltas are stored.

        A delta of an ownership that has ended is not written. With transactions, each
        partition's deltas are one transaction, committed before this returns; a partition
        whose transaction fails is lost (see the class), its deltas not stored. Without, a
        failed send raises.
        """
        by_partition: dict[int, list[EncodedDelta]] = {}
        for delta in deltas:
            owner = self._owner.get(delta.partition)
            if owner is delta.owner and (owner is not None or not self.transactional):
                by_partition.setdefault(delta.partition, []).append(delta)
        if self._transactional_producer is None:
            assert self.producer is not None or not by_partition
            acks = []
            for partition_deltas in by_partition.values():
                for delta in partition_deltas:
                    acks += await self._send(self.producer, delta)
            await asyncio.gather(*acks)
            return set(by_partition)
        committed = await asyncio.gather(
            *(self._commit(partition, ds) for partition, ds in by_partition.items())
        )
        return {p for p, done in zip(by_partition, committed, strict=True) if done}

    async def _commit(self, partition: int, deltas: list[EncodedDelta]) -> bool:
        producer: Any = deltas[0].owner  # the partition's producer (see open())
        acks: list[asyncio.Future] = []
        try:
            await producer.begin_transaction()
            for delta in deltas:
                acks += await self._send(producer, delta)
            # Every part stored before the commit: a transaction is never committed short of
            # a part (aiokafka can fail a batch and still commit the others).
            await asyncio.gather(*acks)
            await producer.commit_transaction()
            return True
        except Exception as exc:  # fenced, or any other failure: the transaction is void
            for ack in acks:  # their failure is this one
                ack.add_done_callback(_retrieved)
            _retrieve_unsent(producer)
            if self._owner.get(partition) is producer:
                log.warning(
                    "changelog %s[%d]: transaction failed (%r); this worker gives up the partition",
                    self.topic,
                    partition,
                    exc,
                )
                self.forget(partition)
                self._producers.pop(partition, None)
                self.on_lost(partition)
            await producer.stop()
            return False

    async def _send(self, producer: Any, encoded: EncodedDelta) -> list[asyncio.Future]:
        """Queue an encoded delta's records; returns the futures of the broker's acks."""
        partition = encoded.partition
        futures = [
            await producer.send(self.topic, value=value, partition=partition)
            for value in encoded.values
        ]
        if encoded.snapshot:
            owner = encoded.owner
            futures[0].add_done_callback(lambda fut: self._snapshot_written(partition, owner, fut))
        return futures

    def _snapshot_written(self, partition: int, owner: object, future: asyncio.Future) -> None:
        # Only later records point at the snapshot, and only once its first part is stored;
        # recovery then also needs the rest of its parts, which come before any later delta.
        # (A transaction that then fails loses the partition, and this base with it.)
        if (
            not future.cancelled()
            and future.exception() is None
            and partition in self._base
            and self._owner.get(partition) is owner
        ):
            self._base[partition] = future.result().offset


def _retrieved(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def _retrieve_unsent(producer: Any) -> None:
    """aiokafka fails the batches a failed producer never sent through a waiter that nobody
    awaits, which asyncio would log as an error of its own; the failure is reported once."""
    accumulator = getattr(producer, "_message_accumulator", None)
    for batches in getattr(accumulator, "_batches", {}).values():
        for batch in batches:
            waiter = getattr(batch, "_drain_waiter", None)
            if waiter is not None and waiter.done():
                _retrieved(waiter)


def transactional_producer_factory(
    kafka_options: Mapping[str, Any], app_id: str
) -> Callable[[int], AIOKafkaProducer]:
    """Partition -> its changelog producer, transactional id ``{app_id}-changelog-{p}``
    (``kafka_options``: :func:`pulse.kafka_clients.client_options`)."""

    def make(partition: int) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **kafka_options,
            transactional_id=f"{app_id}-changelog-{partition}",
            transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
            acks="all",
            compression_type=None,
            linger_ms=0,  # a commit sends at once anyway
            max_batch_size=1 << 20,
            max_request_size=4 << 20,
        )

    return make


async def transactions_unsupported(
    kafka_options: Mapping[str, Any], app_id: str, timeout: float = 30.0
) -> str | None:
    """Why the broker cannot run the changelog's transactions, or None when it can.

    Starts a producer with transactional id ``{app_id}-changelog-probe`` (its InitProducerId is
    what the local tansu broker refuses) and closes it again.
    """
    producer = AIOKafkaProducer(**kafka_options, transactional_id=f"{app_id}-changelog-probe")
    try:
        await asyncio.wait_for(producer.start(), timeout)
        return None
    except (TimeoutError, KafkaError) as exc:
        return repr(exc)
    finally:
        await producer.stop()


async def recover_partition(
    kafka_options: Mapping[str, Any],
    topic: str,
    partition: int,
    specs: tuple[WindowSpec, ...],
    grace_us: int,
    progress_every: float = 2.0,
    read_committed: bool = False,
    max_tag_values: int | None = None,
) -> tuple[PartitionState | None, int]:
    """Rebuild one partition's state from the changelog, up to the end that fetches report.

    Returns ``(state, base)``: ``state`` is None when the changelog partition holds no delta
    (the partition was never processed); ``base`` is where its latest snapshot starts (-1:
    none). ``read_committed``: the changelog is written in transactions; only committed
    records count and the end is the last stable offset (the caller has opened the
    partition's producer first, which aborted any transaction a previous owner left open).
    ``kafka_options`` are the clients' connection options
    (:func:`pulse.kafka_clients.client_options`); ``max_tag_values`` is the state's bound of
    tag values in use (``PULSE_MAX_TAG_VALUES``), whose registry the deltas carry.
    """
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(
        **kafka_options,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
        isolation_level="read_committed" if read_committed else "read_uncommitted",
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        start = (await consumer.beginning_offsets([tp]))[tp]
        end_hint = (await consumer.end_offsets([tp]))[tp]
        if end_hint <= start:
            return None, -1
        last_value = await _last_value(consumer, tp, start, end_hint, read_committed)
        if last_value is None:
            return None, -1
        base = orjson.loads(last_value)["base"]
        consumer.seek(tp, max(base, start))
        state = PartitionState(specs, grace_us, max_tag_values=max_tag_values)
        assembler = DeltaAssembler()
        began = last_report = time.monotonic()
        records = applied = 0
        async for record in _read_to_end(consumer, tp, read_committed):
            records += 1
            delta = assembler.add(record.value)
            if delta is not None and state.apply_delta(delta):
                applied += 1
            now = time.monotonic()
            if now - last_report >= progress_every:
                last_report = now
                log.info(
                    "recovering %s[%d]: %d records read, at offset %d of %s",
                    topic,
                    partition,
                    records,
                    record.offset,
                    _end(consumer, tp, read_committed),
                )
        state.finish_recovery()
        log.info(
            "recovered %s[%d] in %.2fs: %d records, %d deltas applied, %d open windows, "
            "read to offset %d, resuming input at offset %d",
            topic,
            partition,
            time.monotonic() - began,
            records,
            applied,
            state.open_windows,
            await consumer.position(tp),
            state.next_offset,
        )
        return state, base
    finally:
        await consumer.stop()


async def _last_value(
    consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, end_hint: int, committed: bool
) -> bytes | None:
    """The value of the partition's last (committed) record, None if it has none.

    ``end_hint`` (``ListOffsets``) may stop at the first record of the last batch + 1, so the
    search reads from just before it to the end that fetches report. Transaction markers
    and aborted records take offsets without being records, so while nothing is found the
    search starts further back.
    """
    back = 1
    while True:
        begin = max(start, end_hint - back)
        consumer.seek(tp, begin)
        last_value = None
        async for record in _read_to_end(consumer, tp, committed):
            last_value = record.value
        if last_value is not None or begin == start:
            return last_value
        back *= 16


def _end(consumer: AIOKafkaConsumer, tp: TopicPartition, committed: bool) -> int | None:
    """The end that the last fetch response reported: the high watermark, or reading
    committed records the last stable offset (nothing beyond it can be read)."""
    return consumer.last_stable_offset(tp) if committed else consumer.highwater(tp)


async def _read_to_end(
    consumer: AIOKafkaConsumer, tp: TopicPartition, committed: bool
) -> AsyncIterator[Any]:
    """Yield records until the position reaches the end reported by a fetch response."""
    while True:
        batches = await consumer.getmany(tp, timeout_ms=500)
        for record in batches.get(tp, ()):
            yield record
        end = _end(consumer, tp, committed)
        if end is not None and await consumer.position(tp) >= end:
            return
