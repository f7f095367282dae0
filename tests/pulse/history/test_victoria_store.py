"""VictoriaStore reads back, from a real VictoriaMetrics, what the InfluxDB writer wrote.

Windows are written as the writer writes them (each ``aggregates`` record's line through
InfluxSink); the reader must return exactly the windows of the asked series whose start is
in ``[since, until)``, oldest first, each equal to its record (VictoriaMetrics keeps 12
significant digits), and nothing of another device, metric or window label.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from pulse.history import StoreUnavailable, VictoriaStore, Window
from pulse.local.stack import free_port
from tests.helpers.history import START, closed_window, document, write_to_influx

S = START // 1_000_000


def assert_windows(found: list[Window], want: list[dict[str, float]]) -> None:
    assert [(w["start"], w["end"], w["count"]) for w in found] == [
        (w["start"], w["end"], w["count"]) for w in want
    ]
    for got, expected in zip(found, want, strict=True):
        assert set(got) == set(expected)
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, rel=1e-11, abs=1e-9), (name, got, expected)


async def read_when_visible(
    store: VictoriaStore, args: tuple[str, str, str, float, float], count: int
) -> list[Window]:
    """Poll: VictoriaMetrics shows a new series about a second after write_to_influx."""
    deadline = time.monotonic() + 30
    while True:
        found = await store.read(*args)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.5)


def test_the_reader_returns_the_series_windows_in_the_range(
    influx_url: str, topic_prefix: str
) -> None:
    device, metric = f"{topic_prefix}-d", "vm.temp"
    series = [
        closed_window(device, metric, "10s", 10, k, [20.0 + k, 21.5 - k / 3, 19.25])
        for k in range(8)
    ]
    others = [
        closed_window(f"{device}x", metric, "10s", 10, 3, [1.0]),  # another device
        closed_window(device, "vmXtemp", "10s", 10, 3, [2.0]),  # "." is no wildcard
        closed_window(device, metric, "1m", 60, 0, [3.0]),  # another window label
        closed_window(device, metric, "30s/10s", 30, 3, [4.0, 5.0]),  # a hopping window
    ]

    async def run() -> None:
        await write_to_influx(influx_url, series + others)
        store = VictoriaStore(influx_url)
        try:
            # Start at window 2 (included), stop at window 7's start (excluded).
            args = (device, metric, "10s", S + 20, S + 70)
            found = await read_when_visible(store, args, 5)
            assert_windows(found, [document(w) for w in series[2:7]])
            # Fractional bounds: window 2 starts before since, window 6 before until.
            found = await store.read(device, metric, "10s", S + 20.5, S + 60.001)
            assert_windows(found, [document(w) for w in series[3:7]])
            hopping = await read_when_visible(store, (device, metric, "30s/10s", S, S + 1000), 1)
            assert_windows(hopping, [document(others[3])])
            assert await store.read(device, metric, "10s", S + 1000, S + 2000) == []
        finally:
            await store.close()

    asyncio.run(run())


def test_a_store_that_is_away_is_unavailable_with_the_reason() -> None:
    port = free_port()

    async def run() -> None:
        store = VictoriaStore(f"http://127.0.0.1:{port}")
        try:
            with pytest.raises(StoreUnavailable) as caught:
                await store.read("d", "m", "10s", 0, 10)
        finally:
            await store.close()
        assert str(caught.value).startswith(
            f"VictoriaMetrics http://127.0.0.1:{port}: ClientConnectorError: "
        )

    asyncio.run(run())
