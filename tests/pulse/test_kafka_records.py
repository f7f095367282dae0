"""pulse/kafka_records.py: the records and fetch positions aiokafka's own PartitionRecords gives.

Each case is a partition's fetched bytes as a broker sends them (record batches made by
aiokafka's batch builder: plain, compressed, transactional, and commit or abort control
batches), read from a fetch offset that may fall inside a batch, under both isolation levels.
aiokafka's class (the one pulse.kafka_records.install replaces) is the reference.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import pytest
from aiokafka.consumer.fetcher import READ_COMMITTED, READ_UNCOMMITTED
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import ConsumerRecord, TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse.kafka_records import BatchPartitionRecords, KafkaRecord

AIOKAFKA_RECORDS = BatchPartitionRecords.__bases__[0]
"""aiokafka's PartitionRecords (its module's name may already point to Pulse's)."""

TP = TopicPartition("readings", 3)
CONTROL = 0x20
"""The control bit of a record batch's attributes (Kafka's record batch format v2)."""


def batch_bytes(
    base_offset: int,
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]],
    *,
    compression: int = 0,
    producer_id: int = -1,
    control: bool = False,
) -> bytes:
    """One record batch as the broker stores it, its CRC valid."""
    transactional = producer_id >= 0
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression,
        is_transactional=int(transactional),
        producer_id=producer_id,
        producer_epoch=0 if transactional else -1,
        base_sequence=0 if transactional else -1,
        batch_size=1 << 20,
    )
    for delta, (key, value, headers) in enumerate(records):
        stamp = 1_700_000_000_000 + delta
        builder.append(delta, timestamp=stamp, key=key, value=value, headers=headers)
    data = bytearray(builder.build())
    data[0:8] = struct.pack(">q", base_offset)
    if control:
        attributes = struct.unpack_from(">h", data, 21)[0] | CONTROL
        struct.pack_into(">h", data, 21, attributes)
        struct.pack_into(">I", data, 17, calc_crc32c(bytes(data[21:])))
    return bytes(data)


def control_record(commit: bool) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """A transaction marker: key (version 0, type 1 commit / 0 abort), value (version, epoch)."""
    return struct.pack(">hh", 0, int(commit)), struct.pack(">hi", 0, 0), []


record_ = st.tuples(
    st.none() | st.binary(max_size=10),
    st.none() | st.binary(max_size=30),
    st.lists(st.tuples(st.text(max_size=4), st.binary(max_size=4)), max_size=2),
)
# A batch: plain, or one of transaction (producer id) 7 or 8, then possibly its marker.
batch_ = st.tuples(
    st.sampled_from(["plain", "txn-7", "txn-8", "commit-7", "abort-7", "commit-8", "abort-8"]),
    st.lists(record_, min_size=1, max_size=6),
    st.sampled_from([0, 1, 3, 4]),  # none, gzip, lz4, zstd
)


def fetched(
    batches: list[tuple[str, list[Any], int]],
) -> tuple[bytes, list[tuple[int, int]], list[int], list[int]]:
    """The batches' bytes at consecutive offsets; the aborted transactions the broker would
    send with them (producer id, first offset) for read-committed fetches; the offsets of the
    data records, and of those not in an aborted transaction."""
    data, offset, aborted = b"", 0, []
    open_offsets: dict[int, list[int]] = {}
    every: list[int] = []
    not_aborted: list[int] = []
    for kind, records, compression in batches:
        offsets = list(range(offset, offset + len(records)))
        if kind == "plain":
            data += batch_bytes(offset, records, compression=compression)
            every += offsets
            not_aborted += offsets
        elif kind.startswith("txn"):
            producer = int(kind[4:])
            open_offsets.setdefault(producer, []).extend(offsets)
            data += batch_bytes(offset, records, compression=compression, producer_id=producer)
            every += offsets
        else:
            producer = int(kind.split("-")[1])
            commit = kind.startswith("commit")
            ended = open_offsets.pop(producer, [])
            if commit:
                not_aborted += ended
            elif ended:
                aborted.append((producer, ended[0]))
            records = [control_record(commit)]
            data += batch_bytes(offset, records, producer_id=producer, control=True)
        offset += len(records)
    for still_open in open_offsets.values():  # not ended: not in the aborted list either
        not_aborted += still_open
    return data, aborted, every, sorted(not_aborted)


def read(cls: type, data: bytes, aborted: list[Any], fetch_offset: int, isolation: int) -> Any:
    """Every record the class gives, each with the fetch position right after it, and the
    position after the last."""
    records = cls(TP, MemoryRecords(data), list(aborted), fetch_offset, None, None, True, isolation)
    out = []
    for record in records:
        is_dataclass = isinstance(record, ConsumerRecord)
        fields = dataclasses.astuple(record) if is_dataclass else tuple(record)
        out.append((fields, records.next_fetch_offset))
    return out, records.next_fetch_offset


@settings(max_examples=300, deadline=None)
@given(
    batches=st.lists(batch_, min_size=1, max_size=6),
    into_first=st.integers(0, 5),
    committed=st.booleans(),
)
def test_the_records_and_positions_are_aiokafkas(
    batches: list[tuple[str, list[Any], int]], into_first: int, committed: bool
) -> None:
    # A broker answers a fetch from the batch that holds the fetch offset on.
    kind, first_records, _ = batches[0]
    fetch_at = 0 if kind[0] in "ca" else min(into_first, len(first_records) - 1)
    data, aborted, every, not_aborted = fetched(batches)
    isolation = READ_COMMITTED if committed else READ_UNCOMMITTED
    expected = read(AIOKAFKA_RECORDS, data, aborted, fetch_at, isolation)
    got = read(BatchPartitionRecords, data, aborted, fetch_at, isolation)
    assert got == expected
    # The reference itself: the data records from the fetch offset on, but those of aborted
    # transactions when reading committed; then the position after the last batch.
    visible = not_aborted if committed else every
    assert [fields[2] for fields, _ in expected[0]] == [o for o in visible if o >= fetch_at]
    total = sum(1 if kind[0] in "ca" else len(records) for kind, records, _ in batches)
    assert expected[1] == total


def test_each_record_is_a_kafka_record_with_aiokafkas_values() -> None:
    records = [(b"dev-1", b'{"v":1}', [("trace", b"x")]), (None, None, [])]
    data = batch_bytes(40, records)
    got = list(BatchPartitionRecords(TP, MemoryRecords(data), [], 41, None, None, True, 0))
    stamp = 1_700_000_000_001
    assert got == [KafkaRecord("readings", 3, 41, stamp, 0, None, None, None, -1, -1, ())]
    assert type(got[0]) is KafkaRecord


def test_a_corrupt_batch_is_refused_as_aiokafka_refuses_it() -> None:
    data = bytearray(batch_bytes(0, [(b"k", b"v", [])]))
    data[-1] ^= 0xFF
    for cls in (AIOKAFKA_RECORDS, BatchPartitionRecords):
        records = cls(TP, MemoryRecords(bytes(data)), [], 0, None, None, True, READ_UNCOMMITTED)
        with pytest.raises(CorruptRecordException, match="Invalid CRC - "):
            list(records)


def test_with_deserializers_aiokafka_builds_the_records() -> None:
    data = batch_bytes(0, [(b"k", b"v", [])])
    records = BatchPartitionRecords(
        TP, MemoryRecords(data), [], 0, bytes.upper, bytes.upper, True, READ_UNCOMMITTED
    )
    (record,) = list(records)
    assert type(record) is ConsumerRecord
    assert (record.key, record.value, record.serialized_value_size) == (b"K", b"V", 1)
