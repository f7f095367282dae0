"""The alerts writer: topic ``alerts`` read back into Redis's active alerts and event stream.

The alert transitions a flush wrote to ``alerts`` (key: the device) are this writer's input
(agents/topic_writer.py: consumer group ``{PULSE_APP_ID}-alerts``). Each transition sets or
removes its alert in ``P:alerts:active`` and is appended to the ``P:events`` stream that
``/api/live`` serves, fenced per alert by its times (pulse/sinks/alerts.py); the group's
offsets are committed only once Redis has them. So the alerts never slow the flush, a Redis
that is away is waited out with the transitions waiting in Kafka, and a replay from the last
commit, a repeat in the topic or an old fetch of a writer that lost its partitions changes
nothing and adds no event.

It runs in every worker, a child service of the app beside the readings processor, unless
``PULSE_ALERTS_WRITER=off``, and alone with ``pulse alerts-writer``; the group shares the
topic's partitions among all of them. (The alerts' InfluxDB writer is in
agents/influx_writer.py.)
"""

from __future__ import annotations

import faust

from agents.topic_writer import TopicWriter
from pulse.app import pulse_agent, sink_health, worker_metrics
from pulse.redis_clients import resp_options
from pulse.settings import Settings
from pulse.sinks.alerts import AlertsSink
from pulse.sinks.dead_letters import OutputDeadLetters


class AlertsWriter(TopicWriter):
    """Reads ``alerts`` with group ``{PULSE_APP_ID}-alerts`` into Redis's active alerts and
    event stream."""

    group_suffix = "alerts"

    def source_topic(self) -> str:
        return self.settings.topic_alerts

    def make_sink(self, dead_letters: OutputDeadLetters) -> AlertsSink:
        s = self.settings
        return AlertsSink(
            s.redis_url, s.redis_prefix, s.state_ttl, dead_letters=dead_letters, **resp_options(s)
        )


@pulse_agent
def register(app: faust.App, settings: Settings) -> None:
    """Add the alerts writer to ``app`` (unless ``PULSE_ALERTS_WRITER=off``)."""
    if settings.alerts_writer == "off":
        return
    app.add_dependency(AlertsWriter(settings, sink_health(app), worker_metrics(app)))
