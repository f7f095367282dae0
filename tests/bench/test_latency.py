"""The latency runner's pure parts: where its warm-up ends, and its probe devices."""

from __future__ import annotations

import pytest

from bench.dataset import partition_for
from bench.latency import WarmUp, percentile, probe_device_names

MINUTE = 60.0
T0 = 1_795_392_000.0  # a minute boundary (29,923,200 minutes after the epoch)


@pytest.mark.parametrize(
    ("offset", "warmup"),
    [
        # Started 30 s past a minute: the next boundary (T0 + 60) is 30 s away, at least the
        # 20 s lead, so the warm-up ends 15 s after it.
        #   T0      T0+30 start     T0+60 first end    T0+75 measured from
        #   |-------|---------------|------------------|
        (30.0, 45.0),
        # 50 s past: the next boundary is only 10 s away, too soon for every series to have
        # readings in its window; the one after it counts.
        (50.0, 85.0),
        # On a boundary: that boundary's windows hold nothing yet; 60 s later is the first.
        (0.0, 75.0),
        # Exactly the lead before a boundary: that boundary counts.
        (40.0, 35.0),
    ],
)
def test_warmup_ends_settle_seconds_after_the_first_end_at_least_lead_seconds_away(
    offset: float, warmup: float
) -> None:
    assert WarmUp(longest=MINUTE, settle=15.0).seconds_from(T0 + offset) == pytest.approx(warmup)


def test_warmup_follows_the_longest_window() -> None:
    # 10 s windows only: the first 10 s boundary at least 20 s away (T0 + 30), plus 15 s.
    assert WarmUp(longest=10.0, settle=15.0).seconds_from(T0 + 5.0) == pytest.approx(40.0)


@pytest.mark.parametrize("partitions", [1, 3, 8, 12])
def test_one_probe_device_per_partition(partitions: int) -> None:
    names = probe_device_names(partitions)
    assert [partition_for(name.encode(), partitions) for name in names] == list(range(partitions))
    assert len(set(names)) == partitions
    assert all(name.startswith("probe-") for name in names)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None
