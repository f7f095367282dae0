"""The worker's Prometheus metrics: what its agents count as they go, read at each scrape.

The readings processor and the InfluxDB writer count into one :class:`WorkerMetrics` per
process (``pulse.app.worker_metrics``), per fetch and per flush, never per reading: plain ints
and dicts, and histograms observed once per flush or sink write. Everything else (consumer
lag, open windows, state memory, the sinks' state) is read from the agents when ``/metrics``
is scraped, by :class:`WorkerCollector`; :func:`worker_collectors` gives the collectors to
register on the registry ``/metrics`` serves.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pulse.measurements import PULSE_STATS, PULSE_STATS_SINK, PULSE_STATS_WORKER
from pulse.sinks._base import SinkHealth
from tables.partition_state import PartitionState

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds: a flush or a sink write takes milliseconds while its target keeps up, and up to
as long as the target is away (a write returns only once durable)."""
DRAIN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Seconds: a drain holds the event loop, so its tail is what readings wait behind."""


class ReadingsSource(Protocol):
    """What the collector reads of the readings processor at a scrape."""

    @property
    def states(self) -> Mapping[int, PartitionState]:
        """The state of each assigned partition."""

    @property
    def flushes(self) -> int:
        """Flushes completed so far."""

    @property
    def registry_switched(self) -> Mapping[int, float]:
        """Per partition, when (epoch seconds) it began to judge by its registry version."""

    def lag(self) -> dict[int, int]:
        """Per assigned partition, records in the topic not applied yet (the consumer's
        high watermark minus the state's position), for the partitions a fetch has
        reported on."""


class InfluxSource(Protocol):
    """What the collector reads of the InfluxDB writer at a scrape."""

    @property
    def written(self) -> int:
        """Records of the aggregates topic written (or dead-lettered) and committed."""

    def lag(self) -> dict[int, int]:
        """Per partition of the aggregates topic it has fetched from, records not yet
        written."""


class WorkerMetrics:
    """The counts of one worker process, kept by its agents (see the module doc).

    Counters are per process: a partition that moves to another worker keeps its counts
    here, and the new owner counts from where it took over (a replay after a crash is
    counted again, as its outputs are written again).
    """

    def __init__(self) -> None:
        self.records: dict[int, int] = {}
        """Per partition of the readings topic, records applied or dead-lettered."""
        self.dead_letters: dict[int, dict[str, int]] = {}
        """Per partition and reason, records of the readings topic dead-lettered."""
        self.windows_closed: dict[int, int] = {}
        """Per partition, windows closed (each one output to the sinks)."""
        self.flush_seconds = Histogram(
            "pulse_flush_seconds",
            "From a flush's drain to its changelog delta stored: its outputs are durable",
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.drain_seconds = Histogram(
            "pulse_flush_drain_seconds",
            "The drain of each completed flush: the part that holds the event loop",
            buckets=DRAIN_BUCKETS,
            registry=None,
        )
        self.sink_write_seconds = Histogram(
            "pulse_sink_write_seconds",
            "Each write of a sink, until durable (a lane that fell behind writes several "
            "flushes at once; InfluxDB: one fetch of the aggregates topic)",
            ["sink"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.processor: ReadingsSource | None = None
        """The readings processor, once it runs in this process."""
        self.influx: InfluxSource | None = None
        """The InfluxDB writer, once it runs in this process."""

    def count_fetch(self, partition: int, records: int) -> None:
        """``records`` records of ``partition`` were applied or dead-lettered (one fetch)."""
        self.records[partition] = self.records.get(partition, 0) + records

    def count_flush(
        self, closed: Mapping[int, int], dead_letters: Iterable[tuple[int, str]]
    ) -> None:
        """One flush's closed windows per partition and its dead letters' (partition,
        reason)."""
        for partition, count in closed.items():
            if count:
                self.windows_closed[partition] = self.windows_closed.get(partition, 0) + count
        for partition, reason in dead_letters:
            reasons = self.dead_letters.setdefault(partition, {})
            reasons[reason] = reasons.get(reason, 0) + 1

    def dead_letters_by_reason(self) -> dict[str, int]:
        """Records dead-lettered per reason, over every partition."""
        total: dict[str, int] = {}
        for reasons in self.dead_letters.values():
            for reason, count in reasons.items():
                total[reason] = total.get(reason, 0) + count
        return total


class WorkerCollector(Collector):
    """The worker's metrics (see :meth:`collect`), read from ``metrics`` and ``sinks``."""

    def __init__(self, metrics: WorkerMetrics, sinks: Sequence[SinkHealth]) -> None:
        self.metrics = metrics
        self.sinks = sinks

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield _counter(
            "pulse_readings_consumed",
            "Records of the readings topic taken in (applied or dead-lettered), per partition",
            "partition",
            m.records,
        )
        yield _counter(
            "pulse_dead_letters",
            "Records of the readings topic dead-lettered, by reason",
            "reason",
            m.dead_letters_by_reason(),
        )
        yield _counter(
            "pulse_windows_closed",
            "Windows closed and handed to the sinks, per partition",
            "partition",
            m.windows_closed,
        )
        processor = m.processor
        flushes = CounterMetricFamily("pulse_flushes", "Flushes completed (changelog stored)")
        flushes.add_metric([], processor.flushes if processor is not None else 0)
        yield flushes
        yield from m.flush_seconds.collect()
        yield from m.drain_seconds.collect()
        yield from m.sink_write_seconds.collect()
        errors = CounterMetricFamily(
            "pulse_sink_errors",
            "Failed tries of each sink by kind: backpressure (the target asked to wait or "
            "was away), refused (it refused the client), dead_lettered (outputs it refused "
            "for their content, in the output dead-letter topic)",
            labels=["sink", "kind"],
        )
        for health in self.sinks:
            errors.add_metric([health.name, "backpressure"], health.backpressure)
            errors.add_metric([health.name, "refused"], health.refusals)
            errors.add_metric([health.name, "dead_lettered"], health.dead_letters)
        yield errors
        yield from SinkMetrics(self.sinks).collect()
        states = dict(processor.states) if processor is not None else {}
        yield _gauge(
            "pulse_consumer_lag",
            "Records of the readings topic not applied yet, per assigned partition (the "
            "consumer's high watermark minus the state's position)",
            "partition",
            processor.lag() if processor is not None else {},
        )
        yield _gauge(
            "pulse_open_windows",
            "Open windows in the state, per assigned partition",
            "partition",
            {p: s.open_windows for p, s in states.items()},
        )
        yield _gauge(
            "pulse_registry_version",
            "The registry version each assigned partition judges alerts by, as its changelog "
            "records it (0: none yet)",
            "partition",
            {p: s.registry_version for p, s in states.items()},
        )
        switched = processor.registry_switched if processor is not None else {}
        yield _gauge(
            "pulse_registry_switched_seconds",
            "When (epoch seconds) each assigned partition began to judge alerts by the "
            "registry version it uses: the flush that switched to it, or the takeover that "
            "recovered it",
            "partition",
            {p: switched[p] for p in states if p in switched},
        )
        yield _gauge(
            "pulse_alert_entries",
            "Alert state entries (window rules' runs and firing alerts, watched absences) "
            "per assigned partition",
            "partition",
            {p: len(s.alerts) for p, s in states.items()},
        )
        yield _gauge(
            "pulse_state_memory_bytes",
            "An estimate of the window state's memory per assigned partition, from a sample "
            "of its entries (PartitionState.memory_estimate; process_resident_memory_bytes "
            "is the measure)",
            "partition",
            {p: s.memory_estimate() for p, s in states.items()},
        )
        influx = m.influx
        written = CounterMetricFamily(
            "pulse_influx_written",
            "Records of the aggregates topic the InfluxDB writer wrote (or dead-lettered) "
            "and committed",
        )
        written.add_metric([], influx.written if influx is not None else 0)
        yield written
        yield _gauge(
            "pulse_influx_lag",
            "Records of the aggregates topic not yet written to InfluxDB, per partition the "
            "writer has fetched from",
            "partition",
            influx.lag() if influx is not None else {},
        )


class SinkMetrics(Collector):
    """The sinks' state and dead-letter counts, read when ``/metrics`` is scraped."""

    def __init__(self, sinks: Sequence[SinkHealth]) -> None:
        self.sinks = sinks

    def collect(self) -> Iterator[Metric]:
        states = GaugeMetricFamily(
            "pulse_sink_state",
            "1 for the state each sink is in (ok, waiting: backpressure, refused_by_target)",
            labels=["sink", "state"],
        )
        since = GaugeMetricFamily(
            "pulse_sink_state_since_seconds",
            "When each sink entered its state (epoch seconds)",
            labels=["sink"],
        )
        letters = CounterMetricFamily(
            "pulse_output_dead_letters",
            "Outputs a sink's target refused, stored in the output dead-letter topic",
            labels=["sink"],
        )
        for health in self.sinks:
            for state in (SinkHealth.OK, SinkHealth.WAITING, SinkHealth.REFUSED):
                states.add_metric([health.name, state], float(health.state == state))
            since.add_metric([health.name], health.since)
            letters.add_metric([health.name], health.dead_letters)
        yield states
        yield since
        yield letters


def worker_collectors(metrics: WorkerMetrics, sinks: Sequence[SinkHealth]) -> list[Collector]:
    """The collectors of a worker's ``/metrics``, to register on the registry it serves
    (``sinks``: read at each scrape, so sinks started later are shown)."""
    return [WorkerCollector(metrics, sinks)]


def worker_registry(metrics: WorkerMetrics, sinks: Sequence[SinkHealth]) -> CollectorRegistry:
    """A registry holding :func:`worker_collectors`."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in worker_collectors(metrics, sinks):
        registry.register(collector)
    return registry


def stats_lines(
    metrics: WorkerMetrics, sinks: Sequence[SinkHealth], worker: str, time_ms: int
) -> list[str]:
    """The pipeline's health as InfluxDB lines (pulse/measurements.py, ``STATS``), from the
    same counts ``/metrics`` shows: a ``pulse_stats`` point per partition the readings
    processor owns, a ``pulse_stats_worker`` point and a ``pulse_stats_sink`` point per sink,
    all at ``time_ms`` and tagged ``worker``. None before the processor runs, and no
    partition's point before a fetch has reported its lag."""
    processor = metrics.processor
    if processor is None:
        return []
    states = dict(processor.states)
    lags = processor.lag()
    lines = []
    for partition in sorted(states.keys() & lags.keys()):
        reasons = metrics.dead_letters.get(partition, {})
        fields: dict[str, float] = {
            "readings": metrics.records.get(partition, 0),
            "windows_closed": metrics.windows_closed.get(partition, 0),
            "lag": lags[partition],
            "open_windows": states[partition].open_windows,
        }
        for name in PULSE_STATS.field_names:
            if name.startswith("dead_letters_"):
                fields[name] = reasons.get(name.removeprefix("dead_letters_"), 0)
        tags = {"worker": worker, "partition": str(partition)}
        lines.append(PULSE_STATS.line(tags, fields, time_ms))
    (family,) = metrics.flush_seconds.collect()
    timed = {sample.name: sample.value for sample in family.samples}
    lines.append(
        PULSE_STATS_WORKER.line(
            {"worker": worker},
            {
                "flushes": processor.flushes,
                "flush_seconds_sum": timed["pulse_flush_seconds_sum"],
                "flush_seconds_count": timed["pulse_flush_seconds_count"],
            },
            time_ms,
        )
    )
    for health in sinks:
        fields = {
            "errors_backpressure": health.backpressure,
            "errors_refused": health.refusals,
            "errors_dead_lettered": health.dead_letters,
        }
        tags = {"worker": worker, "sink": health.name}
        lines.append(PULSE_STATS_SINK.line(tags, fields, time_ms))
    return lines


def _counter(name: str, documentation: str, label: str, values: Mapping[Any, int]) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([str(key)], value)
    return family


def _gauge(name: str, documentation: str, label: str, values: Mapping[Any, float]) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([str(key)], value)
    return family


class NotifierSource(Protocol):
    """What the collector reads of ``pulse notifier`` (agents/notifier.py) at a scrape."""

    @property
    def written(self) -> int:
        """Records of the alerts topic handled (delivered, dead-lettered or skipped) and
        committed."""

    @property
    def silenced(self) -> int:
        """Silenced transitions read (sent nowhere)."""

    def lag(self) -> dict[int, int]:
        """Per partition of the alerts topic it has fetched from, records not yet handled."""

    def webhook_counts(self) -> dict[int, dict[str, int]]:
        """Per webhook id, its deliveries by result: ``delivered``, ``failed`` (failed tries),
        ``waited`` (answers that asked to wait), ``dead_lettered``, ``cancelled``."""


class NotifierCollector(Collector):
    """``pulse notifier``'s deliveries per webhook, its progress and lag."""

    def __init__(self, notifier: NotifierSource) -> None:
        self.notifier = notifier

    def collect(self) -> Iterator[Metric]:
        n = self.notifier
        deliveries = CounterMetricFamily(
            "pulse_notifier_deliveries",
            "Webhook deliveries by result: delivered (2xx), failed (each failed try: "
            "connection error, timeout, 5xx, 408, a refusal), waited (429, 503 with "
            "Retry-After: waited out, not failures), dead_lettered (in the output dead-letter "
            "topic), cancelled (the webhook was removed meanwhile)",
            labels=["webhook", "result"],
        )
        for webhook, counts in sorted(n.webhook_counts().items()):
            for result, count in counts.items():
                deliveries.add_metric([str(webhook), result], count)
        yield deliveries
        silenced = CounterMetricFamily(
            "pulse_notifier_silenced", "Silenced transitions read (recorded, sent nowhere)"
        )
        silenced.add_metric([], n.silenced)
        yield silenced
        written = CounterMetricFamily(
            "pulse_notifier_written",
            "Records of the alerts topic the notifier handled and committed",
        )
        written.add_metric([], n.written)
        yield written
        yield _gauge(
            "pulse_notifier_lag",
            "Records of the alerts topic not yet handled by the notifier, per partition it "
            "has fetched from",
            "partition",
            n.lag(),
        )


def api_registry() -> CollectorRegistry:
    """The registry ``pulse api`` serves at ``/metrics``."""
    return CollectorRegistry(auto_describe=False)


class RegistrySource(Protocol):
    """What the registry collector reads of a process's registry cache
    (pulse.registry.cache.RegistryCache) at a scrape."""

    hits: int
    misses: int

    @property
    def version(self) -> int | None:
        """The registry version of the copy in use (None: none loaded yet)."""

    def age(self) -> float | None:
        """Seconds since the copy in use was loaded (None: none loaded yet)."""


class RegistryCollector(Collector):
    """The registry cache's hits, misses, and the version and age of the copy in use."""

    def __init__(self, cache: RegistrySource) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        hits = CounterMetricFamily(
            "pulse_registry_cache_hits",
            "Registry snapshots loaded from Redis (another process had put that version there)",
        )
        hits.add_metric([], self.cache.hits)
        yield hits
        misses = CounterMetricFamily(
            "pulse_registry_cache_misses",
            "Registry snapshots Redis did not hold, read from PostgreSQL",
        )
        misses.add_metric([], self.cache.misses)
        yield misses
        version, age = self.cache.version, self.cache.age()
        if version is not None and age is not None:
            yield GaugeMetricFamily(
                "pulse_registry_cache_version",
                "The registry version of the snapshot in use",
                value=version,
            )
            yield GaugeMetricFamily(
                "pulse_registry_snapshot_age_seconds",
                "Seconds since the snapshot in use was loaded (a change reloads it)",
                value=age,
            )
