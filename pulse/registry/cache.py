"""Redis in front of the registry: the snapshot a process uses, kept current by NOTIFY.

:class:`RegistryCache` keeps three copies, nearest first:

* **in process** (:attr:`RegistryCache.snapshot`): the value the hot path reads, an
  attribute, no I/O. It is replaced whole by a newer snapshot, never emptied, so a reader
  always has one once the first load succeeded.
* **in Redis**, ``{PULSE_REDIS_PREFIX}:registry:snapshot``, a hash of ``version`` and
  ``snapshot`` (its JSON), TTL ``PULSE_REGISTRY_CACHE_TTL``: read-through, cache-aside.
  Scripts write it only with a newer version and drop it only when older than a version
  announced, so a slow process never puts an older snapshot over a newer one.
* **in PostgreSQL**, the system of record (:class:`pulse.registry.store.RegistryStore`).

A dedicated connection LISTENs on ``pulse_registry``. Each notification (the new version)
drops the Redis copy if it is older, then reloads: from Redis if another process already
put that version (or a newer one) there, else from PostgreSQL, then into Redis.

PostgreSQL away: the process keeps the snapshot it has (or takes Redis's, at start), says
so once in the log and in :attr:`health` (``unavailable``), and reconnects every few
seconds. Once back it LISTENs again and reloads the newest version, so the changes made
meanwhile, and any made after, are picked up. Redis away: loads come from PostgreSQL alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
from psycopg import AsyncConnection

from models.registry import RegistrySnapshot
from pulse.redis_clients import RedisClient
from pulse.registry._db import CHANNEL, connect, describe_error
from pulse.registry.store import RegistryStore
from pulse.settings import Settings

log = logging.getLogger(__name__)

RECONNECT_SECONDS = 2.0
"""Seconds between two tries to reach PostgreSQL again while it is away."""

# KEYS[1] the snapshot's hash; ARGV version, JSON, TTL. Written only over an older version.
_PUT = """
local held = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
if held < tonumber(ARGV[1]) then
    redis.call('HSET', KEYS[1], 'version', ARGV[1], 'snapshot', ARGV[2])
    redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
    return 1
end
return 0
"""
# KEYS[1] the snapshot's hash; ARGV version announced. Dropped only when older.
_DROP_OLDER = """
local held = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
if held >= 0 and held < tonumber(ARGV[1]) then
    redis.call('DEL', KEYS[1])
    return 1
end
return 0
"""


class RegistryHealth:
    """Whether the registry's system of record answers, as ``/health`` shows it: ``ok`` or
    ``unavailable`` with ``reason`` and ``since`` (epoch seconds of the change). A change is
    logged once, not each retry."""

    OK = "ok"
    UNAVAILABLE = "unavailable"

    def __init__(self) -> None:
        self.state = self.OK
        self.reason: str | None = None
        self.since = time.time()

    def ok(self) -> None:
        if self.state != self.OK:
            log.warning("registry: PostgreSQL answers again after %.1f s", time.time() - self.since)
            self.state, self.reason, self.since = self.OK, None, time.time()

    def unavailable(self, reason: str) -> None:
        if self.state != self.UNAVAILABLE:
            log.warning(
                "registry: PostgreSQL unavailable, using the cached snapshot until it is back: %s",
                reason,
            )
            self.state, self.since = self.UNAVAILABLE, time.time()
        self.reason = reason

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"state": self.state, "since": self.since}
        if self.reason is not None:
            doc["reason"] = self.reason
        return doc


class RegistryCache:
    """The registry snapshot of one process (see the module doc). :meth:`start` loads it and
    starts listening; :meth:`stop` ends both. Counts for ``/metrics``: ``hits`` (loads
    served by Redis), ``misses`` (loads that had to read PostgreSQL) and ``loaded_at``."""

    def __init__(
        self,
        settings: Settings,
        store: RegistryStore,
        redis: RedisClient,
        reconnect_seconds: float = RECONNECT_SECONDS,
    ) -> None:
        self.settings = settings
        self.reconnect_seconds = reconnect_seconds
        self.store = store
        self.redis = redis
        self.key = f"{settings.redis_prefix}:registry:snapshot"
        self.health = RegistryHealth()
        self.snapshot: RegistrySnapshot | None = None
        """The copy in use; None until a load succeeded (PostgreSQL and Redis both away)."""
        self.loaded_at: float | None = None
        """Monotonic time the copy in use was loaded."""
        self.hits = 0
        self.misses = 0
        self.reloaded = asyncio.Event()
        """Set after each load (tests wait on it)."""
        self._task: asyncio.Task[None] | None = None
        self._put = self.redis.register_script(_PUT)
        self._drop_older = self.redis.register_script(_DROP_OLDER)

    @property
    def version(self) -> int | None:
        return None if self.snapshot is None else self.snapshot.version

    def age(self) -> float | None:
        """Seconds since the copy in use was loaded (None: none yet)."""
        return None if self.loaded_at is None else time.monotonic() - self.loaded_at

    async def start(self) -> None:
        """Load a first snapshot (Redis first; PostgreSQL away is no error) and listen."""
        await self.store.open()
        with contextlib.suppress(Exception):
            await self._from_redis(0)
        if self.snapshot is not None:
            self.hits += 1
        self._task = asyncio.create_task(self._listen(), name="registry-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.store.close()

    async def load(self, announced: int = 0) -> RegistrySnapshot:
        """Make the newest snapshot (at least version ``announced``) the copy in use:
        Redis's if it holds one that new, else PostgreSQL's, which then goes into Redis.
        Raises what PostgreSQL raised when it had to be read and could not."""
        found = await self._from_redis(announced) if announced else None
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        snapshot = await self.store.snapshot()
        self._use(snapshot)
        try:
            body = orjson.dumps(snapshot.document())
            await self._put(
                keys=[self.key], args=[snapshot.version, body, self.settings.registry_cache_ttl]
            )
        except Exception as exc:  # Redis away: the copy in process is what counts
            log.debug("registry: cannot write the snapshot to Redis: %s", exc)
        return snapshot

    async def _from_redis(self, at_least: int) -> RegistrySnapshot | None:
        held = await self.redis.hmget(self.key, ["version", "snapshot"])
        if held[0] is None or held[1] is None or int(held[0]) < at_least:
            return None
        snapshot = RegistrySnapshot.from_document(orjson.loads(held[1]))
        self._use(snapshot)
        return snapshot

    def _use(self, snapshot: RegistrySnapshot) -> None:
        if self.snapshot is None or snapshot.version >= self.snapshot.version:
            self.snapshot = snapshot
            self.loaded_at = time.monotonic()
        self.reloaded.set()

    async def _listen(self) -> None:
        """LISTEN, load, then reload at each notification; on any failure of PostgreSQL say
        so once and start over every ``reconnect_seconds``."""
        while True:
            conn: AsyncConnection | None = None
            try:
                conn = await connect(self.settings, autocommit=True)
                await conn.execute(f"LISTEN {CHANNEL}")
                # Listening before loading: a change committed in between is notified.
                await self.load()
                self.health.ok()
                async for notice in conn.notifies():
                    announced = int(notice.payload)
                    if self.snapshot is not None and announced <= self.snapshot.version:
                        continue
                    with contextlib.suppress(Exception):
                        await self._drop_older(keys=[self.key], args=[announced])
                    await self.load(announced)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.health.unavailable(describe_error(self.settings, exc))
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
            await asyncio.sleep(self.reconnect_seconds)
