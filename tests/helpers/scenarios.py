"""Building blocks of the crash and rebalance tests: a paced producer, progress from /health,
and every output compared with the reference.

Why the producer never stops while a worker runs: a caught-up partition that gets no record
for ``PULSE_IDLE_CLOSE`` seconds has its watermark moved to wall-clock time, which closes
every window of the (2023) dataset; the reference knows nothing of wall clocks. So the
producer goes fast up to an *allowance* the test raises step by step, and beyond it keeps a
slow trickle that touches every partition well within the idle-close time. The records and
their order are fixed by the dataset; only the timing varies, and the reference is computed
from the offsets the broker gave back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from tests.helpers import kafka
from tests.helpers.redis_cluster import sync_redis
from tests.helpers.worker import WorkerProcess
from tests.integration import dataset
from tests.integration.test_pipeline import (
    assert_aggregates_topic,
    assert_dead_letters,
    assert_influx,
    assert_redis,
    assert_sliding,
    pipeline_env,
    wait_for_all_closed,
)
from tests.reference import Expected, Record, compute

# Every kind of window, so that crashes and handovers hit tumbling, hopping and sliding state.
WINDOWS = "10s,1m,30s/10s,sliding:20s"
WINDOWS_US: dict[str, int | tuple[int, int]] = {
    "10s": 10_000_000,
    "1m": 60_000_000,
    "30s/10s": (30_000_000, 10_000_000),
}
SLIDING_US = {"sliding:20s": 20_000_000}
GRACE_US = 5_000_000


def scenario_env(
    prefix: str, broker: str, redis_url: str, influx_url: str, partitions: int
) -> dict[str, str]:
    env = pipeline_env(prefix, broker, redis_url, influx_url)
    env.update(
        PULSE_WINDOWS=WINDOWS,
        PULSE_PARTITIONS=str(partitions),
        PULSE_SESSION_TIMEOUT="2",
        PULSE_FLUSH_INTERVAL="0.1",
        PULSE_IDLE_CLOSE="2",
    )
    return env


def build_entries(prefix: str, partitions: int, per_device: int) -> list[dataset.Entry]:
    """The dataset over 4 partitions, or two of them (other devices, other seed) interleaved
    over 8 partitions, the second one on partitions 4-7, so that every partition has data."""
    first = dataset.build(prefix, partitions=4, per_device=per_device)
    if partitions == 4:
        return first
    assert partitions == 8
    second = [
        dataclasses.replace(e, partition=e.partition + 4)
        for e in dataset.build(f"{prefix}-b", partitions=4, per_device=per_device, seed=11)
    ]
    out: list[dataset.Entry] = []
    for i in range(max(len(first), len(second))):
        out += first[i : i + 1] + second[i : i + 1]
    return out


class PacedProducer:
    """Produces ``entries`` in order in a background thread, one acknowledged record at a
    time (so each offset is known): fast up to :attr:`allowed`, then a trickle."""

    def __init__(
        self,
        broker: str,
        topic: str,
        entries: list[dataset.Entry],
        trickle_per_s: float = 40,
    ) -> None:
        self.broker = broker
        self.topic = topic
        self.entries = entries
        self.trickle_per_s = trickle_per_s
        self.allowed = 0
        self.stored: list[kafka.StoredRecord] = []
        self.error: BaseException | None = None
        self._stop = False
        self._go = threading.Event()
        self._go.set()
        self._parked = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paced-producer", daemon=True)

    @property
    def total(self) -> int:
        return len(self.entries)

    def allow(self, fraction: float) -> None:
        self.allowed = max(self.allowed, min(self.total, round(fraction * self.total)))

    def start(self) -> PacedProducer:
        self._thread.start()
        return self

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"producer failed: {self.error!r}") from self.error

    def finish(self, timeout: float = 60.0) -> list[kafka.StoredRecord]:
        """Produce the rest at full speed; returns every record as stored."""
        self.allow(1.0)
        self._thread.join(timeout)
        self.check()
        assert not self._thread.is_alive(), "producer did not finish"
        assert len(self.stored) == self.total
        return self.stored

    def hold(self, timeout: float = 30.0) -> None:
        """Stop sending after the record in flight; returns once it is stored."""
        self._go.clear()
        if not self._parked.wait(timeout):
            self.check()
            raise AssertionError("producer did not stop")

    def resume(self) -> None:
        self._parked.clear()
        self._go.set()

    def close(self) -> None:
        self._stop = True
        self._go.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._produce())
        except BaseException as exc:
            self.error = exc

    async def _produce(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap(self.broker),
            acks="all",
            linger_ms=0,
        )
        await producer.start()
        try:
            for entry in self.entries:
                while not self._go.is_set():
                    self._parked.set()
                    await asyncio.sleep(0.02)
                if self._stop:
                    return
                trickle = len(self.stored) >= self.allowed
                meta = await producer.send_and_wait(
                    self.topic,
                    value=entry.value,
                    key=entry.key,
                    partition=entry.partition,
                    timestamp_ms=entry.timestamp_ms,
                )
                self.stored.append(
                    kafka.StoredRecord(
                        self.topic, meta.partition, meta.offset, entry.key, entry.value, 0
                    )
                )
                if trickle:
                    await asyncio.sleep(1 / self.trickle_per_s)
        finally:
            await producer.stop()


def reference_of(
    entries: list[dataset.Entry], stored: list[kafka.StoredRecord]
) -> tuple[list[Record], dict[int, int], Expected]:
    """Records as stored, each partition's end offset, and the reference outputs."""
    records = [
        Record(s.partition, s.offset, e.meaning) for s, e in zip(stored, entries, strict=True)
    ]
    assert [s.partition for s in stored] == [e.partition for e in entries]
    ends: dict[int, int] = {}
    for s in stored:
        ends[s.partition] = max(ends.get(s.partition, 0), s.offset + 1)
    expected = compute(records, WINDOWS_US, GRACE_US, SLIDING_US)
    # The dataset exercises every rule and every window kind.
    assert set(expected.dead_letters.values()) == {
        "invalid_json",
        "invalid_reading",
        "too_large",
        "late",
    }
    assert expected.late_for_some > 0
    assert {label for _, _, label, _ in expected.windows} == set(WINDOWS_US)
    assert {label for _, _, label in expected.sliding} == set(SLIDING_US)
    return records, ends, expected


def next_offsets(worker: WorkerProcess) -> dict[int, int]:
    """``{partition: next offset}`` of the partitions the worker owns now ({} if unknown)."""
    health = worker.health() or {}
    return {int(p): o for p, o in health.get("next_offsets", {}).items()}


def sink_state(worker: WorkerProcess, name: str) -> dict[str, Any]:
    """What ``/health`` shows of the sink ``name`` ({} if unknown)."""
    health = worker.health() or {}
    return dict(health.get("sinks", {}).get(name, {}))


def wait_until(
    condition: Callable[[], Any],
    what: str,
    workers: Iterable[WorkerProcess],
    producer: PacedProducer | None = None,
    timeout: float = 30.0,
    poll: float = 0.01,
) -> Any:
    """Poll ``condition`` until it returns something true; fail with the workers' logs."""
    workers = list(workers)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if producer is not None:
            producer.check()
        for worker in workers:
            worker.check_alive()
        result = condition()
        if result:
            return result
        time.sleep(poll)
    logs = "\n".join(f"--- {w.name}:\n{w.log_tail(30)}" for w in workers)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")


def assert_outputs_exact(
    broker: str,
    redis_url: str,
    influx_url: str,
    env: dict[str, str],
    expected: Expected,
    records: list[Record],
    dead_letter_repeats: bool,
) -> None:
    """Wait for idle close to end every window, then compare every output with the reference.

    ``dead_letter_repeats``: a crash between the sinks and the changelog makes the next owner
    dead-letter the same records again (identical copies); otherwise each exactly once.
    """
    prefix = env["PULSE_REDIS_PREFIX"]
    client = sync_redis(redis_url)
    series = {(d, m, label) for d, m, label, _ in expected.windows}
    wait_for_all_closed(client, prefix, len(series))
    assert_aggregates_topic(broker, env, expected)
    if dead_letter_repeats:
        assert_dead_letter_set(broker, env, expected)
    else:
        assert_dead_letters(broker, env, expected, records)
    assert_redis(client, prefix, expected)
    assert_sliding(client, prefix, expected)
    assert_influx(influx_url, prefix, expected)


def assert_dead_letter_set(broker: str, env: dict[str, str], expected: Expected) -> None:
    """Every rejected record with the right reason; repeats only as identical copies."""
    stored = asyncio.run(kafka.read_all(broker, env["PULSE_TOPIC_DLQ"]))
    versions: dict[tuple[int, int], set[str]] = {}
    for record in stored:
        assert record.value is not None, "a dead letter always has a value"
        letter = orjson.loads(record.value)
        versions.setdefault((letter["partition"], letter["offset"]), set()).add(
            json.dumps(letter, sort_keys=True)
        )
    assert {k: v for k, v in versions.items() if len(v) > 1} == {}
    letters = {k: json.loads(next(iter(v))) for k, v in versions.items()}
    assert {k: d["reason"] for k, d in letters.items()} == expected.dead_letters
    originals = asyncio.run(kafka.read_all(broker, env["PULSE_TOPIC_READINGS"]))
    by_position = {(r.partition, r.offset): r for r in originals}
    for position, letter in letters.items():
        original = by_position[position]
        assert letter["topic"] == env["PULSE_TOPIC_READINGS"]
        assert letter["key"] == (original.key.decode() if original.key is not None else None)
        assert letter["detail"]
