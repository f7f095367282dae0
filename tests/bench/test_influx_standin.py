"""bench.influx_standin: the run's windows, the time shift and the writes through the sink."""

from __future__ import annotations

import asyncio

import orjson

from bench.dataset import DatasetSpec, generate
from bench.influx_standin import closed_windows, shifted, write_points
from pulse.sinks._text import aggregate_text
from tests.helpers.victoria import wait_for_points

SMALL = DatasetSpec(readings=3_000, devices=40, span_seconds=120.0)


def test_closed_windows_are_every_window_of_the_dataset_once_with_every_reading() -> None:
    expected: dict[tuple[str, str, str, int], int] = {}
    for _key, value, _ts_ms in generate(SMALL):
        reading = orjson.loads(value)
        t_us = round(reading["ts"] * 1e6)
        for label, size_us in (("10s", 10_000_000), ("1m", 60_000_000)):
            window = (reading["device"], reading["metric"], label, t_us // size_us * size_us)
            expected[window] = expected.get(window, 0) + 1

    closed = closed_windows(SMALL, "10s,1m")

    found = {(w.device, w.metric, w.window, w.start_us): w for w in closed}
    assert len(closed) == len(found) == len(expected)
    assert {key: int(aggregate_text(w)[0]) for key, w in found.items()} == expected
    assert sum(expected.values()) == 2 * SMALL.readings


def test_shifted_moves_only_the_window_bounds() -> None:
    closed = closed_windows(SMALL, "10s,1m")[:50]
    later = shifted(closed, 600.0)
    assert [w._replace(start_us=0, end_us=0) for w in later] == [
        w._replace(start_us=0, end_us=0) for w in closed
    ]
    assert [(w.start_us, w.end_us) for w in later] == [
        (w.start_us + 600_000_000, w.end_us + 600_000_000) for w in closed
    ]


def test_write_points_stores_every_field_of_every_point_of_both_rounds(influx_url: str) -> None:
    closed = [w for w in closed_windows(SMALL, "10s,1m") if w.device == "dev-00007"]
    assert len(closed) >= 10  # several windows of each size, so the counts below mean something

    for windows in (closed, shifted(closed, 600.0)):
        asyncio.run(write_points(influx_url, windows))

    points = wait_for_points(influx_url, '{device="dev-00007"}', expected=2 * 10 * len(closed))
    assert len(points) == 10 * len({(w.metric, w.window) for w in closed})
    for window in closed:
        name = f"{window.metric}_count"
        labels = (("__name__", name), ("device", window.device), ("window", window.window))
        start_ms = window.start_us // 1000
        count = float(aggregate_text(window)[0])
        assert points[labels][start_ms] == points[labels][start_ms + 600_000] == count
