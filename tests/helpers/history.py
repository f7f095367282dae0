"""Closed windows made for the history tests, and written where the InfluxDB writer writes."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from models.outputs import ClosedWindow
from pulse.sinks.influx import InfluxSink, record_line
from pulse.sinks.kafka import aggregate_records
from tables.aggregators import Summary
from tests.helpers import victoria

START = 1_700_000_000 * 1_000_000
"""Epoch microseconds of window 0 of every series here."""


def closed_window(
    device: str, metric: str, label: str, size_s: int, k: int, values: list[float]
) -> ClosedWindow:
    """Window ``k`` of a series of ``size_s``-second windows from START, holding ``values``
    (every other one tagged ``site=a``: the last reading's tags are the window's)."""
    start = START + k * size_s * 1_000_000
    state = Summary.initialize(start, values[0], None)
    for i, value in enumerate(values[1:], 1):
        Summary.add(state, start + i, value, {"site": "a"} if i % 2 else None)
    return ClosedWindow(device, metric, label, start, start + size_s * 1_000_000, state)


def records(windows: list[ClosedWindow]) -> list[bytes]:
    """Each window's ``aggregates`` record value, as the Kafka sink writes it."""
    return [value for _, value in aggregate_records(windows)]


def document(window: ClosedWindow) -> dict[str, Any]:
    """A window as a history answer shows it: the record's aggregates, start and end."""
    doc = orjson.loads(records([window])[0])
    return {k: v for k, v in doc.items() if k not in ("device", "metric", "window", "tags")}


async def write_to_influx(influx_url: str, windows: list[ClosedWindow]) -> None:
    """Write the windows as the InfluxDB writer does: each record's line through InfluxSink."""
    sink = InfluxSink(influx_url, "", "pulse", "pulse")
    await sink.start()
    try:
        values = records(windows)
        await sink.write_records([record_line(v) for v in values], [None] * len(values))
    finally:
        await sink.stop()
    # Searchable in about a second rather than up to ~10 s (tests/helpers/victoria.py).
    await asyncio.to_thread(victoria.force_flush, influx_url)
