"""Redis in front of the registry: the snapshot a process uses, kept current by NOTIFY, and
the registry as of any version, for a replay.

:class:`RegistryCache` keeps three copies of the newest version, nearest first:

* **in process** (:meth:`RegistryCache.current`): the :class:`models.alerts.Registry` the
  hot path reads, no I/O. It is replaced whole by a newer version, never by an older one and
  never emptied, so a reader always has one once the first load succeeded; listeners
  (:meth:`RegistryCache.add_listener`) are told of each replacement.
* **in Redis**, ``{PULSE_REDIS_PREFIX}:registry:snapshot``, a hash of ``version`` and
  ``snapshot`` (its JSON, :meth:`models.registry.RegistrySnapshot.document`), TTL
  ``PULSE_REGISTRY_CACHE_TTL``: read-through, cache-aside. Scripts write it only with a
  newer version and drop it only when older than a version announced, so a slow process
  never puts an older snapshot over a newer one.
* **in PostgreSQL**, the system of record (:class:`pulse.registry.store.RegistryStore`).

A dedicated connection LISTENs on ``pulse_registry``. Each notification (the new version)
drops the Redis copy if it is older, then reloads: from Redis if another process already
put that version (or a newer one) there, else from PostgreSQL, then into Redis.

Older versions (:meth:`RegistryCache.at_version`, what a replay judges with) come from a
small in-process LRU by version, then from Redis's ``{PULSE_REDIS_PREFIX}:registry:version:V``
(the snapshot of version V, same TTL; written by every read of PostgreSQL, so each version a
process loaded is there), then from PostgreSQL's append-only history. A version's content
never changes, so every copy of it is exact.

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
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson
import psycopg
import psycopg_pool
from psycopg import AsyncConnection

from models.alerts import Registry
from models.registry import RegistrySnapshot
from pulse.redis_clients import RedisClient
from pulse.registry._db import CHANNEL, connect, describe_error
from pulse.registry.store import RegistryStore
from pulse.settings import Settings

log = logging.getLogger(__name__)

RECONNECT_SECONDS = 2.0
"""Seconds between two tries to reach PostgreSQL again while it is away."""
HISTORY_SIZE = 16
"""Versions :meth:`RegistryCache.at_version` keeps in process (the least recently used
leaves first)."""

Listener = Callable[[Registry], None]
"""Told of each new registry version a cache uses (:meth:`RegistryCache.add_listener`)."""


class RegistryUnavailable(Exception):
    """A registry version that is cached nowhere and that PostgreSQL cannot give now
    (away, or refusing); the message says which version and what PostgreSQL said."""

    def __init__(self, version: int, reason: str) -> None:
        super().__init__(
            f"registry version {version}: not cached (in process or Redis), and {reason}"
        )
        self.version = version


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
    """The registry of one process (see the module doc). :meth:`start` loads it and starts
    listening; :meth:`stop` ends both. Counts for ``/metrics``: ``hits`` (loads of the newest
    version served by Redis), ``misses`` (loads that had to read PostgreSQL)."""

    def __init__(
        self,
        settings: Settings,
        store: RegistryStore,
        redis: RedisClient,
        reconnect_seconds: float = RECONNECT_SECONDS,
        history_size: int = HISTORY_SIZE,
    ) -> None:
        self.settings = settings
        self.reconnect_seconds = reconnect_seconds
        self.store = store
        self.redis = redis
        self.key = f"{settings.redis_prefix}:registry:snapshot"
        self.version_key_prefix = f"{settings.redis_prefix}:registry:version:"
        self.health = RegistryHealth()
        self.hits = 0
        self.misses = 0
        self.history_size = history_size
        self._snapshot: RegistrySnapshot | None = None
        self._loaded_at: float | None = None
        self._history: OrderedDict[int, Registry] = OrderedDict()
        self._listeners: list[Listener] = []
        self.listening = asyncio.Event()
        """Set while the cache LISTENs and, since it began to, has loaded PostgreSQL's newest
        version (so the copy in use is no staler than a notification in flight); cleared
        when PostgreSQL is lost. At start the copy may come from Redis before it is set."""
        self._task: asyncio.Task[None] | None = None
        self._put = self.redis.register_script(_PUT)
        self._drop_older = self.redis.register_script(_DROP_OLDER)

    # -- the copy in use: no I/O -------------------------------------------------------

    def current(self) -> Registry | None:
        """The registry in use (the newest version this process has loaded), None until a
        first load succeeded. No I/O: for the hot path."""
        snapshot = self._snapshot
        return None if snapshot is None else snapshot.registry

    @property
    def snapshot(self) -> RegistrySnapshot | None:
        """The copy in use with its webhooks (:meth:`current` is its registry)."""
        return self._snapshot

    @property
    def version(self) -> int | None:
        """The version of the copy in use (None: none yet)."""
        return None if self._snapshot is None else self._snapshot.version

    def age(self) -> float | None:
        """Seconds since the copy in use was loaded (None: none yet)."""
        return None if self._loaded_at is None else time.monotonic() - self._loaded_at

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(registry)`` each time the copy in use is replaced by a newer
        version, at once in the event loop, after :meth:`current` returns it, in the order
        listeners were added. Each version is told once per listener, in increasing order
        (versions may be skipped when several changes land before a reload). A listener
        raising is logged and does not stop the others or the cache."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop telling ``listener`` (ValueError if it was not added)."""
        self._listeners.remove(listener)

    # -- any version, for a replay ----------------------------------------------------

    async def at_version(self, version: int) -> Registry:
        """The registry exactly as of ``version``: equal to what :meth:`current` returned
        while it was that version, in any process. From the copy in use or the in-process
        LRU (the ``history_size`` versions used last), else Redis's copy of that version,
        else PostgreSQL's history (then put into both caches).

        Raises :class:`RegistryUnavailable` when PostgreSQL had to be read and could not
        (away or refusing), :class:`pulse.registry.store.RegistryNotFound` for a version not
        made yet (or negative)."""
        snapshot = self._snapshot
        if snapshot is not None and snapshot.version == version:
            return snapshot.registry
        found = self._history.get(version)
        if found is not None:
            self._history.move_to_end(version)
            return found
        try:
            held = await self.redis.get(f"{self.version_key_prefix}{version}")
        except Exception as exc:  # Redis away: PostgreSQL still knows
            log.debug("registry: cannot read version %d from Redis: %s", version, exc)
            held = None
        if held is not None:
            registry = RegistrySnapshot.from_document(orjson.loads(held)).registry
            self._remember(registry)
            return registry
        try:
            read = await self.store.snapshot(version)
        except (psycopg.Error, psycopg_pool.PoolTimeout, OSError) as exc:
            raise RegistryUnavailable(
                version, f"cannot be read: {describe_error(self.settings, exc)}"
            ) from exc
        self._remember(read.registry)
        await self._put_version(read)
        return read.registry

    def _remember(self, registry: Registry) -> None:
        self._history[registry.version] = registry
        self._history.move_to_end(registry.version)
        while len(self._history) > self.history_size:
            self._history.popitem(last=False)

    # -- loading and listening --------------------------------------------------------

    async def start(self) -> None:
        """Load a first snapshot (Redis first; PostgreSQL away is no error) and listen."""
        await self.store.open()
        with contextlib.suppress(Exception):
            if await self._from_redis(0) is not None:
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
        Redis's if it holds one that new, else PostgreSQL's, which then goes into Redis
        (as the newest, and as its version). Raises what PostgreSQL raised when it had to be
        read and could not."""
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
        await self._put_version(snapshot)
        return snapshot

    async def _put_version(self, snapshot: RegistrySnapshot) -> None:
        try:
            await self.redis.set(
                f"{self.version_key_prefix}{snapshot.version}",
                orjson.dumps(snapshot.document()),
                ex=self.settings.registry_cache_ttl,
            )
        except Exception as exc:  # Redis away: PostgreSQL still has it
            log.debug("registry: cannot write version %d to Redis: %s", snapshot.version, exc)

    async def _from_redis(self, at_least: int) -> RegistrySnapshot | None:
        held = await self.redis.hmget(self.key, ["version", "snapshot"])
        if held[0] is None or held[1] is None or int(held[0]) < at_least:
            return None
        snapshot = RegistrySnapshot.from_document(orjson.loads(held[1]))
        self._use(snapshot)
        return snapshot

    def _use(self, snapshot: RegistrySnapshot) -> None:
        """Make ``snapshot`` the copy in use if it is newer, and tell the listeners."""
        if self._snapshot is not None and snapshot.version <= self._snapshot.version:
            return
        self._snapshot = snapshot
        self._loaded_at = time.monotonic()
        self._remember(snapshot.registry)
        for listener in list(self._listeners):
            try:
                listener(snapshot.registry)
            except Exception:
                log.exception("registry: a listener of version %d failed", snapshot.version)

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
                self.listening.set()
                async for notice in conn.notifies():
                    announced = int(notice.payload)
                    if self._snapshot is not None and announced <= self._snapshot.version:
                        continue
                    with contextlib.suppress(Exception):
                        await self._drop_older(keys=[self.key], args=[announced])
                    await self.load(announced)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.listening.clear()
                self.health.unavailable(describe_error(self.settings, exc))
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
            await asyncio.sleep(self.reconnect_seconds)
