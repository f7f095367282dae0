"""Gateways' readings through Redis Streams and ``pulse bridge`` into the worker, exact
through the bridge's crashes and pauses.

Four gateways append paced entries (both forms, valid and not, in order and late) to their
streams, each in a thread of its own, while ``pulse bridge`` processes move them into Kafka:
one bridge SIGKILLed three times mid-stream (and restarted), one of two bridges SIGKILLed,
or one of two frozen (SIGSTOP) past its lease while the other takes its streams over, then
thawed. Every entry must be in Kafka exactly once (by the headers: stream, entry id), in its
stream's order in each partition; then a worker consumes the topic, and every window equals
the independent reference computed from the topic's records (tests/reference.py).

The worker runs once the bridges are done: the crashes are the bridge's, and the worker's
idle close, a wall-clock rule, would otherwise close the (2023) windows while a bridge is
down.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from tests.helpers import kafka
from tests.helpers.bridge import (
    BridgeProcess,
    Entry,
    Gateways,
    StoredEntry,
    assert_exactly_once,
    backlog,
    bridge_env,
    reading_fields,
    stored_entries,
    stream_name,
)
from tests.helpers.redis_cluster import sync_redis
from tests.helpers.scenarios import GRACE_US, SLIDING_US, WINDOWS_US, scenario_env
from tests.helpers.worker import WorkerProcess
from tests.integration.test_pipeline import (
    assert_aggregates_topic,
    assert_influx,
    assert_redis,
    assert_sliding,
    wait_for_all_closed,
)
from tests.reference import Invalid, Record, Valid, compute

pytestmark = pytest.mark.integration

GATEWAYS = 4
DEVICES_PER_GATEWAY = 2
PER_DEVICE = 500
LEASE = 3.0
T0_US = 1_700_000_000 * 1_000_000
METRICS = ("temperature", "humidity")


def gateway_dataset(prefix: str, seed: int = 5) -> list[list[Entry]]:
    """Each gateway's entries in its order: its devices' readings (fields and json forms,
    with and without tags, some out of order within the grace, some far too late) and now
    and then an entry that is no valid reading."""
    rng = random.Random(seed)
    out: list[list[Entry]] = []
    for g in range(GATEWAYS):
        stream = stream_name(prefix, g)
        devices = [f"{prefix}-g{g}-d{d}" for d in range(DEVICES_PER_GATEWAY)]
        clock = {d: T0_US + i * 250_000 + g * 70_000 for i, d in enumerate(devices)}
        entries: list[Entry] = []
        for step in range(PER_DEVICE):
            for device in devices:
                clock[device] += rng.randint(300_000, 900_000)
                t_us = clock[device]
                kind = rng.random()
                if kind < 0.05:
                    t_us -= rng.randint(0, 4_000_000)  # out of order, within the grace
                elif kind < 0.08:
                    t_us -= 300_000_000  # too late for every window
                metric = METRICS[rng.randrange(2)]
                value = round(rng.uniform(-40, 60), 3)
                tags = None if rng.random() < 0.3 else {"site": f"site-{g}", "line": str(step % 3)}
                style = "json" if rng.random() < 0.4 else "fields"
                fields = reading_fields(device, metric, value, t_us, tags, style)
                entries.append(Entry(stream, fields, Valid(device, metric, value, t_us, tags)))
            if step % 25 == 7:
                device = devices[step % len(devices)]
                bad = [
                    (
                        {"device": device, "metric": "temperature", "value": "hot"},
                        "invalid_reading",
                    ),
                    ({"json": '{"device": "' + device + '", "value": '}, "invalid_json"),
                    ({"device": "no spaces", "metric": "t", "value": "1"}, "invalid_reading"),
                    (
                        {
                            "json": orjson.dumps(
                                {"device": device, "metric": "m", "value": 1, "pad": "x" * 3000}
                            ).decode()
                        },
                        "too_large",
                    ),
                ][step % 4]
                entries.append(Entry(stream, bad[0], Invalid(bad[1])))
        out.append(entries)
    return out


def wait(
    condition: Callable[[], Any],
    what: str,
    bridges: list[BridgeProcess],
    gateways: Gateways,
    timeout: float = 60.0,
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gateways.check()
        for bridge in bridges:
            bridge.check_alive()
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    logs = "\n".join(f"--- {b.name}:\n{b.log_tail(40)}" for b in bridges)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")


def moved(bridge: BridgeProcess) -> int:
    """Entries the bridge produced, dead-lettered or found produced, so far."""
    entries = (bridge.health() or {}).get("entries", {})
    return sum(int(v) for v in entries.values())


def held(bridge: BridgeProcess) -> int:
    streams = (bridge.health() or {}).get("streams", {})
    return sum(1 for s in streams.values() if s["phase"] == "ready")


class Scenario:
    """The servers, the gateways and the bridges of one test; then the worker and the
    comparison with the reference."""

    def __init__(
        self, broker: str, redis_url: str, influx_url: str, prefix: str, tmp_path: Path
    ) -> None:
        self.broker, self.redis_url, self.influx_url = broker, redis_url, influx_url
        self.prefix, self.tmp_path = prefix, tmp_path
        self.env = scenario_env(prefix, broker, redis_url, influx_url, partitions=4)
        self.env.update(
            {
                k: v
                for k, v in bridge_env(prefix, broker, redis_url, LEASE).items()
                if k.startswith("PULSE_BRIDGE") or k == "PULSE_MAX_MESSAGE_BYTES"
            }
        )
        self.client = redis.Redis.from_url(redis_url)
        self.streams = [stream_name(prefix, g) for g in range(GATEWAYS)]
        asyncio.run(kafka.create_topics(broker, {self.env["PULSE_TOPIC_READINGS"]: 4}))
        self.gateways = Gateways(redis_url, gateway_dataset(prefix))
        self.bridges: list[BridgeProcess] = []

    def bridge(self) -> BridgeProcess:
        process = BridgeProcess(self.env, self.tmp_path, f"bridge-{len(self.bridges)}").start()
        self.bridges.append(process)
        return process

    def report(self) -> None:
        """What each bridge's read-backs found (printed; shown with ``pytest -s``)."""
        for bridge in self.bridges:
            for line in bridge.log_tail(2000).splitlines():
                if "read back" in line or "lost the lease" in line or "not sent" in line:
                    print(f"{bridge.name}: {line.split('pulse.bridge.service', 1)[-1]}")

    def close(self) -> None:
        self.report()
        self.gateways.close()
        for bridge in self.bridges:
            if bridge.process is not None and bridge.process.poll() is None:
                bridge.send(signal.SIGCONT)
                bridge.stop(signal.SIGKILL)

    def finish(self, running: list[BridgeProcess]) -> tuple[list[StoredEntry], list[StoredEntry]]:
        """The rest of the entries appended, then moved; every entry once in Kafka."""
        self.gateways.finish()
        wait(
            lambda: backlog(self.client, self.streams) == 0,
            "the streams drained",
            running,
            self.gateways,
        )
        readings, letters = stored_entries(self.broker, self.env)
        invalid = {k for k, m in self.gateways.meanings.items() if isinstance(m, Invalid)}
        assert_exactly_once(self.gateways.appended, readings, letters, invalid)
        for letter in letters:
            doc = orjson.loads(letter.value or b"")
            meaning = self.gateways.meanings[(letter.stream, letter.entry_id)]
            assert isinstance(meaning, Invalid) and doc["reason"] == meaning.reason
        for bridge in running:
            assert bridge.stop() == 0, bridge.log_tail()
        return readings, letters

    def assert_windows_exact(self, readings: list[StoredEntry]) -> None:
        """A worker consumes what the bridges wrote: its outputs equal the reference."""
        records = []
        for record in readings:
            meaning = self.gateways.meanings[(record.stream, record.entry_id)]
            assert isinstance(meaning, Valid)
            records.append(Record(record.partition, record.offset, meaning))
        expected = compute(records, WINDOWS_US, GRACE_US, SLIDING_US)
        assert expected.late_for_some > 0 or "late" in expected.dead_letters.values()
        assert "late" in set(expected.dead_letters.values())
        assert {label for _, _, label, _ in expected.windows} == set(WINDOWS_US)
        ends: dict[int, int] = {}
        for record in readings:
            ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
        worker = WorkerProcess(self.env, self.tmp_path, "worker").start()
        try:
            worker.wait_ready()
            worker.wait_caught_up(ends)
            client = sync_redis(self.redis_url)
            series = {(d, m, label) for d, m, label, _ in expected.windows}
            wait_for_all_closed(client, self.prefix, len(series))
            assert_aggregates_topic(self.broker, self.env, expected)
            assert_redis(client, self.prefix, expected)
            assert_sliding(client, self.prefix, expected)
            assert_influx(self.influx_url, self.prefix, expected)
            stored = asyncio.run(kafka.read_all(self.broker, self.env["PULSE_TOPIC_DLQ"]))
            worker_letters = {}
            for letter in stored:
                doc = orjson.loads(letter.value or b"")
                if doc.get("stream") is None:
                    worker_letters[(doc["partition"], doc["offset"])] = doc["reason"]
            assert worker_letters == expected.dead_letters
        finally:
            assert worker.stop() == 0, worker.log_tail()


@pytest.fixture
def scenario(
    broker: str, redis_url: str, influx_url: str, topic_prefix: str, tmp_path: Path
) -> Iterator[Scenario]:
    made = Scenario(broker, redis_url, influx_url, topic_prefix, tmp_path)
    try:
        yield made
    finally:
        made.close()


def test_bridge_sigkilled_three_times(scenario: Scenario) -> None:
    gateways = scenario.gateways.start()
    bridge = scenario.bridge()
    bridge.wait_ready()
    for share in (0.2, 0.45, 0.7):
        gateways.allow(share)
        target = round(share * gateways.total)
        current = bridge

        def appended(target: int = target) -> bool:
            return len(gateways.appended) >= target

        def at_work(current: BridgeProcess = current) -> bool:
            return moved(current) > 50

        wait(appended, f"{share:.0%} appended", [bridge], gateways)
        wait(at_work, "the bridge at work", [bridge], gateways)
        gateways.allow(share + 0.1)  # a burst under way as it dies
        time.sleep(0.05)
        bridge.stop(signal.SIGKILL)
        bridge = scenario.bridge()
        bridge.wait_ready()
    readings, _ = scenario.finish([bridge])
    assert {r.token for r in readings} >= {1, 2, 3, 4}
    scenario.assert_windows_exact(readings)


def test_one_of_two_bridges_sigkilled(scenario: Scenario) -> None:
    gateways = scenario.gateways.start()
    first, second = scenario.bridge(), scenario.bridge()
    first.wait_ready()
    second.wait_ready()
    wait(
        lambda: held(first) == 2 and held(second) == 2,
        "two streams each",
        [first, second],
        gateways,
    )
    gateways.allow(0.4)
    wait(
        lambda: len(gateways.appended) >= 0.4 * gateways.total,
        "40% appended",
        [first, second],
        gateways,
    )
    gateways.allow(0.6)
    time.sleep(0.05)
    first.stop(signal.SIGKILL)
    wait(lambda: held(second) == 4, "the survivor to take every stream", [second], gateways)
    readings, _ = scenario.finish([second])
    scenario.assert_windows_exact(readings)


def test_frozen_bridge_is_fenced_when_thawed(scenario: Scenario) -> None:
    gateways = scenario.gateways.start()
    first, second = scenario.bridge(), scenario.bridge()
    first.wait_ready()
    second.wait_ready()
    both = [first, second]
    wait(lambda: held(first) == 2 and held(second) == 2, "two streams each", both, gateways)
    gateways.allow(0.3)
    wait(lambda: len(gateways.appended) >= 0.3 * gateways.total, "30% appended", both, gateways)
    gateways.allow(0.5)
    time.sleep(0.05)
    first.send(signal.SIGSTOP)
    try:
        # Past its lease: the other takes its streams over and moves their entries on.
        wait(lambda: held(second) == 4, "the other to take every stream", [second], gateways)
        done = moved(second)
        wait(lambda: moved(second) > done + 100, "entries moved on", [second], gateways)
    finally:
        first.send(signal.SIGCONT)
    # Thawed, it finds its leases gone (its token stale), writes nothing more under them,
    # and comes back for its share of the streams through the other's hand-over.
    wait(
        lambda: held(first) == 2 and held(second) == 2, "two streams each again", both, gateways, 90
    )
    assert "lost the lease" in first.log_tail(400)
    readings, _ = scenario.finish(both)
    scenario.assert_windows_exact(readings)
