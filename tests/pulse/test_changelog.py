"""encode_parts / DeltaAssembler: deltas split into changelog records and joined back."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse.changelog import MAX_RECORD_BYTES, ROWS_PER_RECORD, DeltaAssembler, encode_parts
from tables.aggregators import Summary
from tables.partition_state import Delta, PartitionState
from tables.windows import parse_windows


def base_delta() -> Delta:
    """A real (empty) delta, so the test follows the Delta's fields as they evolve."""
    state = PartitionState(parse_windows("10s"), 0, next_offset=40)
    state.skip(41)
    return state.drain().delta


def window_row(i: int, tag: str = "") -> list[Any]:
    state = Summary.initialize(i, float(i), {"site": tag} if tag else None)
    return [f"dev-{i}", "temperature", "10s", i * 10_000_000, state]


def delta_with(
    windows: int = 0, removed: int = 0, latest: int = 0, gone: int = 0, tag: str = ""
) -> Delta:
    return dataclasses.replace(
        base_delta(),
        windows=[window_row(i, tag) for i in range(windows)],
        removed=[[f"dev-{i}", "m", "10s", i] for i in range(removed)],
        latest=[[f"dev-{i}", "m", i, i / 2] for i in range(latest)],
        latest_removed=[[f"dev-{i}", "m"] for i in range(gone)],
    )


def as_json(delta: Delta) -> dict[str, Any]:
    """What a delta reads back as (sketch keys become strings in JSON)."""
    return orjson.loads(orjson.dumps(delta.to_json(), option=orjson.OPT_NON_STR_KEYS))


def assemble(values: list[bytes]) -> list[Delta]:
    assembler = DeltaAssembler()
    out = []
    for value in values:
        delta = assembler.add(value)
        if delta is not None:
            out.append(delta)
    return out


def test_small_delta_is_one_record_with_header() -> None:
    delta = delta_with(windows=3, removed=2, latest=3, gone=1)
    (value,) = encode_parts(delta, "w1-7", 123)
    doc = orjson.loads(value)
    assert doc["id"] == "w1-7"
    assert doc["base"] == 123
    assert (doc["part"], doc["parts"]) == (0, 1)
    assert (doc["from"], doc["to"]) == (40, 42)
    assert {k: v for k, v in doc.items() if k not in {"id", "base", "part", "parts"}} == as_json(
        delta
    )
    assert assemble([value])[0].to_json() == as_json(delta)


def test_empty_delta_is_one_record() -> None:
    (value,) = encode_parts(base_delta(), "x", -1)
    (delta,) = assemble([value])
    assert delta.empty
    assert (delta.from_offset, delta.to_offset) == (40, 42)


def test_split_by_rows() -> None:
    count = 2 * ROWS_PER_RECORD + 500
    delta = delta_with(windows=ROWS_PER_RECORD + 10, removed=ROWS_PER_RECORD - 10, latest=500)
    values = encode_parts(delta, "w-1", 5)
    docs = [orjson.loads(v) for v in values]
    assert [(d["part"], d["parts"]) for d in docs] == [(0, 3), (1, 3), (2, 3)]
    sizes = [
        sum(len(d[name]) for name in ("windows", "removed", "latest", "latest_removed"))
        for d in docs
    ]
    assert sizes == [ROWS_PER_RECORD, ROWS_PER_RECORD, 500]
    assert sum(sizes) == count
    assert all(d["id"] == "w-1" and d["base"] == 5 and d["to"] == 42 for d in docs)
    (whole,) = assemble(values)
    assert whole.to_json() == as_json(delta)


def test_split_by_bytes_for_large_tag_values() -> None:
    tag = "x" * 150_000
    delta = delta_with(windows=9, latest=2, tag=tag)
    values = encode_parts(delta, "w-2", 0)
    assert len(values) > 1
    assert all(len(v) <= MAX_RECORD_BYTES for v in values)
    docs = [orjson.loads(v) for v in values]
    assert [d["part"] for d in docs] == list(range(len(values)))
    # the rows keep their order across the parts
    assert [row[0] for d in docs for row in d["windows"]] == [f"dev-{i}" for i in range(9)]
    (whole,) = assemble(values)
    assert whole.to_json() == as_json(delta)


def test_a_single_row_larger_than_the_limit_is_not_split() -> None:
    delta = delta_with(windows=3, tag="y" * (MAX_RECORD_BYTES + 10))
    values = encode_parts(delta, "w-3", 0)
    assert len(values) == 3
    assert all(len(orjson.loads(v)["windows"]) == 1 for v in values)
    (whole,) = assemble(values)
    assert whole.to_json() == as_json(delta)


def test_incomplete_delta_is_ignored() -> None:
    big = delta_with(windows=ROWS_PER_RECORD * 2 + 1)
    small = delta_with(latest=1)
    parts = encode_parts(big, "a-1", 0)
    assert len(parts) == 3
    assert assemble(parts[:2]) == []
    results = assemble([parts[0], parts[2], *encode_parts(small, "a-2", 0)])
    assert [d.to_json() for d in results] == [as_json(small)]


def test_a_part_written_twice_does_not_complete_a_delta() -> None:
    """Without transactions a retried send can store a part twice; parts are told apart by
    number, so two copies of part 0 never pass for a whole 2-part delta."""
    delta = delta_with(windows=ROWS_PER_RECORD + 1)
    first, second = encode_parts(delta, "a-1", 0)
    assert assemble([first, first]) == []
    results = assemble([first, first, second])
    assert [len(d.windows) for d in results] == [ROWS_PER_RECORD + 1]
    assert [d.to_json() for d in results] == [as_json(delta)]


@functools.cache
def two_deltas() -> tuple[Delta, Delta, list[bytes], dict[str, Any], dict[str, Any]]:
    one = delta_with(windows=ROWS_PER_RECORD * 2 + 5, latest=3)
    two = delta_with(removed=ROWS_PER_RECORD + 1, gone=ROWS_PER_RECORD)
    parts = encode_parts(one, "w-1", 0) + encode_parts(two, "w-2", 0)
    return one, two, parts, as_json(one), as_json(two)


@settings(max_examples=60, deadline=None)
@given(order=st.permutations(list(range(6))))
def test_two_deltas_in_any_interleaving(order: list[int]) -> None:
    _, _, parts, one_json, two_json = two_deltas()
    assert len(parts) == 6
    shuffled = [parts[i] for i in order]
    results = assemble(shuffled)
    # each delta comes out once, when its last part arrives
    last_of_one = max(order.index(i) for i in range(3))
    last_of_two = max(order.index(i) for i in range(3, 6))
    expected = [one_json, two_json]
    if last_of_two < last_of_one:
        expected.reverse()
    assert [d.to_json() for d in results] == expected


@settings(max_examples=50, deadline=None)
@given(order=st.permutations(list(range(6))), missing=st.integers(0, 2))
def test_interleaved_with_one_delta_incomplete(order: list[int], missing: int) -> None:
    _, _, parts, _, two_json = two_deltas()
    shuffled = [parts[i] for i in order if i != missing]
    assert [d.to_json() for d in assemble(shuffled)] == [two_json]


def test_a_snapshot_is_due_after_assignment_then_after_the_floor_or_twice_its_size(
    monkeypatch: Any,
) -> None:
    # bytes of deltas since the last snapshot:  0 ─────── threshold ───────▶
    #                                            not due  │  due
    # threshold = max(SNAPSHOT_MIN_BYTES, 2 x the last snapshot's size)
    from pulse import changelog

    writer = changelog.ChangelogWriter(None, "state")  # no producer: it never sends here
    writer.adopt(3, -1)
    assert writer.snapshot_due(3)  # once after each assignment
    snapshot = dataclasses.replace(delta_with(windows=200), snapshot=True)
    small = delta_with(latest=20)

    def fill_until_due(threshold: int) -> int:
        written = 0
        while not writer.snapshot_due(3):
            assert written <= threshold
            written += sum(len(v) for v in writer.encode(3, small).values)
            assert writer.snapshot_due(3) == (written > threshold)
        return written

    snapshot_size = sum(len(v) for v in writer.encode(3, snapshot).values)
    assert not writer.snapshot_due(3)
    monkeypatch.setattr(changelog, "SNAPSHOT_MIN_BYTES", snapshot_size)  # below 2 x snapshot
    assert fill_until_due(2 * snapshot_size) > 2 * snapshot_size

    writer.encode(3, snapshot)
    monkeypatch.setattr(changelog, "SNAPSHOT_MIN_BYTES", 5 * snapshot_size)  # above it
    assert fill_until_due(5 * snapshot_size) > 5 * snapshot_size
