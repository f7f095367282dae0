"""The bridge's health and metrics on ``PULSE_BRIDGE_PORT``: ``/health/live``,
``/health/ready`` (ready once started: its clients connected and the topics there) and
``/metrics`` (Prometheus), as every Pulse process serves them."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pulse.api import ApiContext, HttpServer, Readiness, create_api
from pulse.bridge.service import LOST, Bridge
from pulse.metrics import SinkMetrics
from pulse.redis_clients import redis_client


class BridgeCollector(Collector):
    """What ``/metrics`` shows of a bridge, read at each scrape."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    def collect(self) -> Iterator[Metric]:
        bridge, c = self.bridge, self.bridge.counters
        entries = CounterMetricFamily(
            "pulse_bridge_entries",
            "Stream entries moved: produced to the readings topic, dead-lettered (no valid "
            "reading), or skipped (a read-back found them in Kafka already)",
            labels=["outcome"],
        )
        entries.add_metric(["produced"], c.produced)
        entries.add_metric(["dead_lettered"], c.dead_lettered)
        entries.add_metric(["skipped"], c.skipped)
        yield entries
        for name, value, help_text in (
            ("pulse_bridge_rounds", c.rounds, "Rounds Kafka acknowledged"),
            ("pulse_bridge_failed_rounds", c.failed_rounds, "Rounds that failed or were fenced"),
            ("pulse_bridge_read_backs", c.read_backs, "Read-backs of the topics' tails"),
            (
                "pulse_bridge_read_back_records",
                c.read_back_records,
                "Records read by the read-backs",
            ),
            ("pulse_bridge_leases_acquired", c.acquired, "Stream leases taken"),
            ("pulse_bridge_leases_lost", c.lost, "Stream leases lost (expired or taken)"),
            ("pulse_bridge_leases_released", c.released, "Stream leases handed over"),
        ):
            counter = CounterMetricFamily(name, help_text)
            counter.add_metric([], value)
            yield counter
        held = [s for s in bridge.streams.values() if s.phase != LOST]
        owned = GaugeMetricFamily("pulse_bridge_streams_owned", "Streams this bridge holds")
        owned.add_metric([], len(held))
        yield owned
        found = GaugeMetricFamily(
            "pulse_bridge_streams_found", "Streams matching PULSE_BRIDGE_STREAMS"
        )
        found.add_metric([], len(bridge.known))
        yield found
        members = GaugeMetricFamily("pulse_bridge_members", "Bridges alive, this one included")
        members.add_metric([], bridge.members)
        yield members
        backlog = GaugeMetricFamily(
            "pulse_bridge_stream_backlog",
            "Entries of a stream this bridge holds that are not yet in Kafka",
            labels=["stream"],
        )
        for stream in held:
            backlog.add_metric([stream.name], stream.backlog)
        yield backlog
        over = GaugeMetricFamily(
            "pulse_bridge_streams_over_max_lag",
            "Streams this bridge holds with more than PULSE_BRIDGE_MAX_LAG entries not in Kafka",
        )
        over.add_metric([], sum(1 for s in held if s.over_lag))
        yield over


def bridge_http(bridge: Bridge) -> HttpServer:
    """The bridge's HTTP server on ``PULSE_BRIDGE_PORT``."""
    settings = bridge.settings

    async def readiness() -> Readiness:
        detail = bridge.document()
        if not bridge.running.is_set():
            return Readiness(False, "starting: connecting to Kafka and Redis", detail)
        return Readiness(True, "", detail)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(BridgeCollector(bridge))
    registry.register(SinkMetrics([bridge.kafka_health, bridge.redis_health]))
    context = ApiContext(settings, redis_client(settings), registry, readiness)
    return HttpServer(create_api(context, full=False), settings.bridge_port)
