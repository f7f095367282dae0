"""Two workers of one app on an 8-partition topic: they split the partitions, and when one of
them goes away mid-stream (SIGTERM, or SIGKILL) the other takes over every partition; the
outputs still equal the independent reference exactly (tests/reference.py).

Data flows before, during and after the handover: the first part is produced while both
workers start, more while they share the partitions (both really process it), the rest after
the survivor owns all 8 partitions.
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

PARTITIONS = 8
ALL = set(range(PARTITIONS))
PER_DEVICE = 400


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_handover_outputs_equal_the_reference(
    broker: str,
    redis_url: str,
    influx_url: str,
    topic_prefix: str,
    tmp_path: Path,
    sig: signal.Signals,
) -> None:
    env = scenario_env(topic_prefix, broker, redis_url, influx_url, partitions=PARTITIONS)
    topic = env["PULSE_TOPIC_READINGS"]
    entries = build_entries(topic_prefix, PARTITIONS, PER_DEVICE)
    asyncio.run(kafka.create_topics(broker, {topic: PARTITIONS}))
    producer = PacedProducer(broker, topic, entries)
    producer.allow(0.2)
    producer.start()
    stays = WorkerProcess(env, tmp_path, "stays").start()
    leaves = WorkerProcess(env, tmp_path, "leaves").start()
    workers = [stays, leaves]
    try:
        stays.wait_ready()
        leaves.wait_ready()

        def split() -> tuple[set[int], set[int]] | None:
            mine, theirs = set(next_offsets(stays)), set(next_offsets(leaves))
            if mine and theirs and not mine & theirs and mine | theirs == ALL:
                return mine, theirs
            return None

        mine, theirs = wait_until(split, "the two workers to split 8 partitions", workers)
        # Both process data while they share the partitions.
        before = {**next_offsets(stays), **next_offsets(leaves)}
        producer.allow(0.55)

        def both_progressed() -> bool:
            now = [next_offsets(stays), next_offsets(leaves)]
            if set(now[0]) != mine or set(now[1]) != theirs:
                raise AssertionError(f"assignment changed while sharing: {now}")
            return all(any(o > before[p] for p, o in offsets.items()) for offsets in now)

        wait_until(both_progressed, "both workers to process records", workers, producer)
        wait_until(
            lambda: (
                sum(next_offsets(stays).values()) + sum(next_offsets(leaves).values())
                >= 0.4 * producer.total
            ),
            "40% of the records applied",
            workers,
            producer,
        )
        # Mid-stream: production runs on (fast up to 55%, then a trickle).
        code = leaves.stop(sig)
        assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), leaves.log_tail()
        assert len(producer.stored) < producer.total
        workers.remove(leaves)
        wait_until(
            lambda: set(next_offsets(stays)) == ALL,
            "the other worker to take over all 8 partitions",
            [stays],
            producer,
        )
        handed_over_at = len(producer.stored)
        stored = producer.finish()
        assert handed_over_at < len(stored), "no data produced after the handover"
        records, ends, expected = reference_of(entries, stored)
        stays.wait_caught_up(ends)
        assert set(next_offsets(stays)) == ALL
        assert_outputs_exact(
            broker,
            redis_url,
            influx_url,
            env,
            expected,
            records,
            dead_letter_repeats=sig == signal.SIGKILL,
        )
    finally:
        producer.close()
        for worker in workers[1:]:
            worker.stop(signal.SIGKILL)
        assert stays.stop() == 0, stays.log_tail()
