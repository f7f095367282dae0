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
key is written once per flush with its latest content. A TTL is set when the sink first
writes a key (for an open window: when a new window starts in it), again once half a TTL
has passed, and again after every reconnection (a restarted server may have lost it), not
on every write.
"""

from __future__ import annotations

import asyncio
import time

from models.outputs import AGGREGATES, AggregateText
from pulse.sinks._base import FlushBatch, Sink
from pulse.sinks._resp import RespPipeline, pack
from pulse.sinks._retry import retry_forever
from pulse.sinks._text import aggregate_text, seconds_text
from tables import _native

COMMANDS_PER_ROUND_TRIP = 20_000


class RedisKeys:
    """Names of the keys Pulse writes, under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @property
    def device_prefix(self) -> str:
        return f"{self.prefix}:device:"

    def device(self, device: str) -> str:
        return f"{self.device_prefix}{device}"

    @property
    def open_prefix(self) -> str:
        return f"{self.prefix}:open:"

    def open(self, window: str, device: str, metric: str) -> str:
        return f"{self.open_prefix}{window}:{device}:{metric}"

    @property
    def closed_prefix(self) -> str:
        return f"{self.prefix}:closed:"

    def closed(self, window: str, device: str, metric: str) -> str:
        return f"{self.closed_prefix}{window}:{device}:{metric}"

    @property
    def top_prefix(self) -> str:
        return f"{self.prefix}:top:"

    def top(self, window: str, metric: str) -> str:
        return f"{self.top_prefix}{window}:{metric}"

    def sliding(self, window: str, device: str, metric: str) -> str:
        size = window.removeprefix("sliding:")
        return f"{self.prefix}:sliding:{size}:{device}:{metric}"


WINDOW_FIELDS = (*AGGREGATES, "start", "end")
"""The fields of an open, closed or sliding window's hash."""


def window_hset(key: str, text: AggregateText, start_us: int, end_us: int) -> bytes:
    """``HSET key count .. p99 start end`` packed in RESP from the shared aggregate text.

    Packed as hiredis.pack_command packs it (tables/_speedups_py.py: hset).
    """
    return _native.hset(key, WINDOW_FIELDS, (*text, seconds_text(start_us), seconds_text(end_us)))


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
        # Device keys whose TTL was set, and when: likewise, a device's hash is rewritten on
        # every flush with a new reading of it; entries older than half a TTL are pruned.
        self._device_ttl_set: dict[str, float] = {}
        self._prune_device_ttls_at = 0.0

    async def stop(self) -> None:
        await self.connection.close()

    async def write(self, batch: FlushBatch) -> None:
        while True:
            connections = self.connection.connections
            commands = self._commands(batch)
            for begin in range(0, len(commands), COMMANDS_PER_ROUND_TRIP):
                chunk = commands[begin : begin + COMMANDS_PER_ROUND_TRIP]
                await retry_forever(
                    "redis write",
                    lambda chunk=chunk: self.connection.execute(chunk),  # type: ignore[misc]
                    (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError),
                )
            # The first connection ever is no reconnection: nothing was remembered before it.
            if self.connection.connections <= max(connections, 1):
                return
            # Reconnected meanwhile: the server may be a restarted one that lost keys, and
            # with them the TTLs remembered as set. Forget those and write the batch again
            # (its commands are idempotent), so that no key is left without a TTL.
            self._open_ttl_set.clear()
            self._device_ttl_set.clear()

    def _commands(self, batch: FlushBatch) -> list[bytes]:
        keys, ttl = self.keys, self.ttl
        now = time.monotonic()
        ttl_set = self._device_ttl_set
        if now >= self._prune_device_ttls_at:  # forget devices not seen for half a TTL
            self._device_ttl_set = ttl_set = {
                device: at for device, at in ttl_set.items() if now - at <= ttl / 2
            }
            self._prune_device_ttls_at = now + ttl / 2
        # One HSET per device. A merged batch (a lane that fell behind) may hold several values
        # of a (device, metric): the last is the newest.
        out = _native.latest_commands(batch.latest, keys.device_prefix, ttl_set, now, ttl)

        # Per open view: DEL when no window is open any more, else its HSET, and EXPIRE when a
        # new window starts at the key (or half a TTL after the last).
        open_views = {(v.window, v.device, v.metric): v for v in batch.open_views}
        out += _native.open_view_commands(
            open_views.values(),
            keys.open_prefix,
            self._open_ttl_set,
            now,
            ttl,
            WINDOW_FIELDS,
        )

        for view in {(v.window, v.device, v.metric): v for v in batch.sliding}.values():
            assert view.state is not None
            key = keys.sliding(view.window, view.device, view.metric)
            out.append(pack("DEL", key))  # a shorter window must not keep stale fields
            out.append(window_hset(key, aggregate_text(view), view.start_us, view.end_us))
            out.append(pack("EXPIRE", key, ttl))

        # Closed windows: a merged batch may close several windows of a series, and the one
        # with the latest start is written; each joins its top key unless its mean is null.
        out += _native.closed_window_commands(
            batch.closed, keys.closed_prefix, keys.top_prefix, ttl, WINDOW_FIELDS
        )
        return out
