"""``pulse indexer``'s Prometheus metrics, read from its writers at each scrape."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pulse.sinks.search import SearchSink


class IndexerSource(Protocol):
    """What the collector reads of one writer of the indexer (agents/indexer.py)."""

    kind: str

    @property
    def written(self) -> int:
        """Records of its topic written (or dead-lettered) and committed."""

    @property
    def search_sink(self) -> SearchSink | None:
        """Its sink, once started."""

    def lag(self) -> dict[int, int]:
        """Per partition of its topic it has fetched from, records not yet written."""


class IndexerCollector(Collector):
    """The indexer's counts per kind of document (see :meth:`collect`)."""

    def __init__(self, writers: Sequence[IndexerSource]) -> None:
        self.writers = writers

    def collect(self) -> Iterator[Metric]:
        records = CounterMetricFamily(
            "pulse_indexer_records",
            "Records of each kind's topic the indexer read and committed (indexed, skipped "
            "or dead-lettered)",
            labels=["kind"],
        )
        documents = CounterMetricFamily(
            "pulse_indexer_documents",
            "Documents by outcome: indexed (acknowledged by OpenSearch; a repeat counts again), "
            "expired (past the retention: not indexed), skipped (windows not in "
            "PULSE_SEARCH_WINDOWS)",
            labels=["kind", "outcome"],
        )
        requests = CounterMetricFamily(
            "pulse_indexer_bulk_requests", "Bulk requests answered (each try)", labels=["kind"]
        )
        deleted = CounterMetricFamily(
            "pulse_indexer_deleted_indices",
            "Daily indices deleted for the retention",
            labels=["kind"],
        )
        lag = GaugeMetricFamily(
            "pulse_indexer_lag",
            "Records of each kind's topic not indexed yet, per partition the indexer has "
            "fetched from",
            labels=["kind", "partition"],
        )
        for writer in self.writers:
            records.add_metric([writer.kind], writer.written)
            sink = writer.search_sink
            if sink is not None:
                for outcome, count in (
                    ("indexed", sink.indexed),
                    ("expired", sink.expired),
                    ("skipped", sink.skipped),
                ):
                    documents.add_metric([writer.kind, outcome], count)
                requests.add_metric([writer.kind], sink.requests)
                deleted.add_metric([writer.kind], len(sink.deleted_indices))
            for partition, behind in sorted(writer.lag().items()):
                lag.add_metric([writer.kind, str(partition)], behind)
        yield from (records, documents, requests, deleted, lag)
