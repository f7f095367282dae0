"""InfluxStore: the Flux query text, and the reader against InfluxDB 2's answers.

No InfluxDB 2 runs on the build machines (shared/notes/influx-standin.md), so the query text
is built by a pure function checked here, and the reader talks over real HTTP to a small
aiohttp server on a free port that checks the request as InfluxDB 2 receives it (path, org,
token, the query text) and answers an annotated CSV body in the form InfluxDB 2 gives a
``pivot`` query (``#datatype``, ``#group``, ``#default`` rows, then the header and one row
per window), or an error as InfluxDB answers it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from pulse.history import InfluxStore, StoreUnavailable, flux_query
from pulse.history.influx import flux_string, flux_time
from pulse.local.stack import free_port

S = 1_700_000_000  # 2023-11-14T22:13:20Z

EXPECTED_QUERY = """\
from(bucket: "pulse")
  |> range(start: 2023-11-14T22:13:20Z, stop: 2023-11-14T22:14:20.250000Z)
  |> filter(fn: (r) => r._measurement == "temp.c" and r.device == "dev-1" and r.window == "10s")
  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
  |> group()
  |> keep(columns: ["_time", "count", "sum", "min", "max", "mean", "first", "last", "p50", \
"p95", "p99"])
  |> sort(columns: ["_time"])
"""

ANSWER = (
    "#datatype,string,long,dateTime:RFC3339,long,double,double,double,double,double,double,"
    "double,double,double\r\n"
    "#group,false,false,false,false,false,false,false,false,false,false,false,false,false\r\n"
    "#default,_result,,,,,,,,,,,,\r\n"
    ",result,table,_time,count,first,last,max,mean,min,p50,p95,p99,sum\r\n"
    ",,0,2023-11-14T22:13:20Z,3,21.5,19.25,21.5,20.583333333333332,19.25,20.9,21.45,21.5,"
    "61.75\r\n"
    ",,0,2023-11-14T22:13:30Z,1,-0.1,-0.1,-0.1,-0.1,-0.1,-0.1,-0.1,-0.1,-0.1\r\n"
    ",,0,2023-11-14T22:13:40.5Z,2,1e+300,2.5,1e+300,5e+299,2.5,2.5,1e+300,1e+300,1e+300\r\n"
    "\r\n"
)
"""Three windows (the third one at a fractional start, with large numbers), as InfluxDB 2
writes them: RFC 3339 times, ``count`` a long, the rest doubles, columns as ``keep`` left
them after the pivot (fields sorted by name), CRLF line ends and an empty line at the end."""

WANT = [
    {
        "count": 3,
        "sum": 61.75,
        "min": 19.25,
        "max": 21.5,
        "mean": 20.583333333333332,
        "first": 21.5,
        "last": 19.25,
        "p50": 20.9,
        "p95": 21.45,
        "p99": 21.5,
        "start": S,
        "end": S + 10,
    },
    {
        **{name: -0.1 for name in ("sum", "min", "max", "mean", "first", "last")},
        **{name: -0.1 for name in ("p50", "p95", "p99")},
        "count": 1,
        "start": S + 10,
        "end": S + 20,
    },
    {
        "count": 2,
        "sum": 1e300,
        "min": 2.5,
        "max": 1e300,
        "mean": 5e299,
        "first": 1e300,
        "last": 2.5,
        "p50": 2.5,
        "p95": 1e300,
        "p99": 1e300,
        "start": S + 20.5,
        "end": S + 30.5,
    },
]


def test_the_flux_query_selects_one_series_in_the_range() -> None:
    assert flux_query("pulse", "dev-1", "temp.c", "10s", S, S + 60.25) == EXPECTED_QUERY
    assert flux_query("b", "d", "m", "5m/1m", S + 0.000001, S + 1.5).splitlines()[1:3] == [
        "  |> range(start: 2023-11-14T22:13:20.000001Z, stop: 2023-11-14T22:13:21.500000Z)",
        '  |> filter(fn: (r) => r._measurement == "m" and r.device == "d" and r.window == "5m/1m")',
    ]


def test_flux_strings_and_times_escape_and_round_as_flux_reads_them() -> None:
    assert flux_string('a"b\\c${d}$e') == '"a\\"b\\\\c\\${d}$e"'
    assert flux_time(0) == "1970-01-01T00:00:00Z"
    assert flux_time(S + 0.1) == "2023-11-14T22:13:20.100000Z"
    # A bound between two microseconds is rounded up: [since, until) leaves out nothing of
    # the microsecond it names and takes nothing before it.
    assert flux_time(S + 0.0000004) == "2023-11-14T22:13:20.000001Z"


@asynccontextmanager
async def influx_answering(
    status: int, body: str, seen: list[dict[str, Any]]
) -> AsyncIterator[str]:
    """An HTTP server on a free port answering ``/api/v2/query`` as InfluxDB 2 would;
    records each request's org, Authorization and JSON body in ``seen``."""

    async def query(request: web.Request) -> web.Response:
        seen.append(
            {
                "org": request.query.get("org"),
                "authorization": request.headers.get("Authorization"),
                "body": await request.json(),
            }
        )
        content_type = "text/csv; charset=utf-8" if status == 200 else "application/json"
        return web.Response(
            status=status, body=body.encode(), content_type=content_type.split(";")[0]
        )

    app = web.Application()
    app.router.add_post("/api/v2/query", query)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def test_the_reader_sends_the_query_and_reads_the_windows_of_the_answer() -> None:
    seen: list[dict[str, Any]] = []

    async def run() -> list[Any]:
        async with influx_answering(200, ANSWER, seen) as url:
            store = InfluxStore(url, "s3cret", "pulse", "pulse")
            try:
                return await store.read("dev-1", "temp.c", "10s", S, S + 60.25)
            finally:
                await store.close()

    assert asyncio.run(run()) == WANT
    [request] = seen
    assert request["org"] == "pulse"
    assert request["authorization"] == "Token s3cret"
    assert request["body"]["query"] == EXPECTED_QUERY
    assert request["body"]["dialect"]["annotations"] == ["datatype", "group", "default"]


@pytest.mark.parametrize(
    ("status", "body", "said"),
    [
        (
            401,
            '{"code":"unauthorized","message":"unauthorized access s3cret"}',
            'HTTP 401: {"code":"unauthorized","message":"unauthorized access <redacted>"}',
        ),
        (
            500,
            '{"code":"internal error","message":"timeout"}',
            'HTTP 500: {"code":"internal error","message":"timeout"}',
        ),
    ],
)
def test_an_error_answer_makes_the_store_unavailable_with_what_it_said(
    status: int, body: str, said: str
) -> None:
    seen: list[dict[str, Any]] = []

    async def run() -> tuple[str, str]:
        async with influx_answering(status, body, seen) as url:
            store = InfluxStore(url, "s3cret", "pulse", "pulse")
            try:
                with pytest.raises(StoreUnavailable) as caught:
                    await store.read("dev-1", "temp.c", "10s", S, S + 60.25)
            finally:
                await store.close()
            return url, str(caught.value)

    url, message = asyncio.run(run())
    assert message == f"InfluxDB {url} bucket pulse: {said}"
    assert len(seen) == 1


def test_an_influx_that_is_away_is_unavailable() -> None:
    port = free_port()

    async def run() -> str:
        store = InfluxStore(f"http://127.0.0.1:{port}", "", "pulse", "pulse")
        try:
            with pytest.raises(StoreUnavailable) as caught:
                await store.read("dev-1", "temp.c", "10s", S, S + 60)
        finally:
            await store.close()
        return str(caught.value)

    assert asyncio.run(run()).startswith(
        f"InfluxDB http://127.0.0.1:{port} bucket pulse: ClientConnectorError: "
    )
