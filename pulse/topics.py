"""Creating Pulse's topics when they do not exist yet."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from pulse.kafka_clients import client_options
from pulse.settings import Settings

log = logging.getLogger(__name__)

WEEK_MS = str(7 * 24 * 3600 * 1000)
LOG_APPEND_TIME = {"message.timestamp.type": "LogAppendTime"}
"""The readings topic's records take the broker's clock as their timestamp, not the
producer's: PULSE_MAX_FUTURE bounds each reading's ``ts`` by it, and a producer's clock that
runs ahead would otherwise carry its readings' stamps past the bound with it."""
CHANGELOG_RETENTION_MS = WEEK_MS
"""Each partition writes a full snapshot at least daily (pulse.changelog), so a week keeps
the latest snapshot and every delta after it with room to spare."""


async def ensure_topics(settings: Settings) -> dict[str, int]:
    """Create the readings, aggregates, alerts, both dead-letter and the changelog topics
    that are missing.

    Configs are set explicitly (some brokers report only explicit configs). The readings
    topic takes the broker's log-append time as each record's timestamp (see
    :data:`LOG_APPEND_TIME`; the local tansu broker keeps the setting but not its effect: the
    producer's timestamps stay). The changelog gets
    exactly as many partitions as ``readings`` (its partition p holds input partition p's
    state) and a week's retention, well beyond the daily snapshot that supersedes older
    records. Every topic has ``PULSE_TOPIC_REPLICATION`` replicas; with more than one, a
    write is acknowledged only once ``min.insync.replicas`` (2 from three replicas on) have
    it, so losing one broker loses no acknowledged output or state. Returns the partition
    count of each topic.
    """
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        existing = await _partition_counts(admin)
        readings_partitions = existing.get(settings.topic_readings, settings.partitions)
        wanted = {
            settings.topic_readings: (
                readings_partitions,
                {"retention.ms": WEEK_MS, **LOG_APPEND_TIME},
            ),
            settings.topic_aggregates: (settings.partitions, {"retention.ms": WEEK_MS}),
            settings.topic_dlq: (settings.partitions, {"retention.ms": WEEK_MS}),
            settings.topic_alerts: (settings.partitions, {"retention.ms": WEEK_MS}),
            settings.topic_output_dlq: (settings.partitions, {"retention.ms": WEEK_MS}),
            settings.changelog_topic: (
                readings_partitions,
                {"retention.ms": CHANGELOG_RETENTION_MS, "cleanup.policy": "delete"},
            ),
        }
        replication = settings.topic_replication
        durability = {"min.insync.replicas": str(min(2, max(1, replication - 1)))}
        missing = [
            NewTopic(name, partitions, replication, topic_configs={**configs, **durability})
            for name, (partitions, configs) in wanted.items()
            if name not in existing
        ]
        if missing:
            # Another worker may create them at the same moment.
            with contextlib.suppress(TopicAlreadyExistsError):
                created = await admin.create_topics(missing)
                _raise_refusals(created.topic_errors)
            log.info("created topics %s", [t.name for t in missing])
        counts = await _described(admin, set(wanted))
        changelog = counts.get(settings.changelog_topic)
        if changelog != counts.get(settings.topic_readings):
            raise RuntimeError(
                f"topic {settings.changelog_topic} has {changelog} partitions but "
                f"{settings.topic_readings} has {counts.get(settings.topic_readings)}: "
                "they must match (changelog partition p keeps input partition p's state)"
            )
        return counts
    finally:
        await admin.close()


class TopicRefused(RuntimeError):
    """The broker refused to create one of Pulse's topics; the message says why."""


def _raise_refusals(topic_errors: list[tuple[str, int, str | None]]) -> None:
    """Raise TopicRefused for any topic the broker refused (one that exists is no refusal):
    aiokafka returns the per-topic errors instead of raising them."""
    refused = [
        f"{name}: {for_code(code).__name__}: {message or 'no detail'}"
        for name, code, message, *_ in topic_errors
        if code not in (0, TopicAlreadyExistsError.errno)
    ]
    if refused:
        raise TopicRefused("the broker refused to create " + "; ".join(refused))


DESCRIBE_TIMEOUT = 10.0
"""Seconds to wait for topics just created to be described (their metadata propagates)."""


async def _described(admin: AIOKafkaAdminClient, names: set[str]) -> dict[str, int]:
    """The partition counts, once every topic of ``names`` is described without an error
    (a broker may answer with an error for a topic it has just created), or the counts
    there are after :data:`DESCRIBE_TIMEOUT`."""
    deadline = asyncio.get_running_loop().time() + DESCRIBE_TIMEOUT
    while True:
        counts = await _partition_counts(admin)
        if names <= counts.keys() or asyncio.get_running_loop().time() >= deadline:
            return counts
        await asyncio.sleep(0.1)


async def _partition_counts(admin: AIOKafkaAdminClient) -> dict[str, int]:
    names = await admin.list_topics()
    if not names:
        return {}
    described = await admin.describe_topics(list(names))
    return {t["topic"]: len(t["partitions"]) for t in described if not t.get("error_code")}
