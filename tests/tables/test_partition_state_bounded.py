"""State size depends on the open windows, not on how long the worker has run."""

from __future__ import annotations

from models.reading import Reading
from tables.partition_state import PartitionState
from tables.windows import parse_windows

S = 1_000_000


def test_state_stays_bounded_over_many_windows() -> None:
    # 20 devices x 2 metrics, one reading each per second of event time, for 40 minutes:
    # 240 ten-second windows and 40 one-minute windows per series go through.
    state = PartitionState(parse_windows("10s,1m,5m/1m,sliding:30s"), grace_us=5 * S)
    peak_windows = peak_latest = peak_sliding_entries = closed = 0
    offset = 0
    for second in range(40 * 60):
        for device in range(20):
            for metric in ("t", "h"):
                state.apply(Reading(f"d{device}", metric, 1.0, second * S, None), offset)
                offset += 1
        if second % 5 == 0:
            closed += len(state.drain().closed)
            peak_windows = max(peak_windows, len(state.windows))
            peak_latest = max(peak_latest, len(state.latest))
            peak_sliding_entries = max(
                peak_sliding_entries, sum(len(e) for _, e in state.sliding.values())
            )
    series = 20 * 2
    # Every window that could close did: per minute six 10s, one 1m and one 5m/1m window.
    assert closed > series * (235 + 38 + 35)
    # Open at most: 10s (current + one in grace), 1m (2), 5m/1m (5 + 1 in grace).
    assert peak_windows <= series * (2 + 2 + 6)
    assert peak_latest == series
    # Sliding keeps only the readings of the last 30 s per series.
    assert peak_sliding_entries <= series * 31


def test_quiet_keys_leave_the_state_entirely() -> None:
    state = PartitionState(parse_windows("10s,sliding:30s"), grace_us=5 * S)
    for offset, device in enumerate(["a", "b", "c"]):
        state.apply(Reading(device, "m", 1.0, 100 * S, None), offset)
    state.drain()
    assert len(state.windows) == 3 and len(state.latest) == 3 and len(state.sliding) == 3
    # Idle close far past the sliding expiry (2 x 30 s after the key's last reading).
    state.advance_idle(200 * S)
    drained = state.drain()
    assert len(drained.closed) == 3
    assert (state.windows, state.latest, state.sliding) == ({}, {}, {})
    assert sorted(drained.delta.sliding_removed) == [
        ["a", "m", "sliding:30s"],
        ["b", "m", "sliding:30s"],
        ["c", "m", "sliding:30s"],
    ]
