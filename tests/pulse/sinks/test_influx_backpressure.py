"""InfluxSink sorts InfluxDB's answers: it waits out backpressure (429, 503, Retry-After in
both forms), dead-letters the lines InfluxDB refuses (400, 422, 413 alone) and writes the
rest, and keeps retrying a refusal of the client (401) until it is lifted; nothing is lost.

A small HTTP proxy in front of the real VictoriaMetrics answers as InfluxDB 2.7 would, then
forwards what InfluxDB would have written; the refused lines are read back from the output
dead-letter topic of a real broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import itertools
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer

from models.outputs import ClosedWindow
from pulse.local.stack import free_port
from pulse.sinks import influx
from pulse.sinks._base import FlushBatch
from pulse.sinks.dead_letters import OutputDeadLetters
from pulse.sinks.influx import InfluxSink, line_protocol
from tables.aggregators import Summary
from tests.helpers import kafka, victoria

Handler = Callable[[web.Request], Awaitable[web.Response]]


async def _forward(influx_url: str, request: web.Request, body: bytes) -> web.Response:
    """Pass a write on to the real server and its answer back."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{influx_url}{request.path_qs}",
            data=body,
            headers={
                k: v
                for k, v in request.headers.items()
                if k.lower() not in ("host", "content-length")  # the body may be a part
            },
        ) as upstream,
    ):
        return web.Response(status=upstream.status, body=await upstream.read())


async def _write_through(
    handle: Handler,
    windows: list[ClosedWindow],
    dead_letters: OutputDeadLetters | None = None,
    sink: InfluxSink | None = None,
) -> InfluxSink:
    """One InfluxSink.write of ``windows`` to a proxy answering every POST with ``handle``."""
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    if sink is None:
        sink = InfluxSink(f"http://127.0.0.1:{port}", "token", "org", "bucket", dead_letters)
    else:
        sink.url = f"http://127.0.0.1:{port}"
    await sink.start()
    try:
        await sink.write(FlushBatch(closed=windows))
    finally:
        await sink.stop()
        await runner.cleanup()
    return sink


def _windows(prefix: str, metric: str, count: int) -> list[ClosedWindow]:
    """``count`` windows of devices ``{prefix}-d{i}``, each of the values i and i + 0.5."""
    start = START
    windows = []
    for i in range(count):
        state = Summary.initialize(start + i, float(i), {"site": "x"})
        Summary.add(state, start + i + 1, float(i) + 0.5, {"site": "x"})
        windows.append(
            ClosedWindow(f"{prefix}-d{i}", metric, "10s", start, start + 10_000_000, state)
        )
    return windows


START = 1_700_000_000 * 1_000_000


def _samples(influx_url: str, metric: str, prefix: str) -> dict[str, list[float]]:
    """Every sample VictoriaMetrics stored of ``{metric}_first`` per device (repeats too)."""
    series = victoria.export(influx_url, f'{{__name__="{metric}_first",device=~"{prefix}-.*"}}')
    return {s["metric"]["device"]: s["values"] for s in series}


def test_backpressure_is_waited_out_and_nothing_is_dropped(
    influx_url: str, topic_prefix: str
) -> None:
    # 429 with Retry-After in seconds, 429 with it as an HTTP date, then 503 without it.
    windows = _windows(topic_prefix, "bp", 3)
    answers: list[tuple[int, Callable[[], str | None]]] = [
        (429, lambda: "1"),
        (429, lambda: email.utils.formatdate(time.time() + 2, usegmt=True)),
        (503, lambda: None),
    ]
    seen: list[tuple[int, float]] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        if answers:
            status, retry_after = answers.pop(0)
            seen.append((status, time.monotonic()))
            after = retry_after()
            headers = {"Retry-After": after} if after else {}
            return web.Response(status=status, headers=headers, text="slow down")
        response = await _forward(influx_url, request, body)
        seen.append((response.status, time.monotonic()))
        return response

    sink = asyncio.run(_write_through(handle, windows))
    assert [status for status, _ in seen] == [429, 429, 503, 204]
    gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(seen)]
    # The seconds form (1 s), the date form (now + 2 s, whole seconds: at least 1 s away),
    # then the backoff alone (under a second, jittered).
    assert gaps[0] >= 1.0
    assert gaps[1] >= 1.0
    assert gaps[2] < 1.0
    victoria.wait_for_points(influx_url, f'{{__name__="bp_first",device=~"{topic_prefix}-.*"}}', 3)
    # Every point once: nothing was forwarded before the target took the request.
    assert _samples(influx_url, "bp", topic_prefix) == {
        f"{topic_prefix}-d{i}": [float(i)] for i in range(3)
    }
    assert sink.health.state == "ok"
    assert sink.health.dead_letters == 0


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


@contextlib.asynccontextmanager
async def _output_dlq(broker: str, topic: str) -> AsyncIterator[OutputDeadLetters]:
    """The output dead-letter topic ``topic`` on ``broker``, and a writer for it."""
    await kafka.create_topics(broker, {topic: 1})
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap(broker), acks="all")
    await producer.start()
    try:
        yield OutputDeadLetters(producer, topic, 65536)
    finally:
        await producer.stop()


PARTIAL_WRITE = (
    "failure writing points to database: partial write: field type conflict: input field "
    '\\"first\\" on measurement \\"{measurement}\\" is type float, already exists as type '
    "integer dropped={dropped}"
)
"""InfluxDB 2.7's message when it dropped points of a request for a field type conflict (it
wrote the others): tsdb.PartialWriteError behind HTTP 422, code "unprocessable entity"."""


@pytest.mark.parametrize("status", [422, 400])
def test_refused_lines_are_dead_lettered_and_the_rest_written(
    broker: str, influx_url: str, topic_prefix: str, status: int
) -> None:
    # The bucket holds `first` of some devices as integers, so InfluxDB refuses those lines.
    # 422 (as InfluxDB 2.7 for a field type conflict): it writes the other lines of the
    # request and names the conflict; 400 (as for a line it cannot parse): it writes none.
    windows = _windows(topic_prefix, "pw", 40)
    refused_devices = {f"{topic_prefix}-d{i}" for i in (3, 17, 18, 39)}
    requests: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        lines = (await request.read()).decode().split("\n")
        requests.append(len(lines))
        bad = [line for line in lines if _device(line) in refused_devices]
        if not bad:
            return await _forward(influx_url, request, "\n".join(lines).encode())
        if status == 422:
            good = [line for line in lines if line not in bad]
            if good:
                await _forward(influx_url, request, "\n".join(good).encode())
            message = PARTIAL_WRITE.format(measurement="pw", dropped=len(bad))
            body = f'{{"code":"unprocessable entity","message":"{message}"}}'
        else:
            body = f'{{"code":"invalid","message":"unable to parse \'{bad[0]}\': bad field"}}'
        return web.Response(status=status, text=body, content_type="application/json")

    async def run() -> InfluxSink:
        async with _output_dlq(broker, f"{topic_prefix}-output-dlq") as dead_letters:
            return await _write_through(handle, windows, dead_letters)

    sink = asyncio.run(run())
    # Every line InfluxDB takes is there (a 422's good lines again after a split: identical).
    wanted = {w.device: float(int(w.device.rsplit("d", 1)[1])) for w in windows}
    for device in refused_devices:
        del wanted[device]
    victoria.wait_for_points(
        influx_url, f'{{__name__="pw_first",device=~"{topic_prefix}-.*"}}', len(wanted)
    )
    samples = _samples(influx_url, "pw", topic_prefix)
    assert {device: set(values) for device, values in samples.items()} == {
        device: {value} for device, value in wanted.items()
    }
    # Each refused line is in the output dead-letter topic once, with InfluxDB's answer.
    stored = asyncio.run(kafka.read_all(broker, f"{topic_prefix}-output-dlq"))
    letters = {record.key: orjson.loads(record.value or b"") for record in stored}
    assert len(stored) == len(letters) == len(refused_devices)
    by_device = {w.device: w for w in windows}
    assert letters == {
        device.encode(): {
            "reason": "refused",
            "sink": "influx",
            "target": f"InfluxDB {sink.url} bucket bucket",
            "answer": letters[device.encode()]["answer"],
            "key": device,
            "output": line_protocol(by_device[device]),
        }
        for device in refused_devices
    }
    for letter in letters.values():
        if status == 422:
            assert letter["answer"].startswith("HTTP 422 Unprocessable Entity: {")
            assert "partial write: field type conflict" in letter["answer"]
            assert letter["answer"].endswith('dropped=1"}')  # the line alone
        else:
            assert letter["answer"].startswith("HTTP 400 Bad Request: {")
            assert f"unable to parse '{letter['output']}'" in letter["answer"]
    assert sink.health.dead_letters == len(refused_devices)
    assert sink.health.state == "ok"
    # Halving: one request, then for each refused line at most one per halving step.
    assert requests[0] == 40
    assert len(requests) <= 1 + 2 * len(refused_devices) * 6


def _device(line: str) -> str:
    match = re.search(r"device=([^,]+),", line)
    assert match is not None, line
    return match.group(1)


def test_too_large_requests_are_split_and_a_line_too_large_alone_is_dead_lettered(
    broker: str, influx_url: str, topic_prefix: str
) -> None:
    # A server that takes at most 3 lines per request, and never one of a device with a long
    # tag: the sink halves its requests until they pass, keeps them that small, and stores
    # the line that is too large even alone in the output dead-letter topic.
    windows = _windows(topic_prefix, "big", 10)
    state = Summary.initialize(START, 1.0, {"site": "x" * 2000})
    huge = ClosedWindow(f"{topic_prefix}-huge", "big", "10s", START, START + 10_000_000, state)
    windows.insert(4, huge)
    requests: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        requests.append(body.count(b"\n") + 1)
        if requests[-1] > 3 or len(body) > 1000:
            return web.Response(status=413, text='{"code":"request too large"}')
        return await _forward(influx_url, request, body)

    async def run() -> InfluxSink:
        async with _output_dlq(broker, f"{topic_prefix}-output-dlq") as dead_letters:
            sink = await _write_through(handle, windows, dead_letters)
            assert sink.lines_per_request <= 3
            # The next write starts with requests of that size.
            requests.clear()
            await _write_through(handle, _windows(f"{topic_prefix}-next", "big", 6), sink=sink)
            assert requests and max(requests) <= 3
            return sink

    sink = asyncio.run(run())
    victoria.wait_for_points(
        influx_url, f'{{__name__="big_first",device=~"{topic_prefix}-.*"}}', 16
    )
    samples = _samples(influx_url, "big", topic_prefix)
    assert {device: set(values) for device, values in samples.items()} == {
        **{f"{topic_prefix}-d{i}": {float(i)} for i in range(10)},
        **{f"{topic_prefix}-next-d{i}": {float(i)} for i in range(6)},
    }
    stored = asyncio.run(kafka.read_all(broker, f"{topic_prefix}-output-dlq"))
    assert [(r.key, orjson.loads(r.value or b"")["output"]) for r in stored] == [
        (huge.device.encode(), line_protocol(huge))
    ]
    assert orjson.loads(stored[0].value or b"")["answer"].startswith("HTTP 413")
    assert sink.health.dead_letters == 1


def test_a_refused_client_is_retried_until_let_in_and_logged_once(
    influx_url: str, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # 401 for 2.5 s (a token being fixed), then the writes pass: the sink's state says
    # refused_by_target with the answer meanwhile, and ok after; one error line in the log
    # however many tries; every point written once.
    windows = _windows(topic_prefix, "auth", 5)
    states: list[tuple[str, str | None]] = []
    refusing_until = time.monotonic() + 2.5
    refusals = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal refusals
        body = await request.read()
        if time.monotonic() < refusing_until:
            refusals += 1
            return web.Response(
                status=401, text='{"code":"unauthorized","message":"unauthorized access"}'
            )
        return await _forward(influx_url, request, body)

    sink = InfluxSink("http://unused", "token", "org", "bucket")

    async def watch() -> None:
        while True:
            states.append((sink.health.state, sink.health.reason))
            await asyncio.sleep(0.05)

    async def run() -> None:
        watcher = asyncio.ensure_future(watch())
        try:
            await _write_through(handle, windows, sink=sink)
        finally:
            watcher.cancel()

    with caplog.at_level(logging.WARNING, logger="pulse.sinks._base"):
        began = time.time()
        asyncio.run(run())
    assert refusals >= 3  # tried again and again
    refused = [reason for state, reason in states if state == "refused_by_target"]
    assert refused and refused[0] is not None and refused[0].startswith("HTTP 401")
    assert "unauthorized access" in refused[0]
    assert sink.health.state == "ok" and sink.health.reason is None
    assert sink.health.since >= began + 2.0
    changes = [r.getMessage() for r in caplog.records]
    assert len(changes) == 2, changes  # refused (once), then ok again
    assert changes[0].startswith("influx sink: refused by its target")
    assert changes[1].startswith("influx sink: ok again after")
    victoria.wait_for_points(
        influx_url, f'{{__name__="auth_first",device=~"{topic_prefix}-.*"}}', 5
    )
    assert _samples(influx_url, "auth", topic_prefix) == {
        f"{topic_prefix}-d{i}": [float(i)] for i in range(5)
    }
