"""Pulse's changelog: window state of each input partition, recoverable exactly after a crash.

Topic ``{app_id}-readings-state`` has as many partitions as ``readings``; changelog partition
``p`` holds the state of input partition ``p`` as a sequence of *deltas* (see
:mod:`tables.partition_state`), with a full *snapshot* now and then so recovery never replays
the whole history.

A delta may be larger than one Kafka record, so it is written as ``parts`` records sharing an
``id``; recovery applies a delta only once it has seen all its parts, so a delta cut short by a
crash is ignored (its input records are processed again). Every record carries ``base``: the
changelog offset where the writer's latest complete snapshot starts. Recovery reads the last
record, jumps to its ``base`` and reads forward to the high watermark reported by *fetch*
responses (``ListOffsets`` under-reports the end on the local broker and is only used as a
starting hint).

Why this is exact without transactions: a delta holds full values, and applying it is
idempotent on any state between its ``from`` and ``to`` offsets, so a delta written twice, or
by a worker that had already lost the partition, cannot double-count (and one of that worker
written after an idle close of its successor, at the same offsets, is ignored by its older
idle floor: PartitionState.apply_delta); the input offset to resume from is stored with the
state, not taken from the consumer group.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

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

_ROW_LISTS = ("windows", "removed", "latest", "latest_removed", "sliding", "sliding_removed")


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
            whole[name] = [row for p in ordered for row in p[name]]
        return Delta.from_json(whole)


@dataclass(frozen=True, slots=True)
class EncodedDelta:
    """A delta serialised into its record values, ready to send."""

    partition: int
    to_offset: int
    snapshot: bool
    values: list[bytes]


class ChangelogWriter:
    """Writes one worker's deltas; remembers per partition where the last snapshot starts."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self._writer_id = uuid.uuid4().hex[:12]
        self._sequence = 0
        self._base: dict[int, int] = {}
        self._bytes_since_snapshot: dict[int, int] = {}
        self._snapshot_bytes: dict[int, int] = {}
        self._snapshot_at: dict[int, float] = {}

    def adopt(self, partition: int, base: int) -> None:
        """Continue from a recovered partition whose latest snapshot starts at ``base``."""
        self._base[partition] = base
        self._bytes_since_snapshot[partition] = 0
        self._snapshot_bytes.setdefault(partition, 0)
        self._snapshot_at[partition] = float("-inf")  # the recovered snapshot's age is unknown

    def forget(self, partition: int) -> None:
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
        return EncodedDelta(partition, delta.to_offset, delta.snapshot, values)

    async def send(self, encoded: EncodedDelta) -> list[asyncio.Future]:
        """Queue an encoded delta's records; await the returned futures for the broker's acks.

        Deltas of one partition must be sent in the order they were encoded.
        """
        partition = encoded.partition
        futures = [
            await self.producer.send(self.topic, value=value, partition=partition)
            for value in encoded.values
        ]
        if encoded.snapshot:
            futures[0].add_done_callback(lambda fut: self._snapshot_written(partition, fut))
        return futures

    def _snapshot_written(self, partition: int, future: asyncio.Future) -> None:
        # Only later records point at the snapshot, and only once its first part is stored;
        # recovery then also needs the rest of its parts, which come before any later delta.
        if not future.cancelled() and future.exception() is None and partition in self._base:
            self._base[partition] = future.result().offset


async def recover_partition(
    kafka_options: Mapping[str, Any],
    topic: str,
    partition: int,
    specs: tuple[WindowSpec, ...],
    grace_us: int,
    progress_every: float = 2.0,
) -> tuple[PartitionState | None, int]:
    """Rebuild one partition's state from the changelog, up to the fetch high watermark.

    Returns ``(state, base)``: ``state`` is None when the changelog partition is empty (the
    partition was never processed); ``base`` is where its latest snapshot starts (-1: none).
    ``kafka_options`` are the clients' connection options
    (:func:`pulse.kafka_clients.client_options`).
    """
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(
        **kafka_options,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        start = (await consumer.beginning_offsets([tp]))[tp]
        end_hint = (await consumer.end_offsets([tp]))[tp]
        if end_hint <= start:
            return None, -1
        # The hint may stop at the first record of the last batch + 1: read from there on.
        consumer.seek(tp, end_hint - 1)
        last_value = None
        async for record in _read_to_end(consumer, tp):
            last_value = record.value
        if last_value is None:
            return None, -1
        base = orjson.loads(last_value)["base"]
        consumer.seek(tp, max(base, start))
        state = PartitionState(specs, grace_us)
        assembler = DeltaAssembler()
        began = last_report = time.monotonic()
        records = applied = 0
        async for record in _read_to_end(consumer, tp):
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
                    consumer.highwater(tp),
                )
        state.finish_recovery()
        log.info(
            "recovered %s[%d] in %.2fs: %d records, %d deltas applied, %d open windows, "
            "resuming input at offset %d",
            topic,
            partition,
            time.monotonic() - began,
            records,
            applied,
            state.open_windows,
            state.next_offset,
        )
        return state, base
    finally:
        await consumer.stop()


async def _read_to_end(consumer: AIOKafkaConsumer, tp: TopicPartition) -> AsyncIterator[Any]:
    """Yield records until the position reaches the high watermark of a fetch response."""
    while True:
        batches = await consumer.getmany(tp, timeout_ms=500)
        for record in batches.get(tp, ()):
            yield record
        highwater = consumer.highwater(tp)
        if highwater is not None and await consumer.position(tp) >= highwater:
            return
