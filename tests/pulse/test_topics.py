"""pulse/topics.py on Apache Kafka: the topics Pulse creates, with the configs it documents."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from pulse.settings import Settings
from pulse.topics import CHANGELOG_RETENTION_MS, WEEK_MS, TopicRefused, ensure_topics
from tests.helpers.kafka import bootstrap


async def _configs(broker: str, topics: list[str], names: set[str]) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap(broker))
    await admin.start()
    try:
        described = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic) for topic in topics]
        )
    finally:
        await admin.close()
    out: dict[str, dict[str, str]] = {}
    for response in described:
        for _code, _message, _type, topic, entries in response.resources:
            out[topic] = {entry[0]: entry[1] for entry in entries if entry[0] in names}
    return out


def test_topics_are_created_with_their_partitions_and_configs(
    kafka_broker: str, topic_prefix: str
) -> None:
    settings = Settings.from_env(
        {
            "PULSE_BROKER": kafka_broker,
            "PULSE_APP_ID": f"{topic_prefix}app",
            "PULSE_TOPIC_READINGS": f"{topic_prefix}-readings",
            "PULSE_TOPIC_AGGREGATES": f"{topic_prefix}-aggregates",
            "PULSE_TOPIC_DLQ": f"{topic_prefix}-dlq",
            "PULSE_PARTITIONS": "3",
        }
    )
    counts = asyncio.run(ensure_topics(settings))
    topics = [
        settings.topic_readings,
        settings.topic_aggregates,
        settings.topic_dlq,
        settings.changelog_topic,
    ]
    assert {topic: counts[topic] for topic in topics} == dict.fromkeys(topics, 3)
    names = {"retention.ms", "cleanup.policy", "min.insync.replicas"}
    assert asyncio.run(_configs(kafka_broker, topics, names)) == {
        settings.topic_readings: {
            "retention.ms": WEEK_MS,
            "cleanup.policy": "delete",
            "min.insync.replicas": "1",
        },
        settings.topic_aggregates: {
            "retention.ms": WEEK_MS,
            "cleanup.policy": "delete",
            "min.insync.replicas": "1",
        },
        settings.topic_dlq: {
            "retention.ms": WEEK_MS,
            "cleanup.policy": "delete",
            "min.insync.replicas": "1",
        },
        settings.changelog_topic: {
            "retention.ms": CHANGELOG_RETENTION_MS,
            "cleanup.policy": "delete",
            "min.insync.replicas": "1",
        },
    }
    # A second worker finds them and changes nothing.
    assert asyncio.run(ensure_topics(settings)) == counts


def test_more_replicas_than_brokers_is_refused_by_the_broker(
    kafka_broker: str, topic_prefix: str
) -> None:
    settings = Settings.from_env(
        {
            "PULSE_BROKER": kafka_broker,
            "PULSE_APP_ID": f"{topic_prefix}app",
            "PULSE_TOPIC_READINGS": f"{topic_prefix}-readings",
            "PULSE_TOPIC_REPLICATION": "3",
        }
    )
    with pytest.raises(TopicRefused) as refused:
        asyncio.run(ensure_topics(settings))
    assert f"{topic_prefix}-readings: InvalidReplicationFactorError: " in str(refused.value)
