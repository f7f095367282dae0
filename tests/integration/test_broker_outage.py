"""A broker outage mid-stream: the worker waits it out and its outputs stay exact.

The worker processes the dataset from its own Apache Kafka (one KRaft node whose data
directory survives a restart), with the changelog in transactions. Part-way through, the
broker is stopped for 20 s and started again on the same port; the producer holds back
meanwhile and resumes a few seconds after the broker, as producers that reconnect later do.
The worker must live through it, catch up, report ready, and every output must equal the
independent reference exactly (tests/reference.py): nothing lost, nothing counted twice.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from pulse.local.stack import free_port, start_broker
from tests.helpers import kafka
from tests.helpers.scenarios import (
    PacedProducer,
    assert_outputs_exact,
    build_entries,
    next_offsets,
    reference_of,
    scenario_env,
    wait_until,
)
from tests.helpers.worker import WorkerProcess

pytestmark = pytest.mark.integration

PER_DEVICE = 300
OUTAGE_SECONDS = 20.0
RESUME_AFTER_SECONDS = 3.0


def test_a_broker_outage_loses_and_repeats_nothing(
    redis_url: str, influx_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    server = start_broker(tmp_path, port=port, kind="kafka", stop_with_parent=True)
    broker = server.url
    env = scenario_env(topic_prefix, broker, redis_url, influx_url, partitions=4)
    # The changelog in transactions, as PULSE_CHANGELOG_TRANSACTIONS=auto chooses on Kafka.
    env["PULSE_CHANGELOG_TRANSACTIONS"] = "on"
    # Longer than the producer's delay after the outage (plus the worker's reconnection), and
    # far shorter than the outage: quiet time must count from the broker's return, or idle
    # close would end every window by wall clock, which the reference knows nothing of.
    env["PULSE_IDLE_CLOSE"] = "8"
    topic = env["PULSE_TOPIC_READINGS"]
    entries = build_entries(topic_prefix, 4, PER_DEVICE)
    asyncio.run(kafka.create_topics(broker, {topic: 4}))
    producer = PacedProducer(broker, topic, entries).start()
    worker = WorkerProcess(env, tmp_path, "worker").start()
    try:
        worker.wait_ready()
        producer.allow(0.5)
        share = 0.4 * producer.total
        wait_until(lambda: sum(next_offsets(worker).values()) >= share, "40 % applied", [worker])
        producer.hold()
        before = sum(next_offsets(worker).values())

        server.stop()
        assert not server.alive()
        down_until = time.monotonic() + OUTAGE_SECONDS
        while time.monotonic() < down_until:
            worker.check_alive()
            time.sleep(0.5)
        restarted = start_broker(tmp_path, port=port, kind="kafka", stop_with_parent=True)
        server = restarted
        assert server.url == broker
        time.sleep(RESUME_AFTER_SECONDS)
        producer.resume()

        # The worker goes on from where it was, with the records that waited meanwhile.
        stored = producer.finish()
        records, ends, expected = reference_of(entries, stored)
        worker.wait_caught_up(ends, timeout=60)
        assert sum(ends.values()) == len(stored) > before
        assert sorted(next_offsets(worker)) == [0, 1, 2, 3]
        assert_outputs_exact(
            broker, redis_url, influx_url, env, expected, records, dead_letter_repeats=False
        )
        health = worker.health()
        assert health is not None and health["ready"] is True
        assert worker.process is not None and worker.process.poll() is None
    finally:
        producer.close()
        try:
            assert worker.stop() == 0, worker.log_tail()
        finally:
            server.stop()
