"""History of closed windows for readers (``/api/history``, ``pulse history``): Redis first,
the time-series store behind it, cache-aside.

:class:`HistoryReader` answers the windows of one (device, metric, window) whose start is in
``[since, until)``, oldest first, each marked with its ``source``:

* ``redis``: from ``P:history:{window}:{device}:{metric}``, the newest
  ``PULSE_HISTORY_LENGTH`` closed windows (pulse/sinks/history.py), each answered as the
  JSON Redis holds (an ``orjson.Fragment``: a 360-window answer is written without parsing
  360 windows and building them again);
* when ``since`` reaches before the oldest window Redis holds (or Redis holds none), the
  windows before it are read from the store (:class:`HistoryStore`: :class:`VictoriaStore`
  or :class:`InfluxStore`, by ``PULSE_HISTORY_STORE``), ``store``, and cached in Redis under
  ``P:history-cache:{window}:{device}:{metric}:{since}:{until}`` (that part's range) for
  ``PULSE_HISTORY_CACHE_TTL`` seconds; a read within that time gets them from there,
  ``cache``.

A store that cannot answer leaves the answer to what Redis holds, with ``store_error``
saying why; Redis errors propagate (the API answers 503).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from models.outputs import WINDOW_FIELDS
from pulse.history._store import HistoryStore, StoreUnavailable, Window
from pulse.history.influx import InfluxStore, flux_query
from pulse.history.victoria import VictoriaStore
from pulse.redis_clients import RedisClient
from pulse.settings import Settings
from pulse.sinks.redis import RedisKeys

__all__ = [
    "WINDOW_FIELDS",
    "History",
    "HistoryReader",
    "HistoryStore",
    "InfluxStore",
    "StoreUnavailable",
    "VictoriaStore",
    "Window",
    "cache_key",
    "flux_query",
    "history_store",
]

SOURCES = ("redis", "store", "cache")


def history_store(settings: Settings) -> HistoryStore:
    """The store ``PULSE_HISTORY_STORE`` names, at ``PULSE_INFLUX_URL``."""
    if settings.history_store == "victoria":
        return VictoriaStore(settings.influx_url)
    return InfluxStore(
        settings.influx_url, settings.influx_token, settings.influx_org, settings.influx_bucket
    )


@dataclass
class History:
    """An answer of :meth:`HistoryReader.read`."""

    windows: list[Window | orjson.Fragment] = field(default_factory=list)
    """Oldest first, each with its ``source``: those from Redis as JSON for orjson to write
    (``orjson.loads(orjson.dumps(windows))`` reads them all)."""
    sources: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SOURCES, 0))
    """How many windows came from each source."""
    store_error: str | None = None
    """Why windows before what Redis holds could not be read (None: none were needed, or
    they were read)."""


def cache_key(
    prefix: str, device: str, metric: str, window: str, since: float, until: float
) -> str:
    """The key a store range is cached under (the bounds as the shortest text of their
    floats)."""
    return f"{prefix}:history-cache:{window}:{device}:{metric}:{float(since)!r}:{float(until)!r}"


class HistoryReader:
    """Reads history (see the module doc) through ``client`` (redis-py's asyncio client, bytes
    replies) and ``store`` (None: there is none; older windows are then left out, with
    ``store_error`` saying so)."""

    def __init__(
        self, client: RedisClient, prefix: str, store: HistoryStore | None, cache_ttl: int
    ) -> None:
        self.client, self.prefix, self.store, self.cache_ttl = client, prefix, store, cache_ttl

    async def read(
        self, device: str, metric: str, window: str, since: float, until: float
    ) -> History:
        """The windows of (device, metric, window label) starting in ``[since, until)``."""
        answer = History()
        if until <= since:
            return answer
        key = RedisKeys(self.prefix).history(window, device, metric)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(key, repr(float(since)), f"({float(until)!r}")
            pipe.zrange(key, 0, 0, withscores=True)
            members, oldest = await pipe.execute()
        # The store holds what is older than the oldest window Redis holds (all, if none).
        upper = until if not oldest else min(until, float(oldest[0][1]))
        older: list[Window] = []
        if since < upper:
            older, source = await self._older(answer, device, metric, window, since, upper)
            older = [{**w, "source": source} for w in older if since <= w["start"] < upper]
        if older:
            answer.sources[older[0]["source"]] = len(older)
        answer.sources["redis"] = len(members)
        # A member is a JSON object (pulse/sinks/history.py): its source goes before its "}".
        answer.windows = [*older, *(orjson.Fragment(m[:-1] + _FROM_REDIS) for m in members)]
        return answer

    async def _older(
        self, answer: History, device: str, metric: str, window: str, since: float, until: float
    ) -> tuple[list[Window], str]:
        """The store's windows in ``[since, until)`` and where they came from: the cache if it
        holds them; ``[]`` with ``answer.store_error`` set when the store cannot say."""
        key = cache_key(self.prefix, device, metric, window, since, until)
        cached = await self.client.get(key)
        if cached is not None:
            return list(orjson.loads(cached)), "cache"
        if self.store is None:
            answer.store_error = "no time-series store configured"
            return [], "store"
        try:
            windows = await self.store.read(device, metric, window, since, until)
        except StoreUnavailable as exc:
            answer.store_error = str(exc)
            return [], "store"
        await self.client.set(key, orjson.dumps(windows), ex=self.cache_ttl)
        return windows, "store"


_FROM_REDIS = b',"source":"redis"}'
