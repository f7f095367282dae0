"""The pipeline's health in InfluxDB: a worker's counts, every ``PULSE_STATS_INTERVAL`` seconds.

Each tick writes the points pulse/metrics.py's :func:`stats_lines` makes of the counts
``/metrics`` shows (``pulse_stats`` per partition the worker owns, ``pulse_stats_worker``,
``pulse_stats_sink`` per sink; names in pulse/measurements.py), tagged with this worker's
host name and process id. They go through an InfluxSink of their own (``influx-stats``), so
the windows' writer never waits behind them: a point InfluxDB refuses for its content goes
to the output dead-letter topic like any refused line, and while InfluxDB is away the
sink waits and the ticks meanwhile are skipped (each point holds counts since the process
started, so the next one covers what a skipped one would have shown).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import time
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from mode import Service

from pulse.app import pulse_agent, sink_health, worker_metrics
from pulse.kafka_clients import client_options
from pulse.metrics import WorkerMetrics, stats_lines
from pulse.settings import Settings
from pulse.sinks._base import SinkHealth
from pulse.sinks.dead_letters import OutputDeadLetters
from pulse.sinks.influx import InfluxSink


def worker_name() -> str:
    """This process's ``worker`` tag: host name and process id, unique among the workers
    of one host and, in containers, among the replicas of a service."""
    return f"{socket.gethostname()}-{os.getpid()}"


class StatsWriter(Service):
    """Writes :func:`stats_lines` every ``settings.stats_interval`` seconds."""

    def __init__(
        self,
        settings: Settings,
        metrics: WorkerMetrics,
        sinks: list[SinkHealth],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.metrics = metrics
        self.sinks = sinks
        """Every sink of the worker whose errors are written (this writer's own included)."""
        self.worker = worker_name()
        self.producer: AIOKafkaProducer | None = None
        self.sink: InfluxSink | None = None
        self._running: asyncio.Future[None] | None = None
        self.points = 0
        """Points written so far."""

    async def on_start(self) -> None:
        s = self.settings
        self.producer = AIOKafkaProducer(**client_options(s), acks="all", linger_ms=5)
        await self.producer.start()
        dead_letters = OutputDeadLetters(self.producer, s.topic_output_dlq, s.max_message_bytes)
        self.sink = InfluxSink(
            s.influx_url,
            s.influx_token,
            s.influx_org,
            s.influx_bucket,
            dead_letters,
            name="influx-stats",
        )
        await self.sink.start()
        self.sinks.append(self.sink.health)
        self._running = self.add_future(self._run())

    async def on_stop(self) -> None:
        # A write may be waiting out InfluxDB: its point is only a snapshot, dropped.
        if self._running is not None:
            self._running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._running
        if self.sink is not None:
            await self.sink.stop()
        if self.producer is not None:
            await self.producer.stop()

    async def _run(self) -> None:
        sink = self.sink
        assert sink is not None
        interval = self.settings.stats_interval
        key = self.worker.encode()
        next_tick = time.monotonic() + interval
        while not self.should_stop:
            await asyncio.sleep(max(next_tick - time.monotonic(), 0))
            next_tick += interval
            lines = stats_lines(self.metrics, self.sinks, self.worker, int(time.time() * 1000))
            if lines:
                await sink.write_records(lines, [key] * len(lines))
                self.points += len(lines)
            # Ticks that passed while a write waited are skipped, not made up for.
            behind = time.monotonic() - next_tick
            if behind > 0:
                next_tick += math.ceil(behind / interval) * interval


@pulse_agent
def register(app: faust.App, settings: Settings) -> None:
    """Add the stats writer to ``app`` (unless ``PULSE_STATS_INTERVAL=0``)."""
    if settings.stats_interval > 0:
        app.add_dependency(StatsWriter(settings, worker_metrics(app), sink_health(app)))
