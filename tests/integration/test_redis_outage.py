"""Redis away for long delays only Redis; when it is back, every key is rewritten at once.

Redis mirrors the state (agents/flush.py, MirrorLane): a frozen or stopped Redis must not hold
back consumption, the aggregates topic or InfluxDB, and a Redis that comes back (here a new,
empty server on the same port, as after a restart without persistence) must hold the newest
state within two seconds, nothing stale or missing. Redis is frozen (SIGSTOP: it answers
nothing, not even an error, so only the lane's patience notices) for longer than the flush
pipeline's in-flight bound (64 flushes of 0.1 s), then killed while readings go on to the
end of the stream, which idle close then ends; every output must equal the independent
reference (tests/reference.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
import redis

from agents.flush import MAX_FLUSHES_IN_FLIGHT
from pulse.local.stack import free_port, start_redis
from tests.helpers import kafka
from tests.helpers.scenarios import (
    PacedProducer,
    assert_outputs_exact,
    build_entries,
    next_offsets,
    reference_of,
    scenario_env,
    sink_state,
    wait_until,
)
from tests.helpers.worker import WorkerProcess
from tests.integration.test_pipeline import assert_redis, assert_sliding

pytestmark = pytest.mark.integration

PER_DEVICE = 300
FROZEN_SECONDS = 15.0
"""Longer than the in-flight bound lets flushes queue at the test's flush interval (6.4 s)."""


def aggregates_count(broker: str, env: dict[str, str]) -> int:
    return len(asyncio.run(kafka.read_all(broker, env["PULSE_TOPIC_AGGREGATES"])))


def test_redis_away_for_long_delays_only_redis_and_is_rewritten_on_return(
    broker: str, influx_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    server = start_redis(tmp_path, port=port, stop_with_parent=True)
    env = scenario_env(topic_prefix, broker, server.url, influx_url, partitions=4)
    assert MAX_FLUSHES_IN_FLIGHT * float(env["PULSE_FLUSH_INTERVAL"]) < FROZEN_SECONDS / 2
    topic = env["PULSE_TOPIC_READINGS"]
    entries = build_entries(topic_prefix, 4, PER_DEVICE)
    asyncio.run(kafka.create_topics(broker, {topic: 4}))
    producer = PacedProducer(broker, topic, entries).start()
    worker = WorkerProcess(env, tmp_path, "worker").start()
    try:
        worker.wait_ready()
        producer.allow(0.3)
        wait_until(
            lambda: sum(next_offsets(worker).values()) >= 0.2 * producer.total,
            "20 % applied",
            [worker],
        )
        client = redis.Redis.from_url(server.url)
        wait_until(lambda: any(client.scan_iter(f"{topic_prefix}:closed:*")), "a closed window", [])
        client.close()

        # Frozen: every write hangs. The worker goes on consuming and closing windows into
        # the aggregates topic well past the in-flight bound.
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        frozen_until = time.monotonic() + FROZEN_SECONDS
        producer.allow(0.7)
        applied, closed = sum(next_offsets(worker).values()), aggregates_count(broker, env)
        while time.monotonic() < frozen_until:
            worker.check_alive()
            producer.check()
            time.sleep(0.5)
        # Still frozen: the worker has applied (or soon applies) all that was produced.
        produced = len(producer.stored)
        assert produced > applied + 100
        wait_until(
            lambda: sum(next_offsets(worker).values()) >= produced,
            "the worker keeping up while Redis is frozen",
            [worker],
            producer,
        )
        assert aggregates_count(broker, env) > closed
        for name in ("redis-latest", "redis"):  # each on its own connection and lane
            away = sink_state(worker, name)
            assert away["state"] == "waiting", name
            assert away["reason"].startswith("a write under way for 3.2 s"), away
        assert sink_state(worker, "kafka")["state"] == "ok"

        # Gone (killed while frozen: nothing it held survives), while the rest of the stream
        # goes in and idle close ends every window: all of it happens without Redis.
        os.kill(server.pid, signal.SIGKILL)
        server.stop()
        stored = producer.finish()
        records, ends, expected = reference_of(entries, stored)
        worker.wait_caught_up(ends, timeout=60)
        time.sleep(float(env["PULSE_IDLE_CLOSE"]) + 2.0)  # every window closed, no Redis

        # Back, empty: within two seconds every key holds the newest state.
        server = start_redis(tmp_path, port=port, stop_with_parent=True)
        back = time.monotonic()
        client = redis.Redis.from_url(server.url)

        def rewritten() -> bool:
            try:
                assert_redis(client, topic_prefix, expected)
                assert_sliding(client, topic_prefix, expected)
            except AssertionError:
                return False
            return True

        wait_until(rewritten, "every Redis key rewritten", [worker], timeout=10.0, poll=0.05)
        assert time.monotonic() - back < 2.0
        assert_outputs_exact(
            broker, server.url, influx_url, env, expected, records, dead_letter_repeats=False
        )
        for name in ("redis-latest", "redis"):
            assert sink_state(worker, name)["state"] == "ok", name
        log = worker.log_path.read_text(errors="replace")
        for name in ("redis-latest", "redis"):
            assert log.count(f" {name} sink: flushes go on without it") == 1
            assert log.count(f" {name} sink: caught up, flushes wait for it again") == 1
    finally:
        producer.close()
        try:
            assert worker.stop() == 0, worker.log_tail()
        finally:
            server.stop()
