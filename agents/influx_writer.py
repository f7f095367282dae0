"""The InfluxDB writer: topic ``aggregates`` read back and written to InfluxDB, at its own pace.

InfluxDB is not on the flush path: the closed windows a flush wrote to ``aggregates`` are
this writer's input (agents/topic_writer.py: consumer group ``{PULSE_APP_ID}-influx``).
Each record becomes the line the flush used to write (pulse/sinks/influx.py,
``record_line``); a fetch's lines go through InfluxSink, and the group's offsets are
committed only once InfluxDB has acknowledged them (or the output dead-letter topic holds the
lines it refused). So an InfluxDB away for hours delays only InfluxDB, and a crash anywhere
replays from the last commit, writing identical points again (same measurement, tags and
time: overwritten). Its progress and lag show in ``/metrics`` (pulse.metrics).

It runs in every worker (a child service of the app, beside the readings processor) unless
``PULSE_INFLUX_WRITER=off``, and alone with ``pulse influx-writer``; the group shares the
topic's partitions among all of them.

The alert transitions reach InfluxDB the same way, from the ``alerts`` topic
(:class:`AlertsInfluxWriter`, consumer group ``{PULSE_APP_ID}-alerts-influx``): one point
per transition in the ``alerts`` measurement (pulse/sinks/influx.py, ``alert_line``), a
repeat being the same point. It runs wherever the windows' writer runs.
"""

from __future__ import annotations

from typing import Any

import faust

from agents.topic_writer import AggregatesWriter, TopicWriter
from pulse.app import pulse_agent, sink_health, worker_metrics
from pulse.settings import Settings
from pulse.sinks.dead_letters import OutputDeadLetters
from pulse.sinks.influx import AlertsInfluxSink, InfluxSink


class InfluxWriter(AggregatesWriter):
    """Reads ``aggregates`` with group ``{PULSE_APP_ID}-influx`` and writes it to InfluxDB."""

    group_suffix = "influx"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics.influx = self

    def make_sink(self, dead_letters: OutputDeadLetters) -> InfluxSink:
        s = self.settings
        return InfluxSink(s.influx_url, s.influx_token, s.influx_org, s.influx_bucket, dead_letters)


class AlertsInfluxWriter(TopicWriter):
    """Reads ``alerts`` with group ``{PULSE_APP_ID}-alerts-influx`` and writes each
    transition's point to InfluxDB."""

    group_suffix = "alerts-influx"

    def source_topic(self) -> str:
        return self.settings.topic_alerts

    def make_sink(self, dead_letters: OutputDeadLetters) -> AlertsInfluxSink:
        s = self.settings
        return AlertsInfluxSink(
            s.influx_url, s.influx_token, s.influx_org, s.influx_bucket, dead_letters
        )


@pulse_agent
def register(app: faust.App, settings: Settings) -> None:
    """Add the InfluxDB writers of the windows and of the alerts to ``app`` (unless
    ``PULSE_INFLUX_WRITER=off``)."""
    if settings.influx_writer == "off":
        return
    app.add_dependency(InfluxWriter(settings, sink_health(app), worker_metrics(app)))
    app.add_dependency(AlertsInfluxWriter(settings, sink_health(app), worker_metrics(app)))
