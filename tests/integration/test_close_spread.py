"""Windows that end together are emitted spread over ``PULSE_CLOSE_SPREAD`` of event time.

A real ``pulse worker`` reads a live input: 40 devices on 4 partitions, one reading each per
round, each round 1 s later in event time and 0.25 s later in wall time. Every device's
window [0, 10 s) ends at 10 s; with a grace of 1 s and a spread of 8 s they close while the
watermark goes from 10 s to 18 s, i.e. over rounds 11-19, about 2 s of wall time::

    round (event s)   0 ........ 10  11 ............. 19  20 ....... 27
    [0, 10s) closed                  0 ...  spread ... 40
                                     └── ~2 s of wall time ──┘

So each partition's aggregates records of those windows are appended over more than a second,
in many flushes, and still carry the exact aggregates. With ``PULSE_CLOSE_SPREAD=0`` the same
run emits each partition's in one flush (the ``at-once`` case), which the first must not do.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.helpers import kafka
from tests.helpers.worker import WorkerProcess
from tests.integration.test_pipeline import pipeline_env

pytestmark = pytest.mark.integration

DEVICES = 40
PARTITIONS = 4
ROUNDS = 28
ROUND_WALL_SECONDS = 0.25


async def produce_live(broker: str, topic: str, base_s: int) -> None:
    """One reading per device per round; round r has event time base + r s, value r."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap(broker), acks="all")
    await producer.start()
    try:
        for round_number in range(ROUNDS):
            began = time.monotonic()
            sent = []
            for device in range(DEVICES):
                name = f"dev-{device:02d}"
                value = {
                    "device": name,
                    "metric": "t",
                    "value": float(round_number),
                    "ts": base_s + round_number,
                }
                sent.append(
                    await producer.send(
                        topic,
                        value=orjson.dumps(value),
                        key=name.encode(),
                        partition=device % PARTITIONS,
                    )
                )
            await asyncio.gather(*sent)
            await asyncio.sleep(max(0.0, ROUND_WALL_SECONDS - (time.monotonic() - began)))
    finally:
        await producer.stop()


def run_worker(
    broker: str,
    redis_url: str,
    influx_url: str,
    prefix: str,
    tmp_path: Path,
    spread: str,
) -> list[kafka.StoredRecord]:
    """The aggregates records of the windows [base, base + 10 s) of a live run."""
    env = pipeline_env(prefix, broker, redis_url, influx_url)
    env.update(
        {
            "PULSE_WINDOWS": "10s",
            "PULSE_GRACE": "1",
            "PULSE_CLOSE_SPREAD": spread,
            "PULSE_IDLE_CLOSE": "60",  # no wall-clock close during the run
        }
    )
    asyncio.run(kafka.create_topics(broker, {env["PULSE_TOPIC_READINGS"]: PARTITIONS}))
    base_s = (int(time.time()) // 10 - 360) * 10  # a 10 s boundary an hour ago
    worker = WorkerProcess(env, tmp_path).start()
    try:
        worker.wait_ready()
        asyncio.run(produce_live(broker, env["PULSE_TOPIC_READINGS"], base_s))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stored = asyncio.run(kafka.read_all(broker, env["PULSE_TOPIC_AGGREGATES"], 500))
            first = [r for r in stored if json.loads(r.value or b"{}")["start"] == base_s]
            if len(first) >= DEVICES:
                return first
            time.sleep(0.5)
        raise AssertionError(f"{len(first)} of {DEVICES} windows emitted:\n{worker.log_tail()}")
    finally:
        assert worker.stop() == 0, worker.log_tail()


def assert_exact(records: list[kafka.StoredRecord]) -> None:
    # Each device's window [0, 10 s) holds rounds 0-9: values 0.0 .. 9.0.
    by_device: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        window = json.loads(record.value or b"{}")
        by_device.setdefault(window["device"], []).append(window)
    assert sorted(by_device) == [f"dev-{d:02d}" for d in range(DEVICES)]
    for windows in by_device.values():
        assert len({json.dumps(w, sort_keys=True) for w in windows}) == 1  # repeats identical
        window = windows[0]
        aggregates = [window[name] for name in ("count", "sum", "min", "max", "mean")]
        assert aggregates == [10, 45.0, 0.0, 9.0, 4.5]
        assert (window["first"], window["last"]) == (0.0, 9.0)


def spans_ms(records: list[kafka.StoredRecord]) -> list[int]:
    """Per input partition: last minus first append time of its windows' records."""
    times: dict[int, list[int]] = {}
    for record in records:
        device = int(json.loads(record.value or b"{}")["device"].removeprefix("dev-"))
        times.setdefault(device % PARTITIONS, []).append(record.timestamp)
    return [max(t) - min(t) for _, t in sorted(times.items())]


@pytest.mark.parametrize(
    ("spread", "shortest_ms", "longest_ms"),
    [
        # Each partition's 10 windows close over ~2 s of wall time (8 rounds), not in one flush.
        ("8", 1000, None),
        # A partition's windows close in the drain where its watermark passes 10 s: one flush.
        ("0", None, 99),
    ],
    ids=["spread", "at-once"],
)
def test_windows_ending_together_are_emitted_over_the_spread(
    broker: str,
    redis_url: str,
    influx_url: str,
    topic_prefix: str,
    tmp_path: Path,
    spread: str,
    shortest_ms: int | None,
    longest_ms: int | None,
) -> None:
    records = run_worker(broker, redis_url, influx_url, topic_prefix, tmp_path, spread)
    assert_exact(records)
    spans = spans_ms(records)
    assert len(spans) == PARTITIONS, spans
    if shortest_ms is not None:
        assert min(spans) >= shortest_ms, spans
    if longest_ms is not None:
        assert max(spans) <= longest_ms, spans
