"""The worker's Prometheus metrics (``GET /metrics``, prometheus_client's text format)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pulse.sinks._base import SinkHealth


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


def api_registry() -> CollectorRegistry:
    """The registry ``pulse api`` serves at ``/metrics``."""
    return CollectorRegistry(auto_describe=False)
