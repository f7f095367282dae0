"""A fenced worker drops the partition and goes on (Apache Kafka, changelog in transactions).

The readings processor owns partitions 0 and 1, each with its own transactional changelog
producer, opened on assignment and closed on revocation. When another worker opens partition
0's changelog, this one's next flush is refused for partition 0 only: the flush completes,
partition 0's state is dropped, its fetching paused and the group asked to rebalance, while
partition 1 goes on. The changelog keeps partition 0 as this worker last committed it.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from agents.readings import ReadingsProcessor
from pulse.changelog import ChangelogWriter, recover_partition, transactional_producer_factory
from pulse.kafka_clients import client_options
from pulse.settings import Settings
from tests.agents.test_partitions import FakeConsumer, RecordingSink
from tests.helpers import kafka

pytestmark = pytest.mark.integration

T0 = 1_795_315_440.0


def records(topic: str, partition: int, offsets: range) -> list[ConsumerRecord]:
    out = []
    for offset in offsets:
        doc = {"device": f"d{partition}", "metric": "m", "value": offset, "ts": T0 + offset}
        out.append(
            ConsumerRecord(topic, partition, offset, 0, 0, b"d", orjson.dumps(doc), None, 0, 0, ())
        )
    return out


def test_a_fenced_partition_is_dropped_and_the_others_go_on(
    kafka_broker: str, topic_prefix: str
) -> None:
    app_id = f"{topic_prefix}app"
    settings = Settings.from_env(
        {
            "PULSE_BROKER": kafka_broker,
            "PULSE_APP_ID": app_id,
            "PULSE_TOPIC_READINGS": f"{topic_prefix}-readings",
            "PULSE_WINDOWS": "10s",
        }
    )
    topic, changelog = settings.topic_readings, settings.changelog_topic
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    options = client_options(settings)
    factory = transactional_producer_factory(options, app_id)

    def apply(processor: ReadingsProcessor, partition: int, until: int) -> None:
        state = processor.states[partition]
        tp = TopicPartition(topic, partition)
        processor._process(tp, state, records(topic, partition, range(state.next_offset, until)))

    async def run() -> None:
        await kafka.create_topics(kafka_broker, {changelog: 2})
        processor = ReadingsProcessor(settings)
        consumer = FakeConsumer()
        consumer.beginnings = {tp0: 0, tp1: 0}
        processor.consumer = consumer
        writer = processor.writer = ChangelogWriter(None, changelog, factory)
        writer.on_lost = processor.partition_lost
        processor.sinks = [RecordingSink()]
        other = ChangelogWriter(None, changelog, factory)
        try:
            for _ in range(2):  # producers come and go with the assignment
                await processor._on_assigned({tp0, tp1})
                assert writer.open_producers == 2
                await processor._on_revoked({tp0, tp1})
                assert writer.open_producers == 0 and processor.states == {}
            await processor._on_assigned({tp0, tp1})
            apply(processor, 0, 30)
            apply(processor, 1, 20)
            await processor.flush()
            assert consumer.commits[-1] == {tp0: 30, tp1: 20}

            # Another worker takes partition 0 over: it opens its changelog.
            await other.open(0)
            apply(processor, 0, 50)
            apply(processor, 1, 40)
            await processor.flush()  # refused for partition 0, without an error
            assert sorted(processor.states) == [1]
            assert consumer.paused == {tp0}
            assert consumer._coordinator.rejoins == 1
            assert writer.open_producers == 1
            assert consumer.commits[-1] == {tp1: 40}

            # Partition 1 goes on.
            apply(processor, 1, 60)
            await processor.flush()
            assert consumer.commits[-1] == {tp1: 60}

            # The changelog has partition 0 as this worker last committed it.
            state, _ = await recover_partition(
                options,
                changelog,
                0,
                settings.windows,
                settings.grace_us,
                read_committed=True,
            )
            assert state is not None and state.next_offset == 30
            await processor._on_revoked({tp0, tp1})
            assert writer.open_producers == 0
        finally:
            await writer.release_all()
            await other.release_all()

    asyncio.run(run())
