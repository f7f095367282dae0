"""pulse/topics.py on Apache Kafka: the topics Pulse creates, with the configs it documents;
and topics just created are awaited until the broker describes them."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from models.reading import Rejected, parse_reading
from pulse import topics as topics_module
from pulse.settings import Settings
from pulse.topics import CHANGELOG_RETENTION_MS, WEEK_MS, TopicRefused, ensure_topics
from tests.helpers.kafka import bootstrap, produce, read_all


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
            "PULSE_TOPIC_ALERTS": f"{topic_prefix}-alerts",
            "PULSE_TOPIC_OUTPUT_DLQ": f"{topic_prefix}-output-dlq",
            "PULSE_PARTITIONS": "3",
        }
    )
    counts = asyncio.run(ensure_topics(settings))
    topics = [
        settings.topic_readings,
        settings.topic_aggregates,
        settings.topic_dlq,
        settings.topic_alerts,
        settings.topic_output_dlq,
        settings.changelog_topic,
    ]
    assert {topic: counts[topic] for topic in topics} == dict.fromkeys(topics, 3)
    names = {"retention.ms", "cleanup.policy", "min.insync.replicas", "message.timestamp.type"}
    assert asyncio.run(_configs(kafka_broker, topics, names)) == {
        settings.topic_readings: {
            "retention.ms": WEEK_MS,
            "cleanup.policy": "delete",
            "min.insync.replicas": "1",
            "message.timestamp.type": "LogAppendTime",  # the broker's clock: PULSE_MAX_FUTURE
        },
        settings.topic_aggregates: {
            "retention.ms": WEEK_MS,
            "cleanup.policy": "delete",
            "min.insync.replicas": "1",
            "message.timestamp.type": "CreateTime",
        },
        settings.topic_dlq: {
            "retention.ms": WEEK_MS,
            "cleanup.policy": "delete",
            "min.insync.replicas": "1",
            "message.timestamp.type": "CreateTime",
        },
        settings.topic_alerts: {
            "retention.ms": WEEK_MS,
            "cleanup.policy": "delete",
            "min.insync.replicas": "1",
            "message.timestamp.type": "CreateTime",
        },
        settings.topic_output_dlq: {
            "retention.ms": WEEK_MS,
            "cleanup.policy": "delete",
            "min.insync.replicas": "1",
            "message.timestamp.type": "CreateTime",
        },
        settings.changelog_topic: {
            "retention.ms": CHANGELOG_RETENTION_MS,
            "cleanup.policy": "delete",
            "min.insync.replicas": "1",
            "message.timestamp.type": "CreateTime",
        },
    }
    # A second worker finds them and changes nothing.
    assert asyncio.run(ensure_topics(settings)) == counts


def test_the_readings_topic_stamps_records_with_the_brokers_clock(
    kafka_broker: str, topic_prefix: str
) -> None:
    # On the readings topic Pulse creates, a record's timestamp is when the broker appended
    # it, whatever the producer's clock says: a reading stamped by a clock that runs ahead
    # (its record too) is held to PULSE_MAX_FUTURE against the broker's time and rejected,
    # and one whose producer's clock runs behind is not.
    settings = Settings.from_env(
        {
            "PULSE_BROKER": kafka_broker,
            "PULSE_APP_ID": f"{topic_prefix}app",
            "PULSE_TOPIC_READINGS": f"{topic_prefix}-readings",
            "PULSE_TOPIC_AGGREGATES": f"{topic_prefix}-aggregates",
            "PULSE_TOPIC_DLQ": f"{topic_prefix}-dlq",
            "PULSE_PARTITIONS": "1",
        }
    )
    asyncio.run(ensure_topics(settings))
    now = time.time()
    ahead = {"device": "d", "metric": "m", "value": 1.0, "ts": now + 600}
    behind = {"device": "d", "metric": "m", "value": 2.0, "ts": now + 5}
    records: list[tuple[int | None, bytes | None, bytes | None, int | None]] = [
        (0, b"d", orjson.dumps(ahead), round((now + 600) * 1000)),  # the producer's clock too
        (0, b"d", orjson.dumps(behind), 1000),  # a producer whose clock says 1970
    ]
    asyncio.run(produce(kafka_broker, settings.topic_readings, records))
    after = time.time()
    stored = asyncio.run(read_all(kafka_broker, settings.topic_readings))
    assert [r.value for r in stored] == [r[2] for r in records]
    for record in stored:
        assert now * 1000 - 1000 <= record.timestamp <= after * 1000 + 1000
    max_bytes, max_future_us = settings.max_message_bytes, settings.max_future_us
    first, second = stored
    with pytest.raises(Rejected) as too_far:
        parse_reading(first.key, first.value, first.timestamp, max_bytes, max_future_us)
    assert too_far.value.reason == "invalid_reading"
    assert "ahead of its record's timestamp" in too_far.value.detail
    reading = parse_reading(second.key, second.value, second.timestamp, max_bytes, max_future_us)
    assert reading.value == 2.0


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


class SlowAdmin:
    """An admin client of a broker that describes a topic only a while after creating it."""

    topics: dict[str, int]
    pending: dict[str, int]
    describes: int

    def __init__(self, **options: object) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def list_topics(self) -> list[str]:
        SlowAdmin.describes += 1
        if SlowAdmin.describes == 4:  # the third look after the creation finds them
            SlowAdmin.topics.update(SlowAdmin.pending)
        return list(SlowAdmin.topics)

    async def describe_topics(self, names: list[str]) -> list[dict[str, object]]:
        return [{"topic": n, "partitions": list(range(SlowAdmin.topics[n]))} for n in names]

    async def create_topics(self, new: list[NewTopic]) -> Any:
        SlowAdmin.pending = {t.name: t.num_partitions for t in new}
        return SimpleNamespace(topic_errors=[(t.name, 0, None) for t in new])


def test_topics_just_created_are_awaited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topics_module, "AIOKafkaAdminClient", SlowAdmin)
    SlowAdmin.topics, SlowAdmin.pending, SlowAdmin.describes = {"t-readings": 4}, {}, 0
    settings = Settings.from_env(
        {
            "PULSE_APP_ID": "t",
            "PULSE_TOPIC_READINGS": "t-readings",
            "PULSE_TOPIC_AGGREGATES": "t-aggregates",
            "PULSE_TOPIC_DLQ": "t-dlq",
            "PULSE_TOPIC_ALERTS": "t-alerts",
            "PULSE_TOPIC_OUTPUT_DLQ": "t-output-dlq",
            "PULSE_PARTITIONS": "2",
        }
    )
    counts = asyncio.run(ensure_topics(settings))
    assert counts == {
        "t-readings": 4,
        "t-aggregates": 2,
        "t-dlq": 2,
        "t-alerts": 2,
        "t-output-dlq": 2,
        "t-readings-state": 4,
    }
    assert SlowAdmin.describes == 4
