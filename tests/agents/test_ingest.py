"""process_records and PartitionState.apply_records: a fetch's records into a partition's state.

The batch path (tables/_speedups.c, apply_common) must leave exactly the state, and reject
exactly the records with exactly the reasons, that the record-by-record definition does:
``parse_reading`` and ``PartitionState.apply`` for each record, as the worker did before it
had the batch path (``one_by_one`` below).
"""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.ingest import process_records
from models.reading import VALID_NAMES, Rejected, parse_reading
from tables.partition_state import PartitionState
from tables.windows import parse_windows
from tests.helpers.records import MAX_FUTURE_US, T0, reading, record, records_

S = 1_000_000
MAX_BYTES = 4096
Rejection = tuple[int, str, str]


def one_by_one(state: PartitionState, records: list[ConsumerRecord]) -> list[Rejection]:
    """The definition: each record parsed and applied on its own."""
    rejected = []
    for r in records:
        if r.offset < state.next_offset:
            continue
        try:
            parsed = parse_reading(r.key, r.value, r.timestamp, MAX_BYTES, MAX_FUTURE_US)
        except Rejected as exc:
            state.skip(r.offset)
            rejected.append((r.offset, exc.reason, exc.detail))
            continue
        if not state.apply(parsed, r.offset):
            rejected.append((r.offset, "late", ""))
    return rejected


def batched(state: PartitionState, records: list[ConsumerRecord]) -> list[Rejection]:
    rejected: list[Rejection] = []

    def reject(r: Any, reason: str, detail: str) -> None:
        rejected.append((r.offset, reason, "" if reason == "late" else detail))

    process_records(state, records, MAX_BYTES, MAX_FUTURE_US, reject)
    return rejected


def everything(state: PartitionState) -> dict[str, Any]:
    """Every attribute that apply and apply_records change, comparable with ==."""
    return {
        "next_offset": state.next_offset,
        "max_t": state.max_t,
        "watermark": state.watermark,
        "windows": state.windows,
        "latest": state.latest,
        "ends": state._ends,  # the heap's list: the same pushes in the same order
        "by_end": state._by_end,
        "newest": state._newest,
        "open_per_key": state._open_per_key,
        "changed": state._changed,
        "latest_changed": state._latest_changed,
        "views_changed": state._views_changed,
        "sliding": state.sliding,
        "sliding_changed": state._sliding_changed,
    }


def test_apply_records_stops_at_each_record_it_leaves_to_the_caller() -> None:
    VALID_NAMES.clear()
    VALID_NAMES.update(d1="d1", m="m")
    state = PartitionState(parse_windows("10s"), 0)
    records = [
        reading(0, ts=T0 + 1),
        reading(1, ts=T0 + 2),
        reading(2, ts=T0 + 3, tags={"site": "x"}),  # tags: not the common reading
        reading(3, ts=T0 + 4),
        reading(4, device="d2", ts=T0 + 5),  # a name not validated yet
        reading(5, ts=T0 + 30),
        reading(6, ts=T0 + 5),  # late for its only window (W = T0 + 30 s)
        record(7, b"{not json"),
    ]
    assert state.apply_records(records, 0, MAX_BYTES, MAX_FUTURE_US) == 2
    assert (state.next_offset, state.max_t) == (2, round((T0 + 2) * S))
    assert state.apply_records(records, 3, MAX_BYTES, MAX_FUTURE_US) == 4
    assert state.apply_records(records, 5, MAX_BYTES, MAX_FUTURE_US) == 6
    assert state.watermark == round((T0 + 30) * S)
    assert state.apply_records(records, 7, MAX_BYTES, MAX_FUTURE_US) == 7
    assert state.apply_records(records, 8, MAX_BYTES, MAX_FUTURE_US) == 8
    assert state.next_offset == 6  # the records left (3, 5 and 7) were not applied
    first = state.windows[("d1", "m", 0, round(T0 * S))]
    assert first[:2] == [3, 1.5 * 3]  # offsets 0, 1 and 3 (not 2, left to the caller)


def test_apply_records_skips_records_already_applied() -> None:
    VALID_NAMES.update(d1="d1", m="m")
    state = PartitionState(parse_windows("10s"), 0, next_offset=10)
    records = [reading(8), reading(9), reading(10, value=2.0)]
    assert state.apply_records(records, 0, MAX_BYTES, MAX_FUTURE_US) == 3
    assert state.windows[("d1", "m", 0, round(T0 * S))][:2] == [1, 2.0]
    assert state.next_offset == 11


def test_process_records_rejects_with_the_reason_and_applies_the_rest() -> None:
    VALID_NAMES.clear()
    state = PartitionState(parse_windows("10s,1m"), 0)
    records = [
        reading(0, ts=T0 + 1),
        record(1, None),
        reading(2, ts=T0 + 31, value=4),
        reading(3, ts=T0 + 2),  # its 10 s window has closed, its minute has not
        reading(4, ts=T0 - 1),  # late for both
        record(5, b"[1]"),
        reading(6, ts=T0 + 32, value=2.5),
    ]
    reasons = [(offset, reason) for offset, reason, _ in batched(state, records)]
    assert reasons == [(1, "invalid_json"), (4, "late"), (5, "invalid_reading")]
    assert state.next_offset == 7
    minute = state.windows[("d1", "m", 1, round(T0 * S))]
    assert minute[:2] == [4, 1.5 + 4.0 + 1.5 + 2.5]  # offsets 0, 2, 3 and 6
    assert state.windows[("d1", "m", 0, round((T0 + 30) * S))][:2] == [2, 4.0 + 2.5]


def test_a_ts_whose_microseconds_overflow_is_rejected_not_raised() -> None:
    # 1e303 s is beyond any float in microseconds: round() of it once raised OverflowError
    # out of the worker's loop, on every restart (a poison record).
    VALID_NAMES.clear()
    state = PartitionState(parse_windows("10s"), 0)
    records = [reading(0, ts=T0 + 1), reading(1, ts=1e303), reading(2, ts=T0 + 2, value=3.0)]
    assert batched(state, records) == [
        (1, "invalid_reading", "'ts' is outside 1970-01-01 .. 2262-04-11 (InfluxDB's range)")
    ]
    assert state.next_offset == 3
    assert state.windows[("d1", "m", 0, round(T0 * S))][:2] == [2, 1.5 + 3.0]


def test_an_unexpected_error_of_the_parse_dead_letters_the_record_and_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A bug in the parse for some input must not stop the partition on that record forever:
    # the record is dead-lettered with the error, the rest applied. (Tags: the Python path.)
    import agents.ingest

    def parse_with_a_bug(key: Any, value: Any, ts_ms: Any, max_bytes: int, future: int) -> Any:
        if b"bug" in value:
            raise ZeroDivisionError("division by zero")
        return parse_reading(key, value, ts_ms, max_bytes, future)

    monkeypatch.setattr(agents.ingest, "parse_reading", parse_with_a_bug)
    VALID_NAMES.clear()
    state = PartitionState(parse_windows("10s"), 0)
    records = [reading(0, ts=T0 + 1), reading(1, ts=T0, tags={"bug": "x"}), reading(2, ts=T0 + 2)]
    detail = "the reading could not be parsed: ZeroDivisionError: division by zero"
    assert batched(state, records) == [(1, "invalid_reading", detail)]
    assert state.next_offset == 3
    assert state.windows[("d1", "m", 0, round(T0 * S))][:2] == [2, 3.0]


def test_an_error_inside_the_batch_keeps_the_offsets_of_the_records_applied() -> None:
    VALID_NAMES.update(d1="d1", m="m")
    state = PartitionState(parse_windows("10s"), 0)
    records: list[Any] = [reading(0), reading(1), object()]
    with pytest.raises(AttributeError):
        state.apply_records(records, 0, MAX_BYTES, MAX_FUTURE_US)
    assert state.next_offset == 2
    assert state.windows[("d1", "m", 0, round(T0 * S))][0] == 2


@settings(max_examples=300, deadline=None)
@given(
    windows=st.sampled_from(["10s", "10s,1m", "30s/10s", "10s,20s/5s", "10s,sliding:30s"]),
    grace_s=st.sampled_from([0, 2, 5]),
    records=records_(),
    chunk=st.integers(1, 25),
)
def test_batches_match_the_record_by_record_definition(
    windows: str, grace_s: int, records: list[ConsumerRecord], chunk: int
) -> None:
    specs = parse_windows(windows)
    VALID_NAMES.clear()
    expected = PartitionState(specs, grace_s * S)
    expected_rejected = one_by_one(expected, records)
    VALID_NAMES.clear()  # the batch path meets the names unvalidated too
    state = PartitionState(specs, grace_s * S)
    rejected = []
    for begin in range(0, len(records), chunk):
        rejected += batched(state, records[begin : begin + chunk])
    assert rejected == expected_rejected
    assert everything(state) == everything(expected)
    assert state.drain() == expected.drain()


def test_every_key_shares_the_one_str_of_each_name() -> None:
    VALID_NAMES.clear()
    state = PartitionState(parse_windows("10s,1m"), 0)
    records = [reading(offset, ts=T0 + offset * 11) for offset in range(4)]
    records.insert(2, reading(2, ts=T0 + 22, tags={"site": "x"}))  # through parse_reading
    for offset, r in enumerate(records):
        r.offset = offset
    assert batched(state, records) == []
    device, metric = VALID_NAMES["d1"], VALID_NAMES["m"]
    keys = [*state.windows, *state.latest, *state._open_per_key]
    assert len(keys) == 5 + 1 + 1  # four 10 s windows and one minute; one latest; one pair
    assert all(key[0] is device and key[1] is metric for key in keys)


def test_a_reading_from_a_runaway_clock_is_dead_lettered_and_makes_nothing_late() -> None:
    # One reading stamped ten years ahead once moved its partition's watermark there, and
    # every later reading of every device of the partition was late. Now it is rejected for
    # being more than PULSE_MAX_FUTURE ahead of its record's timestamp, on the batch path
    # (the compact shape, through C) as on parse_reading's (tags), and moves nothing.
    VALID_NAMES.clear()
    ten_years = 10 * 365 * 86_400
    records = [reading(0, ts=T0 + 1), reading(1, ts=T0 + 1 + ten_years)]
    records.append(reading(2, ts=T0 + 2 + ten_years, tags={"site": "x"}))
    stamp = round((T0 + 3) * 1000)  # the broker's clock, a few seconds after the readings
    records += [
        reading(offset, device=f"d{offset % 7}", ts=T0 + 3 + offset / 1000, timestamp=stamp)
        for offset in range(3, 2003)
    ]
    state = PartitionState(parse_windows("10s,1m"), 5 * S)
    rejected = batched(state, records)
    assert [(offset, reason) for offset, reason, _ in rejected] == [
        (1, "invalid_reading"),
        (2, "invalid_reading"),
    ]
    assert rejected[0][2] == (
        "'ts' 2036-11-19T02:44:01+00:00 is 315359801 s ahead of its record's timestamp "
        "2026-11-22T02:47:20+00:00: more than PULSE_MAX_FUTURE (30 s)"
    )
    assert state.next_offset == 2003
    assert state.max_t == round((T0 + 3 + 2002 / 1000) * S)
    assert sum(w[0] for k, w in state.windows.items() if k[2] == 1) == 2001  # none late
    VALID_NAMES.clear()
    expected = PartitionState(parse_windows("10s,1m"), 5 * S)
    assert one_by_one(expected, records) == rejected
    assert everything(state) == everything(expected)


def test_a_reading_with_one_tag_value_too_many_is_dead_lettered_and_the_rest_applied() -> None:
    VALID_NAMES.clear()
    state = PartitionState(parse_windows("10s"), 0, max_tag_values=2)
    records = [
        reading(0, ts=T0 + 1, tags={"site": "a"}),
        reading(1, ts=T0 + 2, tags={"site": "b"}),
        reading(2, ts=T0 + 3, tags={"site": "c"}),  # a third value in use
        reading(3, ts=T0 + 4),
        reading(4, ts=T0 + 5, tags={"site": "a"}),
    ]
    rejected = batched(state, records)
    assert [(offset, reason) for offset, reason, _ in rejected] == [(2, "too_many_tag_values")]
    assert rejected[0][2].startswith("tag 'site' has 2 values in use in this partition")
    assert state.next_offset == 5
    assert state.windows[("d1", "m", 0, round(T0 * S))][:2] == [4, 4 * 1.5]
