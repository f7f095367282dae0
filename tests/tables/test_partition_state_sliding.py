"""Sliding windows against a brute-force reference written from the rules alone.

    ────(────────────────]────▶ event time
     t - SIZE            t = latest event time seen for the (device, metric)

A reading enters when its event time is in the key's window and after ``W - SIZE``; the key's
state is dropped once ``W >= t + 2 * SIZE``.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from models.reading import Reading
from tables.partition_state import PartitionState
from tables.windows import parse_windows

SIZE = 20_000_000
GRACE = 3_000_000


def brute_force(readings: list[tuple[str, int, float]]) -> dict[str, tuple[int, list[float]]]:
    """device -> (latest t, values in the window in processing order) after every reading."""
    max_t = None
    keys: dict[str, tuple[int, list[tuple[int, int, float]]]] = {}

    def expire(watermark: int | None) -> None:
        if watermark is not None:
            for key in [k for k, (latest, _) in keys.items() if watermark >= latest + 2 * SIZE]:
                del keys[key]

    for offset, (device, t, value) in enumerate(readings):
        watermark = None if max_t is None else max_t - GRACE
        expire(watermark)
        if watermark is not None and t <= watermark - SIZE:
            continue
        latest, entries = keys.get(device, (t, []))
        if t <= latest - SIZE:
            continue
        latest = max(latest, t)
        entries = [e for e in [*entries, (t, offset, value)] if e[0] > latest - SIZE]
        keys[device] = (latest, entries)
        max_t = t if max_t is None else max(max_t, t)
    expire(None if max_t is None else max_t - GRACE)
    return {
        d: (latest, [v for _, _, v in sorted(e, key=lambda x: x[1])])
        for d, (latest, e) in keys.items()
    }


readings_strategy = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.integers(0, 120_000_000),
        st.floats(-100, 100, allow_nan=False),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(readings_strategy)
def test_sliding_state_matches_brute_force(readings: list[tuple[str, int, float]]) -> None:
    state = PartitionState(parse_windows("sliding:20s"), GRACE)
    shown: dict[str, tuple[int, int, list[float]]] = {}
    for offset, (device, t, value) in enumerate(readings):
        state.apply(Reading(device, "m", value, t, None), offset)
        for view in state.drain().sliding_views:
            assert view.state is not None
            shown[view.device] = (view.start_us, view.end_us, view.state)
    expected = brute_force(readings)
    # Every live key was last shown with exactly the brute-force window.
    for device, (latest, values) in expected.items():
        start, end, summary = shown[device]
        assert (start, end) == (latest - SIZE, latest)
        assert summary[0] == len(values)
        assert summary[2] == min(values) and summary[3] == max(values)
        total = 0.0
        for v in values:
            total += v
        assert summary[1] == total
    assert {d for d, _, _ in state.sliding} == set(expected)
    # live_views gives each live key's window as last shown, changing nothing.
    _, _, live = state.live_views()
    assert {v.device: (v.start_us, v.end_us, v.state) for v in live} == {
        device: shown[device] for device in expected
    }
    assert state.drain().sliding_views == []


def test_min_and_max_stay_exact_as_readings_leave() -> None:
    # t:     0s    5s    10s    25s
    # value: 100   -50   7      3       window at 25s is (5s, 25s]: 100 and -50 have left
    state = PartitionState(parse_windows("sliding:20s"), GRACE)
    for offset, (t, value) in enumerate([(0, 100.0), (5, -50.0), (10, 7.0), (25, 3.0)]):
        state.apply(Reading("a", "m", value, t * 1_000_000, None), offset)
    (view,) = state.drain().sliding_views
    assert view.state is not None
    assert (view.start_us, view.end_us) == (5_000_000, 25_000_000)
    assert (view.state[0], view.state[2], view.state[3]) == (2, 3.0, 7.0)


@settings(max_examples=100, deadline=None)
@given(readings_strategy, st.integers(1, 10))
def test_sliding_state_recovers_from_changelog_deltas(
    readings: list[tuple[str, int, float]], every: int
) -> None:
    from pulse.changelog import DeltaAssembler, encode_parts

    specs = parse_windows("10s,sliding:20s")
    live = PartitionState(specs, GRACE)
    assembler = DeltaAssembler()
    recovered = PartitionState(specs, GRACE)
    for offset, (device, t, value) in enumerate(readings):
        live.apply(Reading(device, "m", value, t, None), offset)
        if offset % every == 0:
            for part in encode_parts(live.drain().delta, f"d{offset}", -1):
                delta = assembler.add(part)
                if delta is not None:
                    assert recovered.apply_delta(delta)
    for part in encode_parts(live.drain().delta, "last", -1):
        delta = assembler.add(part)
        if delta is not None:
            assert recovered.apply_delta(delta)
    recovered.finish_recovery()
    assert recovered.sliding == live.sliding
    assert recovered.windows == live.windows
    assert recovered.latest == live.latest
    assert recovered.next_offset == live.next_offset
