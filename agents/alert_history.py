"""The alerts' history writer: topic ``alerts`` read back into PostgreSQL's ``alert_history``.

The alert transitions a flush wrote to ``alerts`` (key: the device) are this writer's input
(agents/topic_writer.py: consumer group ``{PULSE_APP_ID}-alerts-history``). Each becomes one
row of the registry's ``alert_history``, keyed by its id and state and inserted with ``ON
CONFLICT DO NOTHING`` (pulse/sinks/alert_history.py), and the group's offsets are committed
only once PostgreSQL has the fetch. So the history never slows the flush, a PostgreSQL that
is away (or restarting, or refusing) is waited out with the transitions waiting in Kafka,
and a replay from the last commit or a repeat in the topic adds no row. Silenced
transitions are recorded like the others (``silenced`` says so).

It runs in every worker, a child service of the app beside the readings processor, unless
``PULSE_ALERTS_HISTORY=off``, and alone with ``pulse alerts-history-writer``; the group
shares the topic's partitions among all of them.
"""

from __future__ import annotations

import faust

from agents.topic_writer import TopicWriter
from pulse.app import pulse_agent, sink_health, worker_metrics
from pulse.settings import Settings
from pulse.sinks.alert_history import AlertHistorySink
from pulse.sinks.dead_letters import OutputDeadLetters


class AlertHistoryWriter(TopicWriter):
    """Reads ``alerts`` with group ``{PULSE_APP_ID}-alerts-history`` into PostgreSQL's
    ``alert_history``."""

    group_suffix = "alerts-history"

    def source_topic(self) -> str:
        return self.settings.topic_alerts

    def make_sink(self, dead_letters: OutputDeadLetters) -> AlertHistorySink:
        return AlertHistorySink(self.settings, dead_letters)


@pulse_agent
def register(app: faust.App, settings: Settings) -> None:
    """Add the alerts' history writer to ``app`` (unless ``PULSE_ALERTS_HISTORY=off``)."""
    if settings.alerts_history == "off":
        return
    app.add_dependency(AlertHistoryWriter(settings, sink_health(app), worker_metrics(app)))
