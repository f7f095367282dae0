"""Closed windows to InfluxDB 2.x as line protocol, through influxdb-client.

One point per closed window, as pulse/measurements.py declares it (``WINDOWS``): measurement =
metric; tags ``device``, ``window`` and the tags of the reading that gave ``last``; fields
``count`` (integer) and ``sum, min, max, mean, first, last, p50, p95, p99`` (floats);
timestamp = window start in milliseconds. The names come from that declaration (the C
version of the flush path, tables/_speedups.c, is held to this module's lines by tests). Line
protocol is built directly (the client's ``Point`` objects cost more than the rest of the pipeline).
The InfluxDB writer (agents/influx_writer.py) makes each line from the window's ``aggregates``
record (:func:`record_line`, :meth:`InfluxSink.read_record`) and writes them with
:class:`InfluxSink`; the alerts' InfluxDB writer makes one point of each alert transition of
the ``alerts`` topic (:func:`alert_line`, measurement ``alerts``) and writes them with
:class:`AlertsInfluxSink`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.client.write_api import WritePrecision
from influxdb_client.rest import ApiException

from models.outputs import AGGREGATES, ClosedWindow, RefusedOutput
from pulse.measurements import ALERTS, WINDOWS, escape_tag
from pulse.settings import REDACTED
from pulse.sinks._base import FlushBatch, RecordSink
from pulse.sinks._retry import (
    ContentRefused,
    RefusedByTarget,
    RetryLater,
    parse_retry_after,
    retry_forever,
)
from pulse.sinks._text import aggregate_text
from pulse.sinks.alerts import AlertRecord, alert_record
from pulse.sinks.dead_letters import OutputDeadLetters
from tables import _native
from tables.aggregators import Summary

LINES_PER_REQUEST = 5_000
"""InfluxDB's recommended batch size."""
CONCURRENT_REQUESTS = 4
"""Requests of one write in flight together: the worker's event loop answers only between
fetches, so one request at a time left the server idle between round trips."""

_DEVICE, _WINDOW = (tag.name for tag in WINDOWS.tags if tag.always)
_FIELDS = ",".join(f"{f.name}={{}}{'i' if f.integer else ''}" for f in WINDOWS.fields)
"""The field set's format: ``count={}i,sum={},...``, one ``{}`` per aggregate's text, in the
order of AGGREGATES (the declaration's order)."""


def line_protocol(window: ClosedWindow) -> str:
    """The line-protocol line of one closed window (tags sorted, as InfluxDB prefers).

    Device, metric, window label and tag keys are validated names that need no escaping
    (see models/reading.py and tables/windows.py); tag values are escaped.
    """
    return _line(
        window.metric,
        window.device,
        window.window,
        Summary.tags(window.state),
        aggregate_text(window),
        window.start_us // 1000,
    )


def _line(
    metric: str,
    device: str,
    window: str,
    tags: dict[str, str],
    texts: Sequence[str],
    start_ms: int,
) -> str:
    if tags:
        tags = dict(tags)
        tags[_DEVICE] = device
        tags[_WINDOW] = window
        tag_text = ",".join(
            f"{key}={escape_tag(value)}"
            for key, value in sorted(tags.items())
            if value  # InfluxDB has no empty tag values: an empty tag is no tag
        )
    else:
        tag_text = f"{_DEVICE}={device},{_WINDOW}={window}"
    return f"{metric},{tag_text} {_FIELDS.format(*texts)} {start_ms}"


_NUMBER = r"(-?[0-9][0-9.eE+-]*)"
_RECORD = re.compile(
    r'\{"device":"([^"\\]+)","metric":"([^"\\]+)","window":"([^"\\]+)",'
    r'"start":(-?[0-9][0-9.eE+-]*),"end":-?[0-9][0-9.eE+-]*,"count":([0-9]+),'
    + ",".join(f'"{name}":{_NUMBER}' for name in AGGREGATES[1:])
    + r',"tags":(\{.*\})\}',
    re.DOTALL,
)
"""The compact record closed_window_json writes (keys in its order, no whitespace, names as
they are): its parts' texts are taken as they are, without parsing and formatting the
numbers again (a sixth of the cost). Any other text goes through orjson."""


_line_heads: dict[bytes, str] = {}
"""The series read so far in records of the form closed_window_json writes, with no tags: a
record's text before ``,"start":`` (``{"device":"d","metric":"m","window":"10s"``) to the
head of its lines (``m,device=d,window=10s ``), at most :data:`LINE_HEADS_KEPT` (forgotten
together when full). A record of such a series with no tags is cut into its line in C
(tables._native.aggregates_line, about a tenth of :func:`record_line`'s parse)."""
LINE_HEADS_KEPT = 1 << 16


def _remember_head(value: bytes, metric: str, device: str, window: str) -> None:
    """Keep the head of the lines of ``value``'s series (a compact record with no tags, whose
    line :func:`record_line` made from these names)."""
    at = value.find(b',"start":')
    if at < 0:
        return
    if len(_line_heads) >= LINE_HEADS_KEPT:
        _line_heads.clear()
    _line_heads[value[:at]] = f"{metric},{_DEVICE}={device},{_WINDOW}={window} "


def record_line(value: bytes | None) -> str:
    """The line of an ``aggregates`` record (pulse/sinks/kafka.py, closed_window_json):
    exactly :func:`line_protocol` of its window, so that the InfluxDB writer, which reads the
    topic back (agents/influx_writer.py), writes the points the flush wrote before.

    The record holds every part of the line: the numbers as the shortest text of their
    floats (``repr`` of the parsed float gives that text back), the count, the tags of the
    reading that gave ``last``, and the window start in seconds (a whole number of
    milliseconds, window steps being whole milliseconds). The compact records Pulse writes
    are cut into their parts' texts (:data:`_RECORD`), and those with no tags of a series
    read before into their line in C (:data:`_line_heads`); anything else is parsed. Raises
    ValueError for a value that is not such a record.
    """
    if type(value) is bytes:
        line = _native.aggregates_line(value, _line_heads)
        if line is not None:
            return line
    try:
        match = _RECORD.fullmatch((value or b"").decode())
    except UnicodeDecodeError:
        match = None
    if match is not None:
        device, metric, window, start, *numbers, tags = match.groups()
        try:
            start_ms = int(start) * 1000 if start.lstrip("-").isdigit() else None
            if start_ms is None:
                start_ms = round(float(start) * 1000)
            tag_values = {} if tags == "{}" else orjson.loads(tags)
        except (ValueError, orjson.JSONDecodeError):
            pass
        else:
            if isinstance(tag_values, dict) and all(
                isinstance(v, str) for v in tag_values.values()
            ):
                if not tag_values and type(value) is bytes:
                    _remember_head(value, metric, device, window)
                return _line(metric, device, window, tag_values, numbers, start_ms)
    try:
        doc = orjson.loads(value or b"")
        names = (doc["device"], doc["metric"], doc["window"])
        start, tags, count = doc["start"], doc["tags"], doc["count"]
        numbers = [doc[name] for name in AGGREGATES[1:]]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"not an aggregates record ({type(exc).__name__}: {exc})") from None
    if not all(isinstance(name, str) and name for name in names):
        raise ValueError("not an aggregates record: device, metric or window is no name")
    if type(count) is not int or type(start) not in (int, float) or not isinstance(tags, dict):
        raise ValueError("not an aggregates record: count, start or tags of the wrong type")
    if not all(isinstance(v, str) for v in tags.values()):
        raise ValueError("not an aggregates record: a tag value is not text")
    texts = [str(count)]
    for number in numbers:
        if type(number) in (int, float):
            texts.append(repr(number))
        else:
            raise ValueError("not an aggregates record: an aggregate is not a number")
    device, metric, window = names
    start_ms = start * 1000 if type(start) is int else round(start * 1000)
    return _line(metric, device, window, tags, texts, start_ms)


def alert_line(record: AlertRecord) -> str:
    """The line of one alert transition (measurement ``alerts``, pulse/measurements.py):
    tags rule, device, site (if any), severity, state, metric, window (if any: an absence
    rule has none); fields value (if any), threshold, silenced, id; time = the transition's
    end in nanoseconds. Everything comes from the record, so a repeat is the same point."""
    tags = {
        "rule": record.rule,
        "device": record.device,
        "severity": record.severity,
        "state": record.state,
        "metric": record.metric,
    }
    if record.site:
        tags["site"] = record.site
    if record.window:
        tags["window"] = record.window
    fields: dict[str, float | bool | str] = {
        "threshold": record.threshold,
        "silenced": record.silenced,
        "id": record.id,
    }
    if record.value is not None:
        fields["value"] = record.value
    return ALERTS.line(tags, fields, record.end_us * 1000)


def line_protocol_lines(closed: Sequence[ClosedWindow]) -> list[str]:
    """The line of each closed window, in order: ``line_protocol(window)``."""
    return _native.line_protocol_lines(closed, line_protocol)


BACKPRESSURE_STATUSES = frozenset({408, 429})
"""Besides every 5xx: answers that mean "later" (Retry-After honoured)."""
CONTENT_STATUSES = frozenset({400, 413, 422})
"""Answers that refuse what was sent: InfluxDB 2 answers 400 for a line it cannot parse
(rejecting the request), 422 when it dropped some points (a field type conflict, a point
outside the retention; it wrote the others), 413 for a request too large."""


class InfluxSink(RecordSink[str]):
    """Closed windows to InfluxDB 2's ``/api/v2/write``, each request retried until written.

    Every answer is sorted (pulse/sinks/_retry.py): 429 and 5xx (and connection errors) are
    backpressure, waited out; 400, 413 and 422 refuse the content: the request is split in
    halves until each refused line is alone (the lines of a half that goes through are
    written; a repeat of a line InfluxDB already took is an identical point), and each such
    line goes to the output dead-letter topic with InfluxDB's answer; after a 413 this
    sink's requests stay at most half as long. Any other refusal (401, 403, a missing bucket's
    404) is the client's: kept, retried with backoff, shown in :attr:`health`.
    """

    name = "influx"
    precision = WritePrecision.MS
    """The unit of the lines' timestamps (the windows' points are in milliseconds)."""

    def __init__(
        self,
        url: str,
        token: str,
        org: str,
        bucket: str,
        dead_letters: OutputDeadLetters | None = None,
        name: str | None = None,
    ) -> None:
        self.name = name or type(self).name
        """Its name in /health, /metrics and dead letters: a second sink of the same
        InfluxDB (the pipeline's stats, agents/stats.py) is told apart by it."""
        self.url, self.token, self.org, self.bucket = url, token, org, bucket
        self.dead_letters = dead_letters
        self.client: InfluxDBClientAsync | None = None
        self.lines_per_request = LINES_PER_REQUEST

    @property
    def target(self) -> str:
        """Where the lines go, for logs and dead letters (no token)."""
        return f"InfluxDB {self.url} bucket {self.bucket}"

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
        await self.write_records(lines, [window.device.encode() for window in batch.closed])

    def read_record(self, value: bytes | None) -> str:
        """The line of an ``aggregates`` record (:func:`record_line`)."""
        return record_line(value)

    async def write_records(self, lines: Sequence[str], keys: Sequence[bytes | None]) -> None:
        """Write ``lines`` (``keys[i]``: the device of ``lines[i]``, for its dead letter);
        returns once every line is written or, refused for its content, dead-lettered."""
        slots = asyncio.Semaphore(CONCURRENT_REQUESTS)
        refused: list[RefusedOutput] = []

        async def post(begin: int, end: int) -> None:
            async with slots:  # a body is built only when its request can go out
                body = "\n".join(lines[begin:end])
                try:
                    await retry_forever(
                        "influx write",
                        lambda: self._post(body),
                        (aiohttp.ClientError, asyncio.TimeoutError, OSError),
                        self.health,
                    )
                    return
                except ContentRefused as exc:
                    answer = exc
            if end - begin == 1:
                refused.append(self._refused(answer.answer, keys[begin], lines[begin]))
                return
            if answer.too_large:
                self.lines_per_request = min(self.lines_per_request, max((end - begin) // 2, 1))
            middle = (begin + end) // 2
            requests.create_task(post(begin, middle))
            requests.create_task(post(middle, end))

        # Each request is retried on its own until it is written (points are idempotent, so
        # their order does not matter); a bug in one cancels the others and propagates as
        # itself, as from the other sinks, not wrapped in the task group's ExceptionGroup.
        try:
            async with asyncio.TaskGroup() as requests:
                step = self.lines_per_request
                for begin in range(0, len(lines), step):
                    requests.create_task(post(begin, min(begin + step, len(lines))))
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        if refused:
            refused.sort(key=lambda letter: letter.output)  # the same order whatever the timing
            await self._dead_letters().store(refused, self.health)

    def _refused(self, answer: str, key: bytes | None, line: str) -> RefusedOutput:
        return self._dead_letters().refused(self.name, self.target, answer, key, line.encode())

    def _dead_letters(self) -> OutputDeadLetters:
        if self.dead_letters is None:
            raise RuntimeError("InfluxSink: a refused line, and no output dead-letter topic")
        return self.dead_letters

    async def _post(self, body: str) -> None:
        assert self.client is not None, "start() the sink first"
        try:
            await self.client.write_api().write(
                bucket=self.bucket,
                org=self.org,
                record=body,
                write_precision=self.precision,  # type: ignore[arg-type]
            )
        except ApiException as exc:
            # The server's words are its own: never echo the token; a 401 or 403 says
            # which setting to check.
            answer: Any = exc.body or b""  # bytes from the async client
            said = (answer if isinstance(answer, str) else answer.decode(errors="replace")).strip()
            if self.token:
                said = said.replace(self.token, REDACTED)
            if exc.status in (401, 403):
                said = f"{said} ({self._refused_token()})" if said else self._refused_token()
            raise refusal(exc.status, exc.reason, said, exc.headers) from None

    def _refused_token(self) -> str:
        """What a 401 or 403 means, without the token."""
        if not self.token:
            return "InfluxDB wants a token: set PULSE_INFLUX_TOKEN or PULSE_INFLUX_TOKEN_FILE"
        return (
            "InfluxDB refused the token of PULSE_INFLUX_TOKEN or PULSE_INFLUX_TOKEN_FILE: "
            f"check that it is valid and may write to bucket {self.bucket!r} of org "
            f"{self.org!r}"
        )


class AlertsInfluxSink(InfluxSink):
    """Alert transitions to InfluxDB, one point each (:func:`alert_line`, nanosecond
    timestamps), under InfluxSink's guarantees; written by agents/influx_writer.py's
    AlertsInfluxWriter from the ``alerts`` topic, never by a flush."""

    name = "influx-alerts"
    precision = WritePrecision.NS

    def read_record(self, value: bytes | None) -> str:
        """The line of an ``alerts`` record (:func:`pulse.sinks.alerts.alert_record`)."""
        return alert_line(alert_record(value))

    async def write(self, batch: FlushBatch) -> None:
        """Nothing: this sink is written from the alerts topic, never by a flush."""


def refusal(
    status: int | None, reason: str | None, body: str | bytes | None, headers: Any
) -> Exception:
    """The exception of pulse/sinks/_retry.py that InfluxDB's answer ``status`` means."""
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    answer = f"HTTP {status} {reason or ''}".rstrip() + (f": {body.strip()}" if body else "")
    code = status or 0
    if code >= 500 or code in BACKPRESSURE_STATUSES or code == 0:
        retry_after = parse_retry_after((headers or {}).get("Retry-After"))
        return RetryLater(answer[:500], retry_after)
    if code in CONTENT_STATUSES:
        return ContentRefused(answer, too_large=code == 413)
    return RefusedByTarget(answer[:500])
