"""The history writer: topic ``aggregates`` read back into Redis history and the event stream.

The closed windows a flush wrote to ``aggregates`` are this writer's input
(agents/topic_writer.py: consumer group ``{PULSE_APP_ID}-history``). Each record goes
into its series' ``P:history:{window}:{device}:{metric}`` and, when that changed the
history, into the ``P:events`` stream (pulse/sinks/history.py); the group's offsets are
committed only once Redis has them. So the history never slows the flush, a Redis that is
away is waited out with the windows waiting in Kafka, and a replay from the last commit
rewrites nothing and adds no event.

It runs in every worker, a child service of the app beside the readings processor; the group
shares the topic's partitions among them.
"""

from __future__ import annotations

import faust

from agents.topic_writer import AggregatesWriter
from pulse.app import pulse_agent, sink_health, worker_metrics
from pulse.redis_clients import resp_options
from pulse.settings import Settings
from pulse.sinks.dead_letters import OutputDeadLetters
from pulse.sinks.history import HistorySink


class HistoryWriter(AggregatesWriter):
    """Reads ``aggregates`` with group ``{PULSE_APP_ID}-history`` into Redis history."""

    group_suffix = "history"

    def make_sink(self, dead_letters: OutputDeadLetters) -> HistorySink:
        s = self.settings
        return HistorySink(
            s.redis_url,
            s.redis_prefix,
            s.history_length,
            s.state_ttl,
            dead_letters=dead_letters,
            **resp_options(s),
        )


@pulse_agent
def register(app: faust.App, settings: Settings) -> None:
    """Add the history writer to ``app``."""
    app.add_dependency(HistoryWriter(settings, sink_health(app), worker_metrics(app)))
