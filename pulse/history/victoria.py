"""History from VictoriaMetrics, the InfluxDB stand-in of the local stack, by its export API.

VictoriaMetrics stores each line-protocol field as a series of its own, named
``{measurement}_{field}`` with the tags as labels (pulse/sinks/influx.py writes measurement =
metric, tags ``device``, ``window`` and the reading's tags), values as float64 and times in
milliseconds. ``GET /api/v1/export`` returns the raw samples of the series a selector
matches, one JSON object per line; the reader joins the fields of each window by time. A
window's tags may differ from one window to the next (they are the last reading's), so one
window's fields may come from other series than its neighbour's: joining by time over all
of them is still exact, a window having one time. VictoriaMetrics rounds values to 12
significant digits: a window from it is that close to the window written, not equal.
"""

from __future__ import annotations

import math

import aiohttp
import orjson

from models.outputs import AGGREGATES
from pulse.history._store import StoreUnavailable, Window, window_of
from tables.windows import parse_window_spec

TIMEOUT = aiohttp.ClientTimeout(total=10)
"""How long a read may take before the store counts as unavailable."""


def export_selector(device: str, metric: str, window: str) -> str:
    """The series selector of one (device, metric, window)'s fields (names are validated
    names: only ``.`` is special in the name's regular expression, and no label value holds
    a quote)."""
    names = "|".join(AGGREGATES)
    return (
        f'{{__name__=~"{metric.replace(".", "[.]")}_({names})",'
        f'device="{device}",window="{window}"}}'
    )


class VictoriaStore:
    """Reads windows from VictoriaMetrics at ``url`` (``PULSE_INFLUX_URL``)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    @property
    def name(self) -> str:
        return f"VictoriaMetrics {self.url}"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def read(
        self, device: str, metric: str, window: str, since: float, until: float
    ) -> list[Window]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        size_ms = parse_window_spec(window).size_us // 1000
        since_ms, until_ms = math.ceil(since * 1000), math.ceil(until * 1000)
        params = {
            "match[]": export_selector(device, metric, window),
            # Whole seconds around the range (the API's resolution); the exact range below.
            "start": str(math.floor(since)),
            "end": str(math.ceil(until)),
        }
        try:
            async with self._session.get(f"{self.url}/api/v1/export", params=params) as answer:
                body = await answer.read()
                if answer.status != 200:
                    said = body.decode(errors="replace").strip()[:300]
                    raise StoreUnavailable(f"{self.name}: HTTP {answer.status}: {said}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise StoreUnavailable(f"{self.name}: {type(exc).__name__}: {exc}") from None
        fields: dict[int, dict[str, float]] = {}
        prefix = f"{metric}_"
        try:
            for line in body.splitlines():
                if not line.strip():
                    continue
                series = orjson.loads(line)
                name = series["metric"]["__name__"].removeprefix(prefix)
                for ts, value in zip(series["timestamps"], series["values"], strict=True):
                    if since_ms <= ts < until_ms:
                        fields.setdefault(ts, {})[name] = value
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise StoreUnavailable(f"{self.name}: unreadable export ({exc})") from None
        windows = (window_of(ts, size_ms, fields[ts]) for ts in sorted(fields))
        return [w for w in windows if w is not None]
