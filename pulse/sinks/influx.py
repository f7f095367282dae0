"""Closed windows to InfluxDB 2.x as line protocol, through influxdb-client.

One point per closed window: measurement = metric; tags ``device``, ``window`` and the tags
of the reading that gave ``last``; fields ``count`` (integer) and ``sum, min, max, mean,
first, last, p50, p95, p99`` (floats); timestamp = window start in milliseconds. Line
protocol is built directly (the client's ``Point`` objects cost more than the rest of the pipeline).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import aiohttp
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.client.write_api import WritePrecision
from influxdb_client.rest import ApiException

from models.outputs import ClosedWindow
from pulse.settings import REDACTED
from pulse.sinks._base import FlushBatch, Sink
from pulse.sinks._retry import RetryLater, parse_retry_after, retry_forever
from pulse.sinks._text import aggregate_text
from tables import _native
from tables.aggregators import Summary

LINES_PER_REQUEST = 5_000
"""InfluxDB's recommended batch size."""
CONCURRENT_REQUESTS = 4
"""Requests of one write in flight together: the worker's event loop answers only between
fetches, so one request at a time left the server idle between round trips."""

_TAG_ESCAPES = str.maketrans({"\\": "\\\\", ",": "\\,", "=": "\\=", " ": "\\ "})


def line_protocol(window: ClosedWindow) -> str:
    """The line-protocol line of one closed window (tags sorted, as InfluxDB prefers).

    Device, metric, window label and tag keys are validated names that need no escaping
    (see models/reading.py and tables/windows.py); tag values are escaped.
    """
    tags = Summary.tags(window.state)
    if tags:
        tags = dict(tags)
        tags["device"] = window.device
        tags["window"] = window.window
        tag_text = ",".join(
            f"{key}={value.translate(_TAG_ESCAPES)}"
            for key, value in sorted(tags.items())
            if value  # InfluxDB has no empty tag values: an empty tag is no tag
        )
    else:
        tag_text = f"device={window.device},window={window.window}"
    count, total, low, high, mean, first, last, p50, p95, p99 = aggregate_text(window)
    return (
        f"{window.metric},{tag_text} count={count}i,sum={total},min={low},max={high},"
        f"mean={mean},first={first},last={last},p50={p50},p95={p95},p99={p99} "
        f"{window.start_us // 1000}"
    )


def line_protocol_lines(closed: Sequence[ClosedWindow]) -> list[str]:
    """The line of each closed window, in order: ``line_protocol(window)``."""
    return _native.line_protocol_lines(closed, line_protocol)


class InfluxSink(Sink):
    name = "influx"

    def __init__(self, url: str, token: str, org: str, bucket: str) -> None:
        self.url, self.token, self.org, self.bucket = url, token, org, bucket
        self.client: InfluxDBClientAsync | None = None

    async def start(self) -> None:
        self.client = InfluxDBClientAsync(
            url=self.url, token=self.token, org=self.org, timeout=30_000
        )

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    async def write(self, batch: FlushBatch) -> None:
        if not batch.closed:
            return
        lines = line_protocol_lines(batch.closed)
        slots = asyncio.Semaphore(CONCURRENT_REQUESTS)

        async def post(begin: int) -> None:
            async with slots:  # a body is built only when its request can go out
                body = "\n".join(lines[begin : begin + LINES_PER_REQUEST])
                await retry_forever(
                    "influx write",
                    lambda: self._post(body),
                    (aiohttp.ClientError, asyncio.TimeoutError, OSError),
                )

        # Each request is retried on its own until it is written (points are idempotent, so
        # their order does not matter); a bug in one cancels the others and propagates as
        # itself, as from the other sinks, not wrapped in the task group's ExceptionGroup.
        try:
            async with asyncio.TaskGroup() as requests:
                for begin in range(0, len(lines), LINES_PER_REQUEST):
                    requests.create_task(post(begin))
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None

    async def _post(self, body: str) -> None:
        assert self.client is not None, "start() the sink first"
        try:
            await self.client.write_api().write(
                bucket=self.bucket,
                org=self.org,
                record=body,
                write_precision=WritePrecision.MS,  # type: ignore[arg-type]
            )
        except ApiException as exc:
            # Nothing is dropped: 429/503 are backpressure; any other refusal (bad token,
            # missing bucket, type conflict) is an operator's problem, retried until fixed.
            headers: Any = exc.headers or {}
            answer: Any = exc.body or b""  # bytes from the async client
            said = (answer if isinstance(answer, str) else answer.decode(errors="replace"))[:200]
            said = said.strip()
            if self.token:  # the server's words are its own: never echo the token
                said = said.replace(self.token, REDACTED)
            if exc.status in (401, 403):
                said = f"{said} ({self._refused_token()})" if said else self._refused_token()
            raise RetryLater(
                f"HTTP {exc.status} {exc.reason}: {said}",
                parse_retry_after(headers.get("Retry-After")),
            ) from None

    def _refused_token(self) -> str:
        """What a 401 or 403 means, without the token."""
        if not self.token:
            return "InfluxDB wants a token: set PULSE_INFLUX_TOKEN or PULSE_INFLUX_TOKEN_FILE"
        return (
            "InfluxDB refused the token of PULSE_INFLUX_TOKEN or PULSE_INFLUX_TOKEN_FILE: "
            f"check that it is valid and may write to bucket {self.bucket!r} of org "
            f"{self.org!r}"
        )
