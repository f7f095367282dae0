"""One fetch of a partition's records into its state: each record applied or rejected, once.

Records are taken in offset order and those below the state's position (already in a recovered
state) are skipped, so the state depends only on the records. A record that is no valid
reading, would put too many tag values in use, or is late for every window, goes to the
caller's ``reject`` and only moves the position past it; so does one whose parse raises
unexpectedly: no record stops its partition.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from models.reading import Rejected, parse_reading
from tables.partition_state import PartitionState

log = logging.getLogger(__name__)


def process_records(
    state: PartitionState,
    records: list[Any],
    max_bytes: int,
    max_future_us: int,
    reject: Callable[[Any, str, str], None],
) -> None:
    """Apply one fetch of a partition's records (``offset``, ``key``, ``value``,
    ``timestamp``) to its state in offset order; a record that is no valid reading (see
    models.reading.parse_reading: ``max_bytes`` and ``max_future_us`` are two of its rules),
    would put too many tag values in use (PartitionState.apply), or is late for every window,
    goes to ``reject(record, reason, detail)`` and nothing else.

    The common readings go through in batches (PartitionState.apply_records); each record
    it leaves is parsed and applied here, and the batch resumes after it.
    """
    apply_records, apply = state.apply_records, state.apply
    end = len(records)
    at = apply_records(records, 0, max_bytes, max_future_us)
    while at < end:
        record = records[at]
        at += 1
        offset = record.offset
        if offset >= state.next_offset:  # else already in the recovered state
            try:
                reading = parse_reading(
                    record.key, record.value, record.timestamp, max_bytes, max_future_us
                )
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
                try:
                    applied = apply(reading, offset)
                except Rejected as rejected:  # too many tag values: nothing else changed
                    state.skip(offset)
                    reject(record, rejected.reason, rejected.detail)
                    applied = True
                if not applied:
                    reject(
                        record,
                        "late",
                        f"event time {_iso(reading.t_us)} is before the partition's watermark "
                        f"{_iso(state.watermark)}: every window it belongs to has closed",
                    )
        at = apply_records(records, at, max_bytes, max_future_us)


def _iso(t_us: int) -> str:
    try:
        return datetime.fromtimestamp(t_us / 1_000_000, UTC).isoformat()
    except (OverflowError, ValueError, OSError):
        return "none"
