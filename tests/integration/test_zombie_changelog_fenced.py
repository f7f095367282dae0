"""A zombie worker on Apache Kafka: paused past its session, fenced when it wakes.

A worker is paused (SIGSTOP) while catching up, with records applied that it has not yet
written to the changelog. The group gives its partitions to a second worker, which opens
their changelogs. When the first one resumes, its changelog writes are refused: it drops
those partitions and rejoins the group, and the two share the partitions. Both keep running,
and every output equals the independent reference exactly (tests/reference.py).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

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

PER_DEVICE = 1000
ALL = [0, 1, 2, 3]


def test_a_paused_worker_is_fenced_and_the_outputs_stay_exact(
    kafka_broker: str, redis_url: str, influx_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = scenario_env(topic_prefix, kafka_broker, redis_url, influx_url, partitions=4)
    env["PULSE_CHANGELOG_TRANSACTIONS"] = "on"
    topic = env["PULSE_TOPIC_READINGS"]
    entries = build_entries(topic_prefix, 4, PER_DEVICE)
    asyncio.run(kafka.create_topics(kafka_broker, {topic: 4}))
    producer = PacedProducer(kafka_broker, topic, entries).start()
    zombie = WorkerProcess(env, tmp_path, "zombie").start()
    workers = [zombie]
    try:
        zombie.wait_ready()
        # A backlog, so that the worker is caught mid-way, between two changelog writes.
        producer.allow(0.6)
        wait_until(
            lambda: sum(next_offsets(zombie).values()) >= 0.15 * producer.total,
            "15 % applied",
            workers,
            producer,
        )
        assert zombie.process is not None
        zombie.process.send_signal(signal.SIGSTOP)
        successor = WorkerProcess(env, tmp_path, "successor").start()
        workers.append(successor)
        successor.wait_ready()
        wait_until(lambda: sorted(next_offsets(successor)) == ALL, "the takeover", [successor])
        wait_until(
            lambda: sum(next_offsets(successor).values()) >= 0.6 * producer.total,
            "the backlog applied",
            [successor],
            producer,
        )

        zombie.process.send_signal(signal.SIGCONT)

        # Its writes are refused; it rejoins, and the two workers share the partitions.
        def shared() -> bool:
            mine, theirs = next_offsets(zombie), next_offsets(successor)
            return bool(mine) and bool(theirs) and sorted([*mine, *theirs]) == ALL

        wait_until(shared, "the partitions shared", workers, producer, timeout=60)
        log = zombie.log_path.read_text()
        assert "transaction failed (ProducerFenced" in log, zombie.log_tail()
        assert "rejoining the group" in log

        stored = producer.finish()
        records, ends, expected = reference_of(entries, stored)
        for worker in workers:
            worker.wait_caught_up(ends)
        assert_outputs_exact(
            kafka_broker, redis_url, influx_url, env, expected, records, dead_letter_repeats=True
        )
        for worker in workers:
            health = worker.health()
            assert health is not None and health["ready"] is True
    finally:
        producer.close()
        for worker in workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.send_signal(signal.SIGCONT)
        codes = [worker.stop() for worker in workers]
        assert codes == [0] * len(workers), "\n".join(w.log_tail() for w in workers)
