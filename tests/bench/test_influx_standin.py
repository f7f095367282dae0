"""bench.influx_standin: the run's windows, the time shift and the sink-shaped writes."""

from __future__ import annotations

import asyncio

import orjson

from bench.dataset import DatasetSpec, generate
from bench.influx_standin import closed_windows, shifted, write_all
from pulse.sinks.influx import line_protocol_lines
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
    assert {key: int(w.aggregate_text()[0]) for key, w in found.items()} == expected
    assert sum(expected.values()) == 2 * SMALL.readings


def test_shifted_moves_only_the_millisecond_timestamp() -> None:
    lines = ["t,device=d1,window=10s count=2i,sum=1.5 1795315200000", "h,device=d2 last=-3e-05 5"]
    assert shifted(lines, 600.0) == [
        "t,device=d1,window=10s count=2i,sum=1.5 1795315800000",
        "h,device=d2 last=-3e-05 600005",
    ]
    assert shifted(lines, 0.0) == lines


def test_write_all_stores_every_field_of_every_point(influx_url: str) -> None:
    closed = [w for w in closed_windows(SMALL, "10s,1m") if w.device == "dev-00007"]
    lines = line_protocol_lines(closed)
    assert len(lines) >= 10  # several windows of each size, so the counts below mean something

    asyncio.run(write_all(influx_url, lines + shifted(lines, 600.0)))

    points = wait_for_points(influx_url, '{device="dev-00007"}', expected=2 * 10 * len(lines))
    assert len(points) == 10 * len({line.split(" ")[0] for line in lines})
    for window in closed:
        name = f"{window.metric}_count"
        labels = (("__name__", name), ("device", window.device), ("window", window.window))
        start_ms = window.start_us // 1000
        count = float(window.aggregate_text()[0])
        assert points[labels][start_ms] == points[labels][start_ms + 600_000] == count
