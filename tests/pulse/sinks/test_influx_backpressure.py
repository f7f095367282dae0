"""InfluxSink waits out backpressure (HTTP 429 / 503 with Retry-After) and drops nothing.

A small HTTP proxy in front of the real VictoriaMetrics answers the first writes with 429
and 503, then forwards; the points must arrive exactly once each.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from models.outputs import ClosedWindow
from pulse.local.stack import free_port
from pulse.sinks import influx
from pulse.sinks._base import FlushBatch
from pulse.sinks.influx import InfluxSink
from tables.aggregators import Summary
from tests.helpers import victoria

Handler = Callable[[web.Request], Awaitable[web.Response]]


async def _forward(influx_url: str, request: web.Request, body: bytes) -> web.Response:
    """Pass a write on to the real server and its answer back."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{influx_url}{request.path_qs}",
            data=body,
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
        ) as upstream,
    ):
        return web.Response(status=upstream.status, body=await upstream.read())


async def _write_through(handle: Handler, windows: list[ClosedWindow]) -> None:
    """One InfluxSink.write of ``windows`` to a proxy answering every POST with ``handle``."""
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    sink = InfluxSink(f"http://127.0.0.1:{port}", "token", "org", "bucket")
    await sink.start()
    try:
        await sink.write(FlushBatch(closed=windows))
    finally:
        await sink.stop()
        await runner.cleanup()


async def _run_through_refusing_proxy(influx_url: str, windows: list[ClosedWindow]) -> list[int]:
    answers = [(429, "0.2"), (503, "0.1"), (429, None)]
    seen: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        if answers:
            status, retry_after = answers.pop(0)
            seen.append(status)
            headers = {"Retry-After": retry_after} if retry_after else {}
            return web.Response(status=status, headers=headers, text="slow down")
        response = await _forward(influx_url, request, body)
        seen.append(response.status)
        return response

    await _write_through(handle, windows)
    return seen


def test_backpressure_is_waited_out_and_nothing_is_dropped(
    influx_url: str, topic_prefix: str
) -> None:
    start = 1_700_000_000 * 1_000_000
    windows = []
    for i in range(3):
        state = Summary.initialize(start + i, float(i), {"site": "x"})
        Summary.add(state, start + i + 1, float(i) + 0.5, {"site": "x"})
        windows.append(
            ClosedWindow(f"{topic_prefix}-d{i}", "bp", "10s", start, start + 10_000_000, state)
        )
    began = time.monotonic()
    seen = asyncio.run(_run_through_refusing_proxy(influx_url, windows))
    assert seen == [429, 503, 429, 204]
    # It honoured Retry-After (0.2 s + 0.1 s) before the third try.
    assert time.monotonic() - began >= 0.3
    found = victoria.wait_for_points(
        influx_url, f'{{__name__="bp_count",device=~"{topic_prefix}-.*"}}', 3
    )
    assert {dict(labels)["device"]: points for labels, points in found.items()} == {
        f"{topic_prefix}-d{i}": {start // 1000: 2.0} for i in range(3)
    }


async def _run_through_gathering_proxy(
    influx_url: str, windows: list[ClosedWindow], refuse: int
) -> tuple[int, list[int]]:
    """Write through a proxy that holds each request until CONCURRENT_REQUESTS are in flight
    (at most 5 s) and answers the first ``refuse`` of them 429; returns the most requests
    seen in flight together, and the statuses answered."""
    in_flight = 0
    most = 0
    gathered = asyncio.Event()
    statuses: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        nonlocal in_flight, most, refuse
        body = await request.read()
        in_flight += 1
        most = max(most, in_flight)
        if in_flight >= influx.CONCURRENT_REQUESTS:
            gathered.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gathered.wait(), 5.0)
        try:
            if refuse:
                refuse -= 1
                statuses.append(429)
                return web.Response(status=429, headers={"Retry-After": "0.1"}, text="wait")
            response = await _forward(influx_url, request, body)
            statuses.append(response.status)
            return response
        finally:
            in_flight -= 1

    await _write_through(handle, windows)
    return most, statuses


def test_a_large_write_goes_out_in_concurrent_requests_and_each_is_retried_alone(
    influx_url: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 11 windows at 2 lines per request: 6 requests, at most 4 of them in flight together;
    # the first two answered 429 and written on their own retry.
    monkeypatch.setattr(influx, "LINES_PER_REQUEST", 2)
    start = 1_700_000_000 * 1_000_000
    windows = [
        ClosedWindow(
            f"{topic_prefix}-c{i}",
            "conc",
            "10s",
            start,
            start + 10_000_000,
            Summary.initialize(start + i, float(i), None),
        )
        for i in range(11)
    ]
    most, statuses = asyncio.run(_run_through_gathering_proxy(influx_url, windows, refuse=2))
    assert most == influx.CONCURRENT_REQUESTS == 4
    assert sorted(statuses) == [204] * 6 + [429] * 2
    found = victoria.wait_for_points(
        influx_url, f'{{__name__="conc_first",device=~"{topic_prefix}-.*"}}', 11
    )
    assert {dict(labels)["device"]: points for labels, points in found.items()} == {
        f"{topic_prefix}-c{i}": {start // 1000: float(i)} for i in range(11)
    }


def test_a_failure_that_is_no_backpressure_propagates_as_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Not an HTTP answer to wait out (a bug, say): the write fails with that exception, and
    # the requests still in flight are cancelled.
    monkeypatch.setattr(influx, "LINES_PER_REQUEST", 1)
    started: list[int] = []

    async def post(body: str) -> None:
        started.append(len(body))
        if len(started) == 1:
            raise ValueError("a bug in the sink")
        await asyncio.sleep(10)

    sink = InfluxSink("http://127.0.0.1:1", "token", "org", "bucket")
    monkeypatch.setattr(sink, "_post", post)
    start = 1_700_000_000 * 1_000_000
    windows = [
        ClosedWindow(
            f"d{i}", "m", "10s", start, start + 10_000_000, Summary.initialize(start, 1.0, None)
        )
        for i in range(6)
    ]
    began = time.monotonic()
    with pytest.raises(ValueError, match="a bug in the sink"):
        asyncio.run(sink.write(FlushBatch(closed=windows)))
    assert time.monotonic() - began < 5  # the sleeping requests were cancelled
    assert len(started) < len(windows)  # the last was cancelled before it started
