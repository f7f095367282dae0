"""bench.recovery: the changelog replay it times rebuilds exactly the live state."""

from __future__ import annotations

from bench.recovery import measure_recovery


def test_replaying_every_delta_rebuilds_the_live_state_exactly() -> None:
    # 16 s of the benchmark dataset (event times up to 2 s out of order) at 1,000 readings/s;
    # at the end the watermark is about 16 s - 5 s of grace:
    #   [0 s, 10 s)   closed once it passed 10 s (removals in the deltas; later readings for
    #                 it are late there but still count in the minute)
    #   [10 s, 20 s)  open       [0 s, 1 min)  open
    result = measure_recovery(seconds=16, rate=1_000, devices=200, flush_every=100)
    assert result.readings == 16_000
    # One snapshot, one delta per 100 readings, and the last (empty) drain's: one part each.
    assert result.records == 1 + 160 + 1
    assert result.identical
    # Each of the 200 devices x 2 metrics (all seen, the seed given) has both open windows.
    assert result.open_windows == 400 + 400
    assert result.delta_bytes > 0 and result.mb_per_second > 0
