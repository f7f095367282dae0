"""History from InfluxDB 2 by a Flux query (influxdb-client's async query API).

:func:`flux_query` builds the query text alone (a pure function, tested as such: no InfluxDB
2 runs on the build machines, see shared/notes/influx-standin.md); :class:`InfluxStore`
sends it and reads the annotated CSV InfluxDB answers. The query selects the points the
InfluxDB writer wrote for one (device, metric, window) in ``[since, until)`` (Flux's range:
start inclusive, stop exclusive), pivots each window's fields into one row and merges the
series that differ only by the reading's tags into one table, in time order.
"""

from __future__ import annotations

import datetime
import math

import aiohttp
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.rest import ApiException

from models.outputs import AGGREGATES
from pulse.history._store import StoreUnavailable, Window, window_of
from pulse.settings import REDACTED
from tables.windows import parse_window_spec

TIMEOUT_MS = 10_000
"""How long a query may take before the store counts as unavailable."""


def flux_string(text: str) -> str:
    """``text`` as a Flux string literal: backslash, double quote and the interpolation
    ``${`` escaped (Flux strings interpolate ``${...}``)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return f'"{escaped}"'


def flux_time(seconds: float) -> str:
    """Epoch seconds as a Flux RFC 3339 time literal, to the microsecond (rounded up, as a
    range bound that leaves out nothing of the microsecond it names)."""
    us = math.ceil(round(seconds * 1_000_000, 3))
    whole, fraction = divmod(us, 1_000_000)
    moment = datetime.datetime.fromtimestamp(whole, datetime.UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{fraction:06d}Z" if fraction else f"{text}Z"


def flux_query(
    bucket: str, device: str, metric: str, window: str, since: float, until: float
) -> str:
    """The Flux query of the windows of (device, metric, window label) starting in
    ``[since, until)``: one row per window, columns ``_time`` and the aggregates."""
    columns = ", ".join(flux_string(name) for name in ("_time", *AGGREGATES))
    return (
        f"from(bucket: {flux_string(bucket)})\n"
        f"  |> range(start: {flux_time(since)}, stop: {flux_time(until)})\n"
        f"  |> filter(fn: (r) => r._measurement == {flux_string(metric)}"
        f" and r.device == {flux_string(device)} and r.window == {flux_string(window)})\n"
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
        "  |> group()\n"
        f"  |> keep(columns: [{columns}])\n"
        '  |> sort(columns: ["_time"])\n'
    )


class InfluxStore:
    """Reads windows from InfluxDB 2 at ``url`` (``PULSE_INFLUX_URL``, the writer's token,
    org and bucket)."""

    def __init__(self, url: str, token: str, org: str, bucket: str) -> None:
        self.url, self.token, self.org, self.bucket = url, token, org, bucket
        self._client: InfluxDBClientAsync | None = None

    @property
    def name(self) -> str:
        return f"InfluxDB {self.url} bucket {self.bucket}"

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def read(
        self, device: str, metric: str, window: str, since: float, until: float
    ) -> list[Window]:
        if self._client is None:  # the async client must be made on the running loop
            self._client = InfluxDBClientAsync(
                url=self.url, token=self.token, org=self.org, timeout=TIMEOUT_MS
            )
        size_ms = parse_window_spec(window).size_us // 1000
        query = flux_query(self.bucket, device, metric, window, since, until)
        try:
            tables = await self._client.query_api().query(query, org=self.org)
        except ApiException as exc:
            body = exc.body or b""
            said = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
            if self.token:
                said = said.replace(self.token, REDACTED)
            raise StoreUnavailable(
                f"{self.name}: HTTP {exc.status}: {said.strip()[:300]}"
            ) from None
        except (InfluxDBError, aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            # Away, too slow, or an answer the client cannot read.
            said = str(exc).replace(self.token, REDACTED) if self.token else str(exc)
            raise StoreUnavailable(f"{self.name}: {type(exc).__name__}: {said}") from None
        out = []
        for table in tables:
            for record in table.records:
                values = record.values
                moment = values.get("_time")
                if not isinstance(moment, datetime.datetime):
                    continue
                start_ms = round(moment.timestamp() * 1000)
                found = window_of(start_ms, size_ms, values)
                if found is not None:
                    out.append(found)
        out.sort(key=lambda w: w["start"])
        return out
