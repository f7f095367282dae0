"""The readings processor's loop: what it hands the web views and the flushes, and when it
counts as catching up. (The loop against a real broker: tests/integration/.)"""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord, TopicPartition

from agents.readings import MAX_RECORDS_PER_FETCH, ReadingsProcessor
from pulse.app import ReadingsProgress
from pulse.changelog import ChangelogWriter
from pulse.settings import Settings
from tables.partition_state import PartitionState


def test_the_processor_is_the_progress_the_web_views_read() -> None:
    # Checked by mypy too: ReadingsProcessor satisfies pulse.app.ReadingsProgress.
    progress: ReadingsProgress = ReadingsProcessor(Settings.from_env({}))
    assert not progress.ready.is_set()
    assert progress.states == {}
    assert progress.flushes == 0


def test_a_rejected_record_is_a_dead_letter_of_the_next_flush() -> None:
    processor = ReadingsProcessor(Settings.from_env({}))
    processor.writer = ChangelogWriter(None, "unused")
    state = PartitionState(processor.settings.windows, 0)
    tp = TopicPartition("readings", 3)
    record = ConsumerRecord("readings", 3, 0, 0, 0, b"k", b"{not json", None, 1, 9, ())
    processor._process(tp, state, [record])
    assert state.next_offset == 1
    prepared = processor._prepare_flush()
    assert prepared is not None
    batch, _ = prepared
    [letter] = batch.dead_letters
    assert (letter.reason, letter.topic, letter.partition, letter.offset) == (
        "invalid_json",
        "readings",
        3,
        0,
    )
    assert (letter.key, letter.value) == (b"k", b"{not json")
    assert processor._prepare_flush() is None  # handed over once


class Highwaters:
    def __init__(self, highwaters: dict[int, int]) -> None:
        self.highwaters = highwaters

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters.get(tp.partition)


def test_catching_up_means_more_than_a_fetch_waits_in_the_assigned_partitions() -> None:
    processor = ReadingsProcessor(Settings.from_env({}))
    specs = processor.settings.windows
    processor.states = {0: PartitionState(specs, 0, next_offset=100), 1: PartitionState(specs, 0)}
    consumer = Highwaters({0: 100 + MAX_RECORDS_PER_FETCH // 2})
    processor.consumer = consumer
    assert not processor._catching_up()  # partition 1: no fetch yet, no high watermark
    consumer.highwaters[1] = MAX_RECORDS_PER_FETCH // 2
    assert not processor._catching_up()  # exactly one fetch's worth
    consumer.highwaters[1] += 1
    assert processor._catching_up()
