"""The records Pulse's Kafka consumers fetch, built a batch at a time in C.

aiokafka 0.14 turns every fetched record into a ``ConsumerRecord`` dataclass through Python
code, about a microsecond each, which was a fifth of the benchmark worker's busy time (the
readings, and the aggregates topic its two writers read back). :func:`install` makes every
aiokafka consumer of the process build them as :class:`KafkaRecord` instead: a NamedTuple with
the same fields in the same order, the same values (tests/pulse/test_kafka_records.py holds
both equal on every kind of batch, aborted transactions and control batches included), made a
batch at a time by ``batch_records`` (tables/_native.py: C, or its Python definition).

Only the records change: the fetch positions, the read-committed filtering and the CRC
checks are aiokafka's own steps, repeated here around the one call. pyproject.toml pins
aiokafka to the version this module repeats them from.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import aiokafka.consumer.fetcher as aiokafka_fetcher
from aiokafka import errors

from tables._native import batch_records


class KafkaRecord(NamedTuple):
    """One fetched record: aiokafka's ``ConsumerRecord`` fields, as an immutable tuple."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    checksum: int | None
    serialized_key_size: int
    serialized_value_size: int
    headers: Sequence[tuple[str, bytes]]


class BatchPartitionRecords(aiokafka_fetcher.PartitionRecords):
    """aiokafka's records of one fetched partition, each batch's records made in one call.

    Without key or value deserializers (Pulse's consumers have none) every record is a
    :class:`KafkaRecord`; with them, aiokafka's own record building runs unchanged."""

    def _unpack_records(self) -> Iterator[Any]:
        if self._key_deserializer is not None or self._value_deserializer is not None:
            yield from super()._unpack_records()
            return
        tp = self._tp
        topic, partition = tp.topic, tp.partition
        records = self._records
        while records.has_next():
            next_batch = records.next_batch()
            if self._check_crcs and not next_batch.validate_crc():
                raise errors.CorruptRecordException(f"Invalid CRC - {tp}")
            if (
                self._isolation_level == aiokafka_fetcher.READ_COMMITTED
                and next_batch.producer_id is not None
            ):
                self._consume_aborted_up_to(next_batch.base_offset)
                if next_batch.is_control_batch and self._contains_abort_marker(next_batch):
                    self._aborted_producers.discard(next_batch.producer_id)
                if (
                    next_batch.is_transactional
                    and next_batch.producer_id in self._aborted_producers
                ):
                    self.next_fetch_offset = next_batch.next_offset
                    continue
            if next_batch.is_control_batch:
                self.next_fetch_offset = next_batch.next_offset
                continue
            # Each record is handed out with the position after it, as aiokafka does: a
            # getmany that stops within the batch (max_records) resumes at the next one.
            for record in batch_records(
                next_batch, self.next_fetch_offset, topic, partition, KafkaRecord
            ):
                self.next_fetch_offset = record[2] + 1
                yield record
            self.next_fetch_offset = next_batch.next_offset


def install() -> None:
    """Make every aiokafka consumer of this process build its records with
    :class:`BatchPartitionRecords` from its next fetch on (idempotent)."""
    aiokafka_fetcher.PartitionRecords = BatchPartitionRecords
