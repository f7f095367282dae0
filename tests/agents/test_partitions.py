"""Partition ownership: an assigned partition resumes at its recovered state's position, a
revoked one is flushed before its state goes, and idle close raises only caught-up, quiet
partitions' watermarks (quiet while fetches answer: a broker outage is not quiet time).
(With a real broker: tests/integration/test_rebalance.py, test_partitions_fencing.py.)"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import ConsumerRecord, TopicPartition

import agents.partitions
from agents.ingest import process_records
from agents.readings import ReadingsProcessor
from pulse.changelog import ChangelogWriter
from pulse.settings import Settings
from pulse.sinks._base import FlushBatch, Sink
from tables.partition_state import PartitionState
from tables.windows import WindowSpec, parse_windows

TOPIC = "readings"
T0_US = 1_795_315_440 * 1_000_000


def tp(partition: int) -> TopicPartition:
    return TopicPartition(TOPIC, partition)


class FakeConsumer:
    """The parts of AIOKafkaConsumer that partition ownership uses."""

    def __init__(self) -> None:
        self.highwaters: dict[TopicPartition, int] = {}
        self.polled_ms: dict[TopicPartition, float] = {}
        self.committed_offsets: dict[TopicPartition, int] = {}
        self.beginnings: dict[TopicPartition, int] = {}
        self.seeks: dict[TopicPartition, int] = {}
        self.commits: list[dict[TopicPartition, int]] = []
        self.paused: set[TopicPartition] = set()
        self._coordinator = Coordinator()

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters.get(tp)

    def last_poll_timestamp(self, tp: TopicPartition) -> float | None:
        return self.polled_ms.get(tp)

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.committed_offsets.get(tp)

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.beginnings[tp] for tp in tps}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)


class Coordinator:
    """aiokafka's group coordinator, as far as a request to rejoin the group goes."""

    def __init__(self) -> None:
        self.rejoins = 0

    def request_rejoin(self) -> None:
        self.rejoins += 1


class FakeProducer:
    """Acks every changelog record at once and keeps the partitions they went to."""

    def __init__(self) -> None:
        self.partitions: list[int] = []

    async def send(self, topic: str, value: bytes, partition: int) -> asyncio.Future[Any]:
        self.partitions.append(partition)
        acked: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        acked.set_result(ConsumerRecord(topic, partition, 0, 0, 0, None, value, None, 0, 0, ()))
        return acked


class RecordingSink(Sink):
    def __init__(self) -> None:
        self.written: list[FlushBatch] = []

    async def write(self, batch: FlushBatch) -> None:
        self.written.append(batch)


def processor_with_fakes(env: dict[str, str] | None = None) -> ReadingsProcessor:
    processor = ReadingsProcessor(Settings.from_env(env or {}))
    processor.consumer = FakeConsumer()
    processor.writer = ChangelogWriter(FakeProducer(), "changelog")
    return processor


def fakes(processor: ReadingsProcessor) -> tuple[FakeConsumer, FakeProducer]:
    consumer, writer = processor.consumer, processor.writer
    assert isinstance(consumer, FakeConsumer) and writer is not None
    assert isinstance(writer.producer, FakeProducer)
    return consumer, writer.producer


def state_with_a_reading(specs: tuple[WindowSpec, ...], device: str) -> PartitionState:
    state = PartitionState(specs, 0)
    doc = {"device": device, "metric": "m", "value": 1.5, "ts": T0_US / 1e6}
    stamp = T0_US // 1000
    value = orjson.dumps(doc)
    record = ConsumerRecord(TOPIC, 0, 0, stamp, 0, device.encode(), value, None, 0, 0, ())
    process_records(state, [record], 4096, 0, lambda *rejected: pytest.fail(f"{rejected}"))
    assert state.next_offset == 1
    return state


def test_assigned_partitions_resume_at_the_recovered_state_else_committed_else_beginning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    processor = processor_with_fakes()
    consumer, _ = fakes(processor)
    specs = processor.settings.windows
    recovered_state = PartitionState(specs, 0, next_offset=42)
    recovered: dict[int, tuple[PartitionState | None, int]] = {
        0: (recovered_state, 7),
        1: (None, -1),
        2: (None, -1),
    }

    async def recover(options: Any, topic: str, partition: int, *args: Any, **kw: Any) -> Any:
        return recovered.pop(partition)  # each partition recovered once

    monkeypatch.setattr(agents.partitions, "recover_partition", recover)
    consumer.committed_offsets[tp(1)] = 10  # the changelog was lost; the group kept its place
    consumer.committed_offsets[tp(0)] = 99  # ignored: the changelog says where to resume
    consumer.beginnings[tp(2)] = 3

    async def run() -> None:
        await processor._on_assigned({tp(0), tp(1), tp(2)})
        assert processor.ready.is_set()
        assert consumer.seeks == {tp(0): 42, tp(1): 10, tp(2): 3}
        assert processor.states[0] is recovered_state
        assert {p: s.next_offset for p, s in processor.states.items()} == {0: 42, 1: 10, 2: 3}
        # An assignment that keeps a partition leaves its state alone.
        consumer.seeks.clear()
        await processor._on_assigned({tp(0), tp(1), tp(2)})
        assert consumer.seeks == {}
        assert processor.states[0] is recovered_state

    asyncio.run(run())


def test_a_revoked_partition_is_flushed_before_its_state_is_dropped() -> None:
    processor = processor_with_fakes()
    consumer, producer = fakes(processor)
    sink = RecordingSink()
    processor.sinks = [sink]
    specs = processor.settings.windows
    processor.states = {0: state_with_a_reading(specs, "d0"), 1: state_with_a_reading(specs, "d1")}

    async def run() -> None:
        await processor._on_revoked({tp(0), tp(5)})  # 5 was never assigned here
        assert sorted(processor.states) == [1]
        # Partition 0's outputs, then its delta in the changelog, then its offset committed;
        # partition 1 was not drained.
        assert [latest.device for b in sink.written for latest in b.latest] == ["d0"]
        assert set(producer.partitions) == {0}
        assert consumer.commits == [{tp(0): 1}]
        await processor._on_revoked({tp(0)})  # gone already: nothing to flush
        assert consumer.commits == [{tp(0): 1}]

    asyncio.run(run())


def test_idle_close_raises_only_caught_up_quiet_partitions() -> None:
    processor = processor_with_fakes({"PULSE_IDLE_CLOSE": "10"})
    consumer, _ = fakes(processor)
    specs = parse_windows("10s")
    now_ms = time.time() * 1000
    quiet = time.monotonic() - 11
    for partition in range(4):
        processor.states[partition] = state_with_a_reading(specs, f"d{partition}")
        processor.note_records(partition, quiet)
        consumer.highwaters[tp(partition)] = 1
        consumer.polled_ms[tp(partition)] = now_ms
    processor.note_records(1, time.monotonic())  # a record just now
    consumer.highwaters[tp(2)] = 2  # a record waits, not yet applied
    consumer.polled_ms[tp(3)] = now_ms - 5000  # the last fetch response is stale
    before = {p: s.watermark for p, s in processor.states.items()}

    asyncio.run(processor.close_idle())
    raised = [p for p, s in processor.states.items() if s.watermark != before[p]]
    assert raised == [0]
    assert processor.states[0].watermark >= (now_ms / 1000 - 1) * 1_000_000 - (
        processor.settings.grace_us
    )
    # A stale fetch response (the broker away) restarts the quiet time: with fresh fetches
    # again, partition 3 counts as quiet only PULSE_IDLE_CLOSE later, so readings that
    # waited out the outage in their producers are not late.
    consumer.polled_ms[tp(3)] = time.time() * 1000
    asyncio.run(processor.close_idle())
    assert processor.states[3].watermark == before[3]
    processor.note_records(3, time.monotonic() - 11)
    asyncio.run(processor.close_idle())
    assert processor.states[3].watermark != before[3]


def test_quiet_time_starts_over_after_every_stale_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker outage shorter than PULSE_IDLE_CLOSE after the last record: quiet time counts
    from the last look at a stale fetch, so the partition is closed only PULSE_IDLE_CLOSE
    after fetches are fresh again (not as soon as they are, which made the readings that
    waited out the outage late)."""
    processor = processor_with_fakes({"PULSE_IDLE_CLOSE": "10"})
    consumer, _ = fakes(processor)
    clock = [1000.0]
    monkeypatch.setattr(agents.partitions.time, "monotonic", lambda: clock[0])
    processor.states[0] = state_with_a_reading(parse_windows("10s"), "d0")
    processor.note_records(0, 1000.0)  # the last record before the outage
    consumer.highwaters[tp(0)] = 1
    before = processor.states[0].watermark

    def look(at: float, fresh: bool) -> bool:
        clock[0] = at
        consumer.polled_ms[tp(0)] = time.time() * 1000 - (0 if fresh else 5000)
        asyncio.run(processor.close_idle())
        return processor.states[0].watermark != before

    assert not look(1003.0, fresh=False)  # the broker is away
    assert not look(1009.0, fresh=False)  # still away, 9 s after the last record
    assert not look(1012.0, fresh=True)  # back: 12 s after the last record, 3 s after the look
    assert not look(1018.5, fresh=True)
    assert look(1019.0, fresh=True)  # 10 s of fresh fetches without a record


class StartStop:
    """A changelog producer that only starts and stops."""

    def __init__(self) -> None:
        self.running = False

    async def start(self) -> None:
        self.running = True

    async def stop(self) -> None:
        self.running = False


def test_a_failed_takeover_gives_the_partitions_up_and_rejoins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    processor = processor_with_fakes()
    consumer, _ = fakes(processor)
    producers: list[StartStop] = []

    def make(partition: int) -> Any:
        producers.append(StartStop())
        return producers[-1]

    writer = processor.writer = ChangelogWriter(None, "changelog", make)

    async def recover(servers: str, topic: str, partition: int, *args: Any, **kw: Any) -> Any:
        if partition == 1:
            raise KafkaConnectionError("the broker went away")
        return None, -1

    monkeypatch.setattr(agents.partitions, "recover_partition", recover)
    monkeypatch.setattr(agents.partitions, "ASSIGNMENT_RETRY_DELAY", 0.0)
    asyncio.run(processor._on_assigned({tp(0), tp(1)}))
    # Nothing half taken over: no state, no producer left open, and the group asked again.
    assert processor.states == {} and not processor.ready.is_set()
    assert len(producers) == 2 and not any(p.running for p in producers)
    assert writer.open_producers == 0
    assert consumer._coordinator.rejoins == 1
