"""The bridge's round encoding, Python definitions (pulse/bridge/_encode.c is the same in C).

A round holds, per partition of a topic, its records encoded as Kafka's record format v2
(``Records`` in a record batch: length, attributes, timestamp delta, offset delta, key,
value, headers; zigzag varints) in a ``bytearray``, and three numbers in ``stats``: the
count, the first record's timestamp (the batch's base timestamp) and the greatest.
:func:`batch` wraps a partition's records into a record batch (magic 2, no compression,
no producer id), as one ProduceRequest carries it.

:func:`encode_entries` converts a stream's entries of the commonest kind (what
:meth:`models.entries.EntryReader._common` converts: it makes the same value) and appends
their records, until an entry it cannot convert (the caller converts it with the
definition, :func:`models.entries.entry_record`, and appends it with :func:`append_record`)
or a full partition.
"""

from __future__ import annotations

import struct
from typing import Any

from aiokafka.record.util import calc_crc32c

from models.entries import common_record

STREAM_HEADER = b"pulse-stream"
ENTRY_HEADER = b"pulse-entry"
LEASE_HEADER = b"pulse-lease"

DONE = 0
SLOW = 1
"""The entry at the returned index needs the definition (or is no valid reading)."""
FULL = 2
"""The entry at the returned index would make its partition's records too large."""

_HEADER = struct.Struct(">qiibIhiqqqhii")
HEADER_SIZE = _HEADER.size  # 61


def _varint(value: int, out: bytearray) -> None:
    """A zigzag varint (Kafka's varint and varlong)."""
    zigzag = (value << 1) ^ (value >> 63)
    while zigzag > 0x7F:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)


def record_bytes(
    offset_delta: int, timestamp_delta: int, key: bytes, value: bytes, headers: tuple[bytes, ...]
) -> bytes:
    """One record (its length first); ``headers``: the values of the stream, entry and lease
    headers."""
    body = bytearray(b"\x00")  # attributes
    _varint(timestamp_delta, body)
    _varint(offset_delta, body)
    _varint(len(key), body)
    body += key
    _varint(len(value), body)
    body += value
    _varint(3, body)
    for name, header in zip((STREAM_HEADER, ENTRY_HEADER, LEASE_HEADER), headers, strict=True):
        _varint(len(name), body)
        body += name
        _varint(len(header), body)
        body += header
    out = bytearray()
    _varint(len(body), out)
    return bytes(out + body)


def append_record(
    buffers: list[bytearray],
    stats: list[int],
    partition: int,
    key: bytes,
    value: bytes,
    timestamp_ms: int,
    headers: tuple[bytes, bytes, bytes],
    limit: int,
) -> bool:
    """Append one record to ``partition``'s records; False (nothing appended) when they
    would pass ``limit`` bytes (a partition's first record always goes)."""
    base = 3 * partition
    count = stats[base]
    first = timestamp_ms if count == 0 else stats[base + 1]
    encoded = record_bytes(count, timestamp_ms - first, key, value, headers)
    buffer = buffers[partition]
    if count and HEADER_SIZE + len(buffer) + len(encoded) > limit:
        return False
    buffer += encoded
    stats[base] = count + 1
    stats[base + 1] = first
    if count == 0 or timestamp_ms > stats[base + 2]:
        stats[base + 2] = timestamp_ms
    return True


def encode_entries(
    entries: list[Any],
    start: int,
    stop: int,
    names: dict[bytes, bytes],
    tags: dict[tuple[bytes, ...], bytes],
    max_bytes: int,
    max_future_us: int,
    partitions: dict[bytes, int],
    partition_count: int,
    buffers: list[bytearray],
    stats: list[int],
    stream: bytes,
    lease: bytes,
    limit: int,
    ids: list[bytes],
) -> tuple[int, int]:
    """Encode ``entries[start:stop]`` (``[id, fields]`` each) of the commonest kind
    (:func:`models.entries.common_record` with ``names``, ``tags``, ``max_bytes`` and
    ``max_future_us``) into the readings topic's records (``partitions``: each device's
    partition, computed when missing), appending each id to ``ids``: ``(stop, DONE)``, else
    the index of the entry not encoded and why (:data:`SLOW`, :data:`FULL`)."""
    for index in range(start, min(stop, len(entries))):
        entry = entries[index]
        if not isinstance(entry, list) or len(entry) != 2:
            return index, SLOW
        entry_id, fields = entry
        made = common_record(entry_id, fields, names, tags, max_bytes, max_future_us)
        if made is None:
            return index, SLOW
        partition = partitions.get(made.key)
        if partition is None:
            partition = partitions[made.key] = murmur2_partition(made.key, partition_count)
        if not append_record(
            buffers,
            stats,
            partition,
            made.key,
            made.value,
            made.timestamp_ms,
            (stream, entry_id, lease),
            limit,
        ):
            return index, FULL
        ids.append(entry_id)
    return min(stop, len(entries)), DONE


def batch(records: bytes | bytearray, count: int, first_ms: int, max_ms: int) -> bytes:
    """A record batch of ``count`` records: magic 2, no compression, create time, no
    producer id or sequence; the CRC-32C over everything from the attributes on."""
    buffer = bytearray(HEADER_SIZE) + records
    seal(buffer, count, first_ms, max_ms)
    return bytes(buffer)


def seal(buffer: bytearray, count: int, first_ms: int, max_ms: int) -> None:
    """Make ``buffer``, :data:`HEADER_SIZE` bytes left for the header and ``count``
    records, a record batch (:func:`batch`) in place: its header written, nothing copied.
    (A round's buffers start with that room: its batches go out without a copy of their
    own.)"""
    _HEADER.pack_into(
        buffer,
        0,
        0,  # base offset: the broker assigns it
        len(buffer) - 12,
        -1,  # partition leader epoch
        2,  # magic
        0,  # CRC, below
        0,  # attributes
        count - 1,  # last offset delta
        first_ms,
        max_ms,
        -1,  # producer id
        -1,  # producer epoch
        -1,  # base sequence
        count,
    )
    with memoryview(buffer) as view:
        crc = calc_crc32c(view[21:])
    struct.pack_into(">I", buffer, 17, crc)


def murmur2_partition(key: bytes, partition_count: int) -> int:
    """Kafka's default partition of a key (murmur2, positive, modulo the count)."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partition_count
