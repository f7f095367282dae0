"""Live state in Redis: latest values, open and last closed windows, top devices.

Key layout (``P`` is ``PULSE_REDIS_PREFIX``; every key gets a TTL of ``PULSE_STATE_TTL``):

* ``P:device:{device}`` hash: ``{metric}`` = latest value, ``{metric}:ts`` = its event time.
* ``P:open:{window}:{device}:{metric}`` hash: the newest open window's partial aggregates
  plus ``start``, ``end``; deleted when it closes and no newer window is open.
* ``P:closed:{window}:{device}:{metric}`` hash: the most recent closed window.
* ``P:top:{window}:{metric}`` sorted set: device scored by its latest closed window's mean.
* ``P:sliding:{size}:{device}:{metric}`` hash: a sliding window's aggregates plus ``start``
  (exclusive) and ``end`` (inclusive, the key's latest event time); ``{size}`` as written
  after ``sliding:`` in ``PULSE_WINDOWS``.

One flush is one pipelined round trip per chunk of commands, never one per reading; each
key is written once per flush with its latest content.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from models.outputs import seconds
from pulse.sinks._base import FlushBatch, Sink
from pulse.sinks._resp import RespPipeline
from pulse.sinks._retry import retry_forever
from tables.partition_state import ClosedWindow

COMMANDS_PER_ROUND_TRIP = 20_000


class RedisKeys:
    """Names of the keys Pulse writes, under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def device(self, device: str) -> str:
        return f"{self.prefix}:device:{device}"

    def open(self, window: str, device: str, metric: str) -> str:
        return f"{self.prefix}:open:{window}:{device}:{metric}"

    def closed(self, window: str, device: str, metric: str) -> str:
        return f"{self.prefix}:closed:{window}:{device}:{metric}"

    def top(self, window: str, metric: str) -> str:
        return f"{self.prefix}:top:{window}:{metric}"

    def sliding(self, window: str, device: str, metric: str) -> str:
        size = window.removeprefix("sliding:")
        return f"{self.prefix}:sliding:{size}:{device}:{metric}"


def window_fields(aggregates: dict[str, Any], start_us: int, end_us: int) -> dict[str, Any]:
    fields = dict(aggregates)
    fields["start"] = seconds(start_us)
    fields["end"] = seconds(end_us)
    return fields


class RedisSink(Sink):
    name = "redis"

    def __init__(self, url: str, prefix: str, ttl_seconds: int) -> None:
        self.url = url
        self.keys = RedisKeys(prefix)
        self.ttl = ttl_seconds
        self.connection = RespPipeline(url)
        # Open-window keys whose TTL was set, with the window start and when: an open key is
        # rewritten on every flush that changes it, but its TTL needs setting only when a new
        # window starts there (or half a TTL later), which halves the commands on that path.
        self._open_ttl_set: dict[str, tuple[int, float]] = {}

    async def stop(self) -> None:
        await self.connection.close()

    async def write(self, batch: FlushBatch) -> None:
        commands = self._commands(batch)
        for begin in range(0, len(commands), COMMANDS_PER_ROUND_TRIP):
            chunk = commands[begin : begin + COMMANDS_PER_ROUND_TRIP]
            await retry_forever(
                "redis write",
                lambda chunk=chunk: self.connection.execute(chunk),  # type: ignore[misc]
                (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError),
            )

    def _commands(self, batch: FlushBatch) -> list[tuple[Any, ...]]:
        keys, ttl = self.keys, self.ttl
        out: list[tuple[Any, ...]] = []

        devices: dict[str, list[Any]] = {}
        for latest in batch.latest:
            fields = devices.setdefault(latest.device, [])
            fields += (latest.metric, latest.value, f"{latest.metric}:ts", seconds(latest.t_us))
        for device, fields in devices.items():
            key = keys.device(device)
            out.append(("HSET", key, *fields))
            out.append(("EXPIRE", key, ttl))

        ttl_set = self._open_ttl_set
        now = time.monotonic()
        for view in batch.open_views:
            key = keys.open(view.window, view.device, view.metric)
            if view.state is None:
                out.append(("DEL", key))
                ttl_set.pop(key, None)
            else:
                out.append(
                    ("HSET", key, *_flat(window_fields(view.result(), view.start_us, view.end_us)))
                )
                known = ttl_set.get(key)
                if known is None or known[0] != view.start_us or now - known[1] > ttl / 2:
                    out.append(("EXPIRE", key, ttl))
                    ttl_set[key] = (view.start_us, now)

        for view in batch.sliding:
            assert view.state is not None
            key = keys.sliding(view.window, view.device, view.metric)
            sliding_fields = window_fields(view.result(), view.start_us, view.end_us)
            out.append(("DEL", key))  # a shorter window must not keep stale fields
            out.append(("HSET", key, *_flat(sliding_fields)))
            out.append(("EXPIRE", key, ttl))

        newest: dict[tuple[str, str, str], ClosedWindow] = {}
        for window in batch.closed:
            series = (window.window, window.device, window.metric)
            seen = newest.get(series)
            if seen is None or seen.start_us < window.start_us:
                newest[series] = window
        tops: dict[tuple[str, str], list[Any]] = {}
        for (label, device, metric), window in newest.items():
            key = keys.closed(label, device, metric)
            aggregates = window_fields(window.result(), window.start_us, window.end_us)
            out.append(("HSET", key, *_flat(aggregates)))
            out.append(("EXPIRE", key, ttl))
            tops.setdefault((label, metric), []).extend((aggregates["mean"], device))
        for (label, metric), members in tops.items():
            key = keys.top(label, metric)
            out.append(("ZADD", key, *members))
            out.append(("EXPIRE", key, ttl))
        return out


def _flat(fields: dict[str, Any]) -> list[Any]:
    flat: list[Any] = []
    for name, value in fields.items():
        flat += (name, value)
    return flat
