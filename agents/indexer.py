"""The indexer: the durable topics read back into OpenSearch (``pulse indexer``).

Three writers of the topic-writer loop (agents/topic_writer.py), each with its own consumer
group and committed offsets, each into the daily indices of one kind of document
(pulse/sinks/search.py, pulse/search/):

* :class:`DeadLettersIndexer`: ``readings-dlq`` (``PULSE_TOPIC_DLQ``), group
  ``{PULSE_APP_ID}-search-dead-letters``;
* :class:`AlertsIndexer`: ``alerts`` (``PULSE_TOPIC_ALERTS``), group
  ``{PULSE_APP_ID}-search-alerts``;
* :class:`WindowsIndexer`: ``aggregates`` (``PULSE_TOPIC_AGGREGATES``), group
  ``{PULSE_APP_ID}-search-windows``, only when ``PULSE_SEARCH_WINDOWS`` names windows (it
  reads every closed window and indexes those of the windows named).

Offsets are committed only once OpenSearch has acknowledged a fetch's documents (or the
output dead-letter topic holds those it refused), and every document has an id the record
determines, in the daily index its event time determines: a crash of the indexer (a replay
from the last commit), a rebalance, or a worker's replay (the same records again, later in
the topic) writes the same documents again, which overwrite themselves. It runs as its own
process only (never inside a worker), as many as the topics' partitions: each group shares
its topic's partitions among them. :func:`indexer_services` adds the HTTP server of its
``/health`` and ``/metrics`` on ``PULSE_INDEXER_PORT``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from mode import Service
from prometheus_client import CollectorRegistry

from agents.topic_writer import TopicWriter
from pulse.api import ApiContext, HttpServer, Readiness, create_api
from pulse.metrics import SinkMetrics, WorkerMetrics
from pulse.redis_clients import redis_client
from pulse.settings import Settings
from pulse.sinks._base import RecordSink, SinkHealth
from pulse.sinks.dead_letters import OutputDeadLetters

if TYPE_CHECKING:
    # OpenSearch's client is imported only where the indexer runs, never by a worker (which
    # imports every module of agents/).
    from pulse.search.documents import Document
    from pulse.sinks.search import SearchSink


class Indexer(TopicWriter):
    """A writer of one kind of document into OpenSearch."""

    kind: str

    @property
    def search_sink(self) -> SearchSink | None:
        from pulse.sinks.search import SearchSink

        return self.sink if isinstance(self.sink, SearchSink) else None

    def make_sink(self, dead_letters: OutputDeadLetters) -> SearchSink:
        from pulse.sinks.search import SearchSink

        return SearchSink(self.settings, self.kind, dead_letters)


class DeadLettersIndexer(Indexer):
    """``readings-dlq`` into the dead letters' daily indices."""

    kind = "dead-letters"
    group_suffix = "search-dead-letters"

    def source_topic(self) -> str:
        return self.settings.topic_dlq

    def read(self, sink: RecordSink[Any], record: Any) -> Document:
        # A letter without the rejected record's time takes its own record's.
        from pulse.search.documents import dead_letter_document

        return dead_letter_document(record.value, record.timestamp)


class AlertsIndexer(Indexer):
    """``alerts`` into the alerts' daily indices."""

    kind = "alerts"
    group_suffix = "search-alerts"

    def source_topic(self) -> str:
        return self.settings.topic_alerts


class WindowsIndexer(Indexer):
    """``aggregates`` into the windows' daily indices (the windows of
    ``PULSE_SEARCH_WINDOWS`` only)."""

    kind = "windows"
    group_suffix = "search-windows"

    def source_topic(self) -> str:
        return self.settings.topic_aggregates


def indexers(settings: Settings, sinks: list[SinkHealth], metrics: WorkerMetrics) -> list[Indexer]:
    """The writers ``pulse indexer`` runs: dead letters and alerts, and windows when
    ``PULSE_SEARCH_WINDOWS`` names some."""
    kinds: list[type[Indexer]] = [DeadLettersIndexer, AlertsIndexer]
    if settings.search_windows:
        kinds.append(WindowsIndexer)
    return [kind(settings, sinks, metrics) for kind in kinds]


def indexer_services(settings: Settings) -> list[Service]:
    """The writers and the HTTP server (``/health``, ``/metrics`` on ``PULSE_INDEXER_PORT``)
    of ``pulse indexer``. Ready once every writer has joined its group; ``/health`` shows
    each writer's sink (``ok``, ``waiting`` while OpenSearch is away or pushing back,
    ``refused_by_target``) and whether OpenSearch answers a ping now."""
    from pulse.search.metrics import IndexerCollector

    sinks: list[SinkHealth] = []
    metrics = WorkerMetrics()
    writers = indexers(settings, sinks, metrics)

    async def readiness() -> Readiness:
        detail = {
            "kinds": [writer.kind for writer in writers],
            "sinks": {health.name: health.document() for health in sinks},
            "opensearch": await _opensearch_state(writers),
        }
        if not all(writer.consumer is not None for writer in writers):
            return Readiness(False, "the writers have not all joined their groups", detail)
        return Readiness(True, "", detail)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(IndexerCollector(writers))
    registry.register(SinkMetrics(sinks))
    registry.register(_Histograms(metrics))
    context = ApiContext(
        settings,
        redis_client(settings),  # never used: the indexer needs no Redis
        registry,
        readiness,
        serves_from_redis=False,
        checks_redis=False,
    )
    # The server first: /health answers while the writers join their groups.
    return [HttpServer(create_api(context, full=False), settings.indexer_port), *writers]


PING_TIMEOUT = 1.0
"""Seconds OpenSearch gets to answer a health check's ping."""


async def _opensearch_state(writers: list[Indexer]) -> dict[str, Any]:
    """OpenSearch as ``/health`` shows it (``ok`` or ``unavailable``, asked with a writer's
    client): not a reason to be unready, as the writers wait for it with their records in
    Kafka."""
    sink = next((w.search_sink for w in writers if w.search_sink is not None), None)
    if sink is None or sink.client is None:
        return {"state": "unknown", "reason": "not connected yet"}
    try:
        answered = await asyncio.wait_for(sink.client.ping(), PING_TIMEOUT)
    except Exception as exc:
        return {"state": "unavailable", "reason": type(exc).__name__}
    return {"state": "ok"} if answered else {"state": "unavailable", "reason": "no answer"}


class _Histograms:
    """The writers' write latency (``pulse_sink_write_seconds``, one fetch each)."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Any:
        yield from self.metrics.sink_write_seconds.collect()
