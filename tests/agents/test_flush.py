"""Flushes in flight: each sink writes in flush order on its own, a slow sink holds back only
itself until the in-flight bound, and a flush completes only when every sink has it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from aiokafka.structs import TopicPartition
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agents import flush
from agents.readings import ReadingsProcessor
from models.alerts import Registry
from models.outputs import DeadLetter
from models.reading import Reading
from pulse.changelog import ChangelogWriter, EncodedDelta
from pulse.local.stack import free_port, start_redis
from pulse.metrics import worker_registry
from pulse.settings import Settings
from pulse.sinks._base import FlushBatch, Sink
from pulse.sinks.redis import RedisSink, read_window
from tables.partition_state import PartitionState
from tables.windows import parse_windows

S = 1_000_000


class RecordingSink(Sink):
    """Keeps the batches it wrote; writes only while ``open`` is set."""

    def __init__(self, open_now: bool) -> None:
        self.open = asyncio.Event()
        if open_now:
            self.open.set()
        self.written: list[FlushBatch] = []

    async def write(self, batch: FlushBatch) -> None:
        await self.open.wait()
        self.written.append(batch)


def batch(number: int) -> FlushBatch:
    letter = DeadLetter("late", f"flush {number}", "readings", 0, number, b"d", b"{}", 100)
    return FlushBatch(dead_letters=[letter])


def numbers(sink: RecordingSink) -> list[int]:
    return [letter.offset for b in sink.written for letter in b.dead_letters]


def test_a_slow_sink_does_not_hold_back_the_others() -> None:
    async def run() -> None:
        processor = ReadingsProcessor(Settings.from_env({}))
        slow, fast = RecordingSink(open_now=False), RecordingSink(open_now=True)
        processor.sinks = [slow, fast]
        for number in range(5):
            processor._submit_flush(batch(number), [])
            await asyncio.sleep(0.01)  # flushes come one at a time
        assert numbers(fast) == [0, 1, 2, 3, 4]  # all written, in order
        assert numbers(slow) == []
        # No flush is complete while one sink lacks it.
        await asyncio.sleep(0.2)
        assert len(processor._in_flight) == 5
        assert not any(finished.done() for finished, _ in processor._in_flight)
        slow.open.set()
        await processor._settle(0)
        assert numbers(slow) == [0, 1, 2, 3, 4]
        # The slow sink wrote flush 0, then the four that waited as one merged batch.
        assert [len(b.dead_letters) for b in slow.written] == [1, 4]
        assert [len(b.dead_letters) for b in fast.written] == [1, 1, 1, 1, 1]
        assert not processor._in_flight

    asyncio.run(run())


def test_processing_waits_when_the_bound_is_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flush, "MAX_FLUSHES_IN_FLIGHT", 3)

    async def run() -> None:
        processor = ReadingsProcessor(Settings.from_env({}))
        stalled = RecordingSink(open_now=False)
        processor.sinks = [stalled]
        # No partitions are assigned: the next flush has nothing to drain or encode.
        processor.writer = ChangelogWriter(None, "unused")
        for number in range(3):
            processor._submit_flush(batch(number), [])
        # A fourth flush has to wait for the oldest: the stalled sink holds consumption.
        fourth = asyncio.ensure_future(processor._start_flush(spread_closes=False))
        await asyncio.sleep(0.2)
        assert not fourth.done()
        stalled.open.set()
        await asyncio.wait_for(fourth, 5)
        await processor._settle(0)
        assert numbers(stalled) == [0, 1, 2]

    asyncio.run(run())


def test_a_failed_write_is_raised_to_the_processor() -> None:
    class BrokenSink(Sink):
        async def write(self, batch: FlushBatch) -> None:
            raise RuntimeError("a bug in a sink")

    async def run() -> None:
        processor = ReadingsProcessor(Settings.from_env({}))
        processor.sinks = [BrokenSink()]
        processor._submit_flush(batch(0), [])
        with pytest.raises(RuntimeError, match="a bug in a sink"):
            await processor._settle(0)

    asyncio.run(run())


def test_closes_are_spread_only_while_readings_arrive() -> None:
    processor = ReadingsProcessor(
        Settings.from_env({"PULSE_FLUSH_INTERVAL": "0.25", "PULSE_CLOSE_SPREAD": "5"})
    )
    spread = 5_000_000
    assert flush.INPUT_PAUSE == 1.0
    processor.note_fetch(99.0, got_records=True)
    assert processor.close_spread_us(100.0) == spread
    # The loop was busy until 100.0 (a long flush), then fetched nothing: not yet a pause.
    processor.note_fetch(100.0, got_records=False)
    processor.note_fetch(100.05, got_records=False)
    assert processor.close_spread_us(100.99) == spread
    # Fetches found nothing for a second: waiting windows close at once.
    assert processor.close_spread_us(101.0) == 0
    assert processor.close_spread_us(160.0) == 0
    # Records again: spread again.
    processor.note_fetch(160.0, got_records=True)
    assert processor.close_spread_us(160.5) == spread


def test_a_long_flush_interval_is_the_pause() -> None:
    processor = ReadingsProcessor(
        Settings.from_env({"PULSE_FLUSH_INTERVAL": "3", "PULSE_CLOSE_SPREAD": "5"})
    )
    processor.note_fetch(9.0, got_records=True)
    processor.note_fetch(10.0, got_records=False)
    assert processor.close_spread_us(12.9) == 5_000_000
    assert processor.close_spread_us(13.0) == 0


def test_a_fresh_processor_closes_at_once_until_records_arrive() -> None:
    processor = ReadingsProcessor(Settings.from_env({"PULSE_FLUSH_INTERVAL": "0.25"}))
    assert processor.close_spread_us(time.monotonic()) == 0


def test_a_zero_close_spread_closes_at_once() -> None:
    processor = ReadingsProcessor(Settings.from_env({"PULSE_CLOSE_SPREAD": "0"}))
    processor.note_fetch(1.0, got_records=True)
    assert processor.close_spread_us(1.1) == 0


class RoundsWriter:
    """Records each round of changelog writes; every delta is stored."""

    def __init__(self, transactional: bool) -> None:
        self.transactional = transactional
        self.rounds: list[list[tuple[int, int]]] = []

    async def write(self, deltas: list[EncodedDelta]) -> set[int]:
        self.rounds.append([(d.partition, d.to_offset) for d in deltas])
        return {d.partition for d in deltas}


def delta(partition: int, to_offset: int) -> EncodedDelta:
    return EncodedDelta(partition, to_offset, False, [b"{}"])


def test_changelog_rounds_share_an_interval_unless_hurried() -> None:
    async def run() -> None:
        writer = RoundsWriter(transactional=True)
        lane = flush.ChangelogLane(writer, interval=0.5)  # type: ignore[arg-type]
        first = lane.submit([delta(0, 10)])
        assert await asyncio.wait_for(first, 0.1) == {0}  # the first round starts at once
        second = lane.submit([delta(0, 20)])
        third = lane.submit([delta(1, 5), delta(0, 25)])
        await asyncio.sleep(0.2)
        assert not second.done()  # the next round waits for the interval ...
        assert await asyncio.wait_for(third, 1) == {0, 1}
        assert second.done()
        # ... and takes every delta submitted meanwhile, in order.
        assert writer.rounds == [[(0, 10)], [(0, 20), (1, 5), (0, 25)]]
        began = time.monotonic()
        fourth = lane.submit([delta(1, 9)])
        lane.hurry()  # a handover or a stop waits for it
        await asyncio.wait_for(fourth, 0.2)
        assert time.monotonic() - began < 0.2
        assert writer.rounds[-1] == [(1, 9)]

    asyncio.run(run())


def test_a_flush_now_does_not_wait_for_the_interval() -> None:
    async def run() -> None:
        processor = ReadingsProcessor(Settings.from_env({}))
        writer = RoundsWriter(transactional=True)
        processor.writer = writer  # type: ignore[assignment]
        processor.consumer = Committer()
        assert flush.TRANSACTION_INTERVAL >= 0.5
        processor._submit_flush(batch(0), [delta(0, 1)])
        await processor._settle(0)  # the first round: at once
        processor._submit_flush(batch(1), [delta(0, 2)])
        processor._submit_flush(batch(2), [delta(1, 7)])
        began = time.monotonic()
        await processor._settle(0)  # the next: hurried, not an interval later
        assert time.monotonic() - began < 0.3
        assert writer.rounds == [[(0, 1)], [(0, 2), (1, 7)]]
        assert processor.flushes == 3
        assert processor.consumer.commits[-2:] == [
            {TopicPartition("readings", 0): 2},
            {TopicPartition("readings", 1): 7},
        ]

    asyncio.run(run())


class Committer:
    def __init__(self) -> None:
        self.commits: list[dict[Any, int]] = []

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.commits.append(offsets)


def test_the_test_only_freeze_is_off_unless_asked_for_and_checks_its_value() -> None:
    assert flush.FlushFreeze.from_env({}).step is None
    freeze = flush.FlushFreeze.from_env({flush.FREEZE_VARIABLE: "between_sinks:3"})
    assert (freeze.step, freeze.flush) == ("between_sinks", 3)
    assert freeze.wanted("between_sinks", 3)
    assert not freeze.wanted("between_sinks", 2) and not freeze.wanted("sinks", 3)
    assert not freeze.wanted("between_sinks", None)  # a flush without closed windows
    for bad in ("sinks", "sinks:0", "sinks:x", "later:1"):
        with pytest.raises(ValueError, match=flush.FREEZE_VARIABLE):
            flush.FlushFreeze.from_env({flush.FREEZE_VARIABLE: bad})


def test_a_frozen_redis_is_let_go_of_and_rewritten_whole_on_its_return(
    tmp_path: Path,
) -> None:
    # A real redis-server, frozen (SIGSTOP: it answers nothing), then killed and started
    # again empty on the same port. Flushes complete without it once a write has been under
    # way for the lane's patience (64 flushes of 0.02 s / 2 = 0.64 s); the batches of later
    # flushes fold into one; on its return the lane writes them with every live key of the
    # state, then waits for Redis again.
    port = free_port()
    server = start_redis(tmp_path / "one", port=port, stop_with_parent=True)
    state = PartitionState(parse_windows("10s"), 0)
    offset = 0

    def apply(device: str, t_s: int, value: float) -> FlushBatch:
        nonlocal offset
        state.apply(Reading(device, "t", value, t_s * S, None), offset)
        offset += 1
        return FlushBatch.of([state.drain()], [])

    async def run() -> flush.MirrorLane:
        processor = ReadingsProcessor(Settings.from_env({"PULSE_FLUSH_INTERVAL": "0.02"}))
        sink = RedisSink(server.url, "m", 600)
        processor.sinks = [sink]
        processor.states = {0: state}
        processor._submit_flush(apply("a", 1, 1.0), [])
        await processor._settle(0)  # Redis answers: the flush waits for it
        lane = processor._lanes[0]
        assert isinstance(lane, flush.MirrorLane) and not lane.detached

        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        processor._submit_flush(apply("a", 12, 2.0), [])  # closes a's [0, 10)
        began = time.monotonic()
        await processor._settle(0)
        assert 0.6 < time.monotonic() - began < 5
        assert lane.detached and sink.health.state == "waiting"
        assert sink.health.reason == "a write under way for 0.6 s"
        processor._submit_flush(apply("b", 13, 3.0), [])
        processor._submit_flush(apply("a", 14, 4.0), [])
        await processor._settle(0)  # done at once: folded
        assert lane._pending is not None
        assert sorted((x.device, x.value) for x in lane._pending.latest.values()) == [
            ("a", 4.0),
            ("b", 3.0),
        ]

        os.kill(server.pid, signal.SIGKILL)
        server.stop()
        back = start_redis(tmp_path / "two", port=port, stop_with_parent=True)
        try:
            for _ in range(100):
                if lane.idle and not lane.detached:
                    break
                await asyncio.sleep(0.05)
            assert lane.idle and not lane.detached and sink.health.state == "ok"
            processor._submit_flush(apply("b", 15, 5.0), [])
            await processor._settle(0)  # attached again: waited for
            await sink.stop()
            return lane
        finally:
            stored = redis.Redis.from_url(back.url)
            keys = sorted(k.decode() for k in stored.scan_iter("m:*"))
            devices = {  # without the versions that fence the writes
                d: {k: v for k, v in stored.hgetall(f"m:device:{d}").items() if b":v" not in k}
                for d in ("a", "b")
            }
            closed = read_window(stored.hgetall("m:closed:10s:a:t"))
            opened = {d: read_window(stored.hgetall(f"m:open:10s:{d}:t")) for d in ("a", "b")}
            top = stored.zrange("m:top:10s:t", 0, -1, withscores=True)
            back.stop()
            assert keys == [
                "m:closed:10s:a:t",
                "m:device:a",
                "m:device:b",
                "m:devices",
                "m:open:10s:a:t",
                "m:open:10s:b:t",
                "m:top:10s:t",
            ]
            assert devices == {
                "a": {b"t": b"4.0", b"t:ts": b"14"},
                "b": {b"t": b"5.0", b"t:ts": b"15"},
            }
            assert closed is not None
            assert (closed["start"], closed["count"], closed["sum"]) == ("0", "1", "1.0")
            assert {d: window and window["count"] for d, window in opened.items()} == {
                "a": "2",
                "b": "2",
            }
            assert top == [(b"a", 1.0)]

    lane = asyncio.run(run())
    assert lane.rewrites == 1


class OneRegistry:
    """A RegistrySource holding one registry at a time."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def current(self) -> Registry:
        return self.registry

    async def at_version(self, version: int) -> Registry:
        assert version == self.registry.version
        return self.registry


def test_a_registry_switch_is_wanted_at_once_logged_and_timed_for_the_metrics(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # pulse_registry_switched_seconds: when each partition began to judge by its version
    # (bench.registry_delay subtracts a change's commit time from it).
    processor = ReadingsProcessor(Settings.from_env({}))
    processor.writer = ChangelogWriter(None, "changelog")
    for partition in (0, 1):
        processor.states[partition] = PartitionState(parse_windows("10s"), 0, 5 * partition)
    source = OneRegistry(Registry(3))
    processor.registry_source = source
    caplog.set_level("INFO", logger="agents.flush")
    assert processor.registry_pending()  # the loop flushes at once to switch
    before = time.time()
    assert processor._prepare_flush() is not None  # the switch's deltas
    after = time.time()
    assert {p: s.registry_version for p, s in processor.states.items()} == {0: 3, 1: 3}
    first = dict(processor.registry_switched)
    assert sorted(first) == [0, 1] and all(before <= t <= after for t in first.values())
    assert "registry: partitions [0, 1] judge alerts by version 3 from offsets [0, 5] on" in (
        caplog.messages
    )
    assert not processor.registry_pending()
    processor._prepare_flush()  # no new version: no switch
    assert processor.registry_switched == first
    time.sleep(0.01)
    source.registry = Registry(4)
    assert processor.registry_pending()
    processor._prepare_flush()
    assert not processor.registry_pending()
    assert all(processor.registry_switched[p] > first[p] for p in (0, 1))
    text = generate_latest(worker_registry(processor.metrics, [])).decode()
    shown = {
        sample.labels["partition"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "pulse_registry_switched_seconds"
    }
    assert shown == {str(p): t for p, t in processor.registry_switched.items()}
    del processor.states[1]  # revoked: no longer shown
    text = generate_latest(worker_registry(processor.metrics, [])).decode()
    assert 'pulse_registry_switched_seconds{partition="1"}' not in text
