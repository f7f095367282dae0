"""The bound of tag values in use (PULSE_MAX_TAG_VALUES) and of tag keys (MAX_TAG_KEYS).

Each tag value makes new InfluxDB series, so a partition admits a reading only while its tags
keep at most ``max_tag_values`` values of each key in use (and at most 64 keys); a value is
in use until the watermark has passed its latest reading by the longest window. The registry
is state: kept in the changelog, so a state recovered from its deltas (or drained at other
moments) admits exactly the readings the uninterrupted one does.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.reading import Reading, Rejected
from pulse.changelog import DeltaAssembler, encode_parts
from tables.partition_state import MAX_TAG_KEYS, PartitionState
from tables.windows import parse_windows

S = 1_000_000
T0 = 1_795_315_440 * S


def reading(t_s: float, tags: dict[str, str] | None, device: str = "d1") -> Reading:
    return Reading(device, "m", 1.0, T0 + round(t_s * S), tags)


def outcome(state: PartitionState, record: Reading, offset: int) -> str:
    """What the worker makes of a valid reading: applied, late or rejected for its tags."""
    try:
        return "applied" if state.apply(record, offset) else "late"
    except Rejected as rejected:
        assert rejected.reason == "too_many_tag_values"
        state.skip(offset)
        return rejected.reason


def test_a_value_beyond_the_bound_is_rejected_and_changes_nothing() -> None:
    state = PartitionState(parse_windows("10s"), 0, max_tag_values=2)
    assert outcome(state, reading(1, {"site": "a", "line": "1"}), 0) == "applied"
    assert outcome(state, reading(2, {"site": "b"}), 1) == "applied"
    assert outcome(state, reading(3, {"site": "a"}), 2) == "applied"  # in use already
    windows = {k: list(v[:2]) for k, v in state.windows.items()}
    with pytest.raises(Rejected) as info:
        state.apply(reading(4, {"line": "2", "site": "c"}), 3)
    assert info.value.reason == "too_many_tag_values"
    assert info.value.detail == (
        "tag 'site' has 2 values in use in this partition (PULSE_MAX_TAG_VALUES); 'c' would "
        "be one more (each makes new InfluxDB series; a value is in use until the windows "
        "of its latest reading have closed)"
    )
    assert {k: list(v[:2]) for k, v in state.windows.items()} == windows  # nothing applied
    assert state.tag_values == {"site": {"a": T0 + 3 * S, "b": T0 + 2 * S}, "line": {"1": T0 + S}}
    assert state.next_offset == 4
    assert outcome(state, reading(5, {"line": "2"}), 4) == "applied"  # line has room
    assert outcome(state, reading(6, None), 5) == "applied"  # no tags: no bound


def test_a_value_stops_being_in_use_when_the_longest_window_of_its_reading_has_closed() -> None:
    # Windows 10s and 1m, grace 0: a value last seen at t is in use until W >= t + 60 s.
    state = PartitionState(parse_windows("10s,1m"), 0, max_tag_values=1)
    assert outcome(state, reading(1, {"site": "a"}), 0) == "applied"
    assert outcome(state, reading(60, {"site": "b"}, device="d2"), 1) == "too_many_tag_values"
    assert outcome(state, reading(61, None, device="d2"), 2) == "applied"  # W = t0 + 61 s
    assert outcome(state, reading(61.5, {"site": "b"}, device="d2"), 3) == "applied"
    assert state.tag_values == {"site": {"b": T0 + 61_500_000}}
    # The first value, seen again, is new again: one more than the bound while b is in use.
    assert outcome(state, reading(62, {"site": "a"}), 4) == "too_many_tag_values"


def test_an_idle_close_ends_the_use_of_values_too() -> None:
    state = PartitionState(parse_windows("10s"), 0, max_tag_values=1)
    assert outcome(state, reading(1, {"site": "a"}), 0) == "applied"
    assert outcome(state, reading(2, {"site": "b"}), 1) == "too_many_tag_values"
    state.advance_idle(T0 + 11 * S)  # every window of the first reading has closed
    assert outcome(state, reading(12, {"site": "b"}), 2) == "applied"


def test_a_late_reading_puts_no_value_in_use() -> None:
    state = PartitionState(parse_windows("10s"), 0, max_tag_values=1)
    assert outcome(state, reading(30, None), 0) == "applied"
    assert outcome(state, reading(1, {"site": "old"}), 1) == "late"
    assert state.tag_values == {}
    assert outcome(state, reading(31, {"site": "new"}), 2) == "applied"


def test_at_most_64_tag_keys_are_in_use() -> None:
    assert MAX_TAG_KEYS == 64
    state = PartitionState(parse_windows("10s"), 0, max_tag_values=1000)
    for offset in range(4):  # 4 readings of 16 keys each: 64 keys
        tags = {f"k{offset * 16 + i}": "v" for i in range(16)}
        assert outcome(state, reading(1 + offset, tags), offset) == "applied"
    with pytest.raises(Rejected) as info:
        state.apply(reading(5, {"k0": "v", "k64": "v"}), 4)
    assert info.value.detail == (
        "tag key 'k64' would be one more than the 64 tag keys in use in this partition "
        "(each makes new InfluxDB series)"
    )
    assert outcome(state, reading(6, {"k0": "w"}), 5) == "applied"  # a known key
    state.advance_idle(T0 + 15 * S)  # the first reading's keys are no longer in use
    assert outcome(state, reading(16, {"k64": "v"}), 6) == "applied"
    assert "k1" not in state.tag_values


def test_without_a_bound_nothing_is_kept() -> None:
    state = PartitionState(parse_windows("10s"), 0)
    for offset in range(50):
        assert outcome(state, reading(offset / 10, {"site": str(offset)}), offset) == "applied"
    assert state.tag_values == {}


# -- the same readings admitted after a recovery, whenever the drains happened ------------------

tag_sets = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["site", "line", "zone"]), st.sampled_from("abcdef"), min_size=1
    ),
)
streams = st.lists(
    st.tuples(st.integers(0, 400).map(lambda k: k * 250_000), tag_sets, st.sampled_from("xyz")),
    min_size=10,
    max_size=80,
)


def run(
    specs: str,
    grace_s: int,
    limit: int,
    stream: list[tuple[int, dict[str, str] | None, str]],
    drains: set[int],
    state: PartitionState | None = None,
) -> tuple[dict[int, str], list[tuple[int, list[bytes]]], dict[int, Any]]:
    """Outcomes by offset, the encoded deltas (a snapshot first) each with the offset it ends
    at, and the tag registry at the end of each delta."""
    if state is None:
        state = PartitionState(parse_windows(specs), grace_s * S, max_tag_values=limit)
    logged = [(state.next_offset, encode_parts(state.drain(snapshot=True).delta, "s", 0))]
    registries = {}
    outcomes = {}
    for offset in range(state.next_offset, len(stream)):
        t_us, tags, device = stream[offset]
        outcomes[offset] = outcome(state, Reading(device, "m", 1.0, T0 + t_us, tags), offset)
        if offset % 17 == 16:
            state.advance_idle(state.watermark + 5 * S)  # a quiet moment: an idle close
        if offset in drains:
            logged.append((offset + 1, encode_parts(state.drain().delta, f"d{offset}", 0)))
            registries[offset + 1] = {k: dict(v) for k, v in state.tag_values.items()}
    return outcomes, logged, registries


def recover(specs: str, grace_s: int, limit: int, logged: list[list[bytes]]) -> PartitionState:
    state = PartitionState(parse_windows(specs), grace_s * S, max_tag_values=limit)
    assembler = DeltaAssembler()
    for parts in logged:
        for value in parts:
            delta = assembler.add(value)
            if delta is not None:
                assert state.apply_delta(delta)
    state.finish_recovery()
    return state


@settings(max_examples=200, deadline=None)
@given(
    specs=st.sampled_from(["10s", "10s,1m", "30s/10s", "10s,sliding:20s"]),
    grace_s=st.sampled_from([0, 2]),
    limit=st.integers(1, 3),
    stream=streams,
    drains=st.sets(st.integers(0, 79)),
    other_drains=st.sets(st.integers(0, 79)),
    crash=st.integers(0, 80),
)
def test_a_recovered_state_admits_the_same_readings(
    specs: str,
    grace_s: int,
    limit: int,
    stream: list[tuple[int, dict[str, str] | None, str]],
    drains: set[int],
    other_drains: set[int],
    crash: int,
) -> None:
    outcomes, logged, registries = run(specs, grace_s, limit, stream, drains)
    # Drained at other moments: the same outcomes (no decision depends on when drains are).
    assert run(specs, grace_s, limit, stream, other_drains)[0] == outcomes
    # Recovered from the deltas that end at most at the crash, then on: the same outcomes,
    # from the same registry.
    state = recover(specs, grace_s, limit, [parts for end, parts in logged if end <= crash])
    start = state.next_offset
    assert state.tag_values == registries.get(start, {})
    resumed, _, _ = run(specs, grace_s, limit, stream, drains, state)
    assert resumed == {o: r for o, r in outcomes.items() if o >= start}
