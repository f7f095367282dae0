"""Exact through crashes: SIGKILL the worker again and again while it works through a dataset.

A deterministic dataset of about 10,000 records over 4 partitions is produced while the worker
runs; the worker is killed with SIGKILL after it has applied 10 %, 35 %, 60 % and 85 % of the
records (its /health ``next_offsets``), and once right after a flush, and restarted each time.
Once the last one has caught up and idle close has ended every window, every output equals the
independent reference exactly (tests/reference.py).
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

PER_DEVICE = 1500
# (kill when this share of the records is applied, or right after a flush past it)
KILLS = (
    (0.10, "applied"),
    (0.35, "applied"),
    (0.45, "flush"),
    (0.60, "applied"),
    (0.85, "applied"),
)
AHEAD = 0.08
"""How far production runs ahead of the next kill point at full speed."""


def test_sigkill_loop_outputs_equal_the_reference(
    broker: str, redis_url: str, influx_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = scenario_env(topic_prefix, broker, redis_url, influx_url, partitions=4)
    topic = env["PULSE_TOPIC_READINGS"]
    entries = build_entries(topic_prefix, 4, PER_DEVICE)
    assert len(entries) > 10_000
    asyncio.run(kafka.create_topics(broker, {topic: 4}))
    # A trickle until the worker is ready (an empty partition would be closed as idle).
    producer = PacedProducer(broker, topic, entries).start()
    workers = [WorkerProcess(env, tmp_path, "worker-0").start()]
    kills = []
    try:
        workers[-1].wait_ready()
        for number, (share, moment) in enumerate(KILLS, start=1):
            worker = workers[-1]
            producer.allow(share + AHEAD)
            threshold = share * producer.total

            def applied(worker: WorkerProcess = worker, threshold: float = threshold) -> int:
                done = sum(next_offsets(worker).values())
                return done if done >= threshold else 0

            done = wait_until(applied, f"{share:.0%} applied", [worker], producer)
            flushed = (worker.health() or {}).get("flushes", 0)
            if moment == "flush":

                def flushed_again(worker: WorkerProcess = worker, before: int = flushed) -> bool:
                    return bool((worker.health() or {}).get("flushes", before) > before)

                wait_until(
                    flushed_again,
                    "a flush",
                    [worker],
                    producer,
                    poll=0.002,
                )
            worker.stop(signal.SIGKILL)
            assert worker.process is not None and worker.process.returncode == -signal.SIGKILL
            kills.append((moment, done, flushed, len(producer.stored)))
            restarted = WorkerProcess(env, tmp_path, f"worker-{number}").start()
            workers.append(restarted)
            restarted.wait_ready()
            # It resumed from the state recovered from the changelog, not from the beginning.
            if flushed:
                assert sum(next_offsets(restarted).values()) > 0, restarted.log_tail()
        print(f"kills (moment, applied, flushes, produced of {producer.total}): {kills}")
        stored = producer.finish()
        records, ends, expected = reference_of(entries, stored)
        workers[-1].wait_caught_up(ends)
        assert sorted(next_offsets(workers[-1])) == [0, 1, 2, 3]
        assert_outputs_exact(
            broker, redis_url, influx_url, env, expected, records, dead_letter_repeats=True
        )
    finally:
        producer.close()
        for worker in workers[:-1]:
            worker.stop(signal.SIGKILL)
        assert workers[-1].stop() == 0, workers[-1].log_tail()
