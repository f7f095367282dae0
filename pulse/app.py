"""The Faust app: the frame that runs the readings processor, agents, timers and web views.

``pulse worker`` (or ``faust -A pulse.app worker --without-web``) runs it. Settings come from
the environment when the module is imported, so a bad ``PULSE_*`` value stops startup at once
with a message naming it.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import pkgutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

import faust
from prometheus_client import CollectorRegistry

from pulse.api import ApiContext, HttpServer, Readiness, create_api
from pulse.gc_tuning import SERVICE_THRESHOLDS, freeze_startup
from pulse.history import history_store
from pulse.kafka_clients import broker_credentials
from pulse.metrics import RegistryCollector, WorkerMetrics, worker_collectors
from pulse.redis_clients import redis_client
from pulse.registry.cache import RegistryCache
from pulse.registry.store import RegistryStore
from pulse.settings import Settings
from pulse.sinks._base import SinkHealth
from tables.partition_state import PartitionState

AGENT_PACKAGES = ("agents",)
"""The packages create_app discovers agents in: it imports every module of each (as Faust's
``autodiscover`` does), and each module registers what it adds to an app with
:func:`pulse_agent`. Names, not imports: pulse/ never imports the agents."""

AgentRegistration = Callable[[faust.App, Settings], None]
_registrations: list[AgentRegistration] = []


def pulse_agent(register: AgentRegistration) -> AgentRegistration:
    """Decorator: ``register(app, settings)`` adds an agent (or service) to every app that
    :func:`create_app` builds. The readings processor registers as ``app.pulse_processor``,
    which the worker's health reads (:class:`ReadingsProgress`)."""
    _registrations.append(register)
    return register


def sink_health(app: faust.App) -> list[SinkHealth]:
    """The health of every sink the app's agents run (``/health``, ``/metrics``): an agent
    appends its sinks' when it starts them."""
    found: list[SinkHealth] | None = getattr(app, "pulse_sink_health", None)
    if found is None:
        found = []
        app.pulse_sink_health = found  # type: ignore[attr-defined]
    return found


def worker_metrics(app: faust.App) -> WorkerMetrics:
    """What the app's agents count for ``/metrics`` (pulse.metrics): the readings processor
    and the InfluxDB writer count into it and register themselves on it."""
    found: WorkerMetrics | None = getattr(app, "pulse_worker_metrics", None)
    if found is None:
        found = WorkerMetrics()
        app.pulse_worker_metrics = found  # type: ignore[attr-defined]
    return found


def registry_cache(app: faust.App, settings: Settings) -> RegistryCache:
    """The worker process's one registry cache (PULSE_POSTGRES_URL, through Redis): the
    readings processor judges alerts by it and starts and stops it; the worker's API, when
    it serves one, reads the registry from it."""
    found: RegistryCache | None = getattr(app, "pulse_registry_cache", None)
    if found is None:
        found = RegistryCache(settings, RegistryStore(settings), redis_client(settings))
        app.pulse_registry_cache = found  # type: ignore[attr-defined]
    return found


def discover_agents(packages: Iterable[str] = AGENT_PACKAGES) -> list[AgentRegistration]:
    """Import every module of ``packages`` and return the registrations they made, in the
    order they were made."""
    prefixes = []
    for name in packages:
        package = importlib.import_module(name)
        for module in pkgutil.iter_modules(package.__path__, f"{name}."):
            importlib.import_module(module.name)
        prefixes.append(f"{name}.")
    return [r for r in _registrations if r.__module__.startswith(tuple(prefixes))]


def create_app(settings: Settings | None = None) -> faust.App:
    """Build the app for ``settings`` (default: from the environment)."""
    settings = settings or Settings.from_env()
    # Every recovery consumer would log its (manual) subscription at INFO.
    logging.getLogger("aiokafka.consumer.subscription_state").setLevel(logging.WARNING)
    app = faust.App(
        settings.app_id,
        broker=settings.broker,
        broker_credentials=broker_credentials(settings),
        # Pulse's own aiohttp application serves the HTTP side (pulse/api), not Faust's.
        web_enabled=False,
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=settings.session_timeout / 6,
        topic_partitions=settings.partitions,
        store="memory://",
        # Faust's own discovery scans for module-level @app.agent decorators of one global
        # app; Pulse's agents take the app and settings instead (discover_agents).
        autodiscover=False,
        value_serializer="raw",
        key_serializer="raw",
    )
    app.pulse_settings = settings  # type: ignore[attr-defined]
    # First, so that /health/live answers while the partitions are being assigned.
    app.add_dependency(
        worker_http(
            settings,
            lambda: app.pulse_processor,  # type: ignore[attr-defined]
            sink_health(app),
            worker_metrics(app),
            registry_cache(app, settings),
        )
    )
    for register in discover_agents():
        register(app, settings)
    if getattr(app, "pulse_processor", None) is None:
        raise RuntimeError(f"no module of {AGENT_PACKAGES} added the readings processor")
    return app


class ReadingsProgress(Protocol):
    """What the worker's health shows of the readings processor (agents/readings.py provides
    it as ``app.pulse_processor``)."""

    @property
    def ready(self) -> asyncio.Event:
        """Set once the first assignment has been recovered."""

    @property
    def states(self) -> Mapping[int, PartitionState]:
        """The state of each assigned partition."""

    @property
    def flushes(self) -> int:
        """Flushes completed so far."""


def worker_http(
    settings: Settings,
    processor_of: Callable[[], ReadingsProgress],
    sinks: Sequence[SinkHealth],
    metrics: WorkerMetrics | None = None,
    cache: RegistryCache | None = None,
) -> HttpServer:
    """The worker's HTTP server on ``PULSE_WEB_PORT``: health and metrics, and the whole API
    with ``PULSE_WORKER_SERVES_API=true``. Ready once the first assignment is recovered; the
    body shows the partitions, their next offsets, the flushes done and each sink's state
    (``sinks``: read at each request, agents add theirs as they start). ``/metrics`` shows
    what the agents count into ``metrics`` (pulse.metrics) and the sinks' state; ``cache``:
    the registry cache the processor judges alerts by (its health under ``registry``, its
    counts in ``/metrics``; the API's registry routes read it)."""

    async def readiness() -> Readiness:
        processor = processor_of()
        states = processor.states
        detail = {
            "partitions": sorted(states),
            "open_windows": sum(s.open_windows for s in states.values()),
            "next_offsets": {p: s.next_offset for p, s in states.items()},
            "flushes": processor.flushes,
            "sinks": {health.name: health.document() for health in sinks},
        }
        if cache is not None:
            detail["registry"] = cache.health.document()
        if not processor.ready.is_set():
            return Readiness(False, "partitions not yet assigned and recovered", detail)
        return Readiness(True, "", detail)

    registry = CollectorRegistry(auto_describe=False)
    for collector in worker_collectors(metrics or WorkerMetrics(), sinks):
        registry.register(collector)
    full = settings.worker_serves_api == "true"
    redis = redis_client(settings)
    if cache is not None:
        registry.register(RegistryCollector(cache))
    context = ApiContext(
        settings,
        redis,
        registry,
        readiness,
        history_store(settings) if full else None,
        device_registry=cache if full else None,
        serves_from_redis=False,
    )
    return HttpServer(create_api(context, full=full), settings.web_port)


def tune_gc() -> None:
    """Set the worker process's cyclic garbage collector for a large, long-lived state
    (pulse.gc_tuning: start-up frozen, :data:`~pulse.gc_tuning.SERVICE_THRESHOLDS`).

    The window state (lists and dicts, millions of objects) is acyclic and freed by reference
    counting, but every full collection walks all of it while the loop waits, and each flush's
    outputs live long enough to be promoted, which triggers full collections often.
    tables/_speedups.c creates the state's objects untracked besides (none can be part of a
    cycle). Measured in bench/README.md (the latency run's GC, and "Window outputs in C, off
    the garbage collector").
    """
    freeze_startup(SERVICE_THRESHOLDS)


def __getattr__(name: str) -> faust.App:
    # ``pulse.app:app`` is built on first use, not at import, so tests can import this module.
    # It is the worker's app (``pulse worker``, ``faust -A pulse.app:app worker --without-web``:
    # Pulse serves HTTP itself).
    if name == "app":
        built = create_app()
        tune_gc()
        globals()["app"] = built
        return built
    raise AttributeError(name)
