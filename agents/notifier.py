"""The notifier (``pulse notifier``): topic ``alerts`` delivered to the registry's webhooks.

A process of its own (not a child of the workers): a :class:`Notifier` reads the ``alerts``
topic with the consumer group ``{PULSE_APP_ID}-notifier`` and its own committed offsets
(agents/topic_writer.py), hands each fetch to the webhook sink (pulse/sinks/webhooks.py:
matching, headers, retries, dead letters, order) and commits only once every delivery of the
fetch succeeded or is in the output dead-letter topic. So each transition reaches each
matching webhook at least once: a notifier killed at any point starts again at the last
commit and sends some transitions again, with the same ``Idempotency-Key``, which a receiver
uses to drop the repeat. The webhooks come from a registry cache the notifier runs itself
(PostgreSQL through Redis, kept current by NOTIFY: pulse/registry/cache.py); several
notifiers share the topic's partitions through the group.

:func:`notifier_services` gives what ``pulse notifier`` runs: the notifier and its HTTP
server on ``PULSE_NOTIFIER_PORT`` (``/health/live``, ``/health/ready``: ready once it reads
the topic with a registry snapshot; ``/metrics``: deliveries per webhook, lag, the sinks'
state, the registry cache's counts).

This module registers nothing on the worker's app.
"""

from __future__ import annotations

from typing import Any

from mode import Service
from prometheus_client import CollectorRegistry

from agents.topic_writer import TopicWriter
from pulse.api import ApiContext, HttpServer, Readiness, create_api
from pulse.metrics import NotifierCollector, RegistryCollector, SinkMetrics, WorkerMetrics
from pulse.redis_clients import redis_client
from pulse.registry.cache import RegistryCache
from pulse.registry.store import RegistryStore
from pulse.settings import Settings
from pulse.sinks._base import SinkHealth
from pulse.sinks.dead_letters import OutputDeadLetters
from pulse.sinks.webhooks import WebhookSink


class Notifier(TopicWriter):
    """Reads ``alerts`` with group ``{PULSE_APP_ID}-notifier`` and delivers each transition
    to the webhooks of the registry ``cache`` (made, started and stopped here when not
    given)."""

    group_suffix = "notifier"

    def __init__(
        self,
        settings: Settings,
        cache: RegistryCache | None = None,
        sink_health: list[SinkHealth] | None = None,
        metrics: WorkerMetrics | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(settings, sink_health, metrics, **kwargs)
        self.owns_cache = cache is None
        self.cache = (
            RegistryCache(settings, RegistryStore(settings), redis_client(settings))
            if cache is None
            else cache
        )

    def source_topic(self) -> str:
        return self.settings.topic_alerts

    def make_sink(self, dead_letters: OutputDeadLetters) -> WebhookSink:
        return WebhookSink(self.settings, self.cache, dead_letters, self.sink_health)

    async def on_start(self) -> None:
        if self.owns_cache:
            await self.cache.start()  # Redis's snapshot at once, PostgreSQL's when it answers
        await super().on_start()

    async def on_stop(self) -> None:
        await super().on_stop()
        if self.owns_cache:
            await self.cache.stop()
            await self.cache.redis.aclose()

    # -- what /metrics reads (pulse.metrics.NotifierSource) -----------------------------

    @property
    def webhook_sink(self) -> WebhookSink | None:
        sink = self.sink
        return sink if isinstance(sink, WebhookSink) else None

    @property
    def silenced(self) -> int:
        sink = self.webhook_sink
        return 0 if sink is None else sink.silenced

    def webhook_counts(self) -> dict[int, dict[str, int]]:
        sink = self.webhook_sink
        if sink is None:
            return {}
        return {
            hook_id: {
                "delivered": state.delivered,
                "failed": state.failed,
                "waited": state.waits,
                "dead_lettered": state.dead_lettered,
                "cancelled": state.cancelled,
            }
            for hook_id, state in sink.webhooks.items()
        }

    def readiness(self) -> Readiness:
        """Ready once it reads the topic with a registry snapshot; the detail shows each
        sink's state (``webhooks``, and ``webhook-ID`` per webhook used), the registry's and
        the progress."""
        detail: dict[str, Any] = {
            "sinks": {health.name: health.document() for health in self.sink_health},
            "registry": {**self.cache.health.document(), "version": self.cache.version},
            "written": self.written,
            "lag": self.lag(),
        }
        if self.consumer is None:
            return Readiness(False, "not reading the alerts topic yet", detail)
        if self.cache.snapshot is None:
            return Readiness(False, "no registry snapshot yet", detail)
        return Readiness(True, "", detail)


def notifier_services(settings: Settings) -> list[Service]:
    """What ``pulse notifier`` runs: a :class:`Notifier` and its HTTP server (health and
    metrics on ``PULSE_NOTIFIER_PORT``)."""
    notifier = Notifier(settings)

    async def readiness() -> Readiness:
        return notifier.readiness()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(NotifierCollector(notifier))
    registry.register(SinkMetrics(notifier.sink_health))
    registry.register(RegistryCollector(notifier.cache))
    context = ApiContext(
        settings,
        notifier.cache.redis,
        registry,
        readiness,
        serves_from_redis=False,
    )
    server = HttpServer(create_api(context, full=False), settings.notifier_port)
    return [server, notifier]
