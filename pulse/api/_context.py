"""What every handler of the API reaches: settings, the Redis client, the metrics registry,
the process's readiness (and, once built, the history store and the registry cache)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from pulse.history import HistoryStore
from pulse.live_state import KnownMetrics
from pulse.redis_clients import RedisClient
from pulse.registry.cache import RegistryCache
from pulse.settings import Settings


@dataclass(frozen=True)
class Readiness:
    """Whether the process can serve: ``reason`` says why not (empty when ready); ``detail``
    adds what ``/health/ready`` shows of the process (the worker's partitions and sinks)."""

    ready: bool
    reason: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class ApiContext:
    """The API's dependencies, one per process (``pulse api`` or a worker serving it)."""

    settings: Settings
    redis: RedisClient
    registry: CollectorRegistry
    readiness: Callable[[], Awaitable[Readiness]]
    """The process's own readiness (a worker: partitions assigned and recovered); the
    dependencies (Redis) are checked beside it by ``/health/*``."""
    store: HistoryStore | None = None
    """The time-series store that history older than Redis holds is read from
    (pulse/history), None where there is none; closed when the application is cleaned up."""
    device_registry: RegistryCache | None = None
    """The device registry's cache (pulse/registry), for ``/api/registry/*`` and
    ``/api/rules``; started with the application and stopped at its cleanup. None: this
    process serves no registry (those paths answer 503)."""
    serves_from_redis: bool = True
    """Whether the process cannot serve without Redis (``pulse api``): then Redis away makes
    ``/health/ready`` 503. A worker goes on without Redis (it mirrors to it)."""
    checks_redis: bool = True
    """Whether ``/health`` lists Redis among the dependencies (``pulse indexer`` uses none)."""
    known_metrics: KnownMetrics = field(default_factory=KnownMetrics)
    """The metrics of the devices answered lately: ``/api/devices/{device}`` reads a known
    device's hash and windows in one round trip (pulse/live_state.py)."""


CONTEXT: web.AppKey[ApiContext] = web.AppKey("pulse_context", ApiContext)
