"""A zombie: a worker paused in the middle of a flush while the other worker takes over its
partitions and finishes them, then resumed. Its late writes change no output: every output
still equals the independent reference exactly (tests/reference.py), as in test_rebalance.

Two workers share a 4-partition topic. The zombie stops itself (SIGSTOP) at one step of its
second flush with closed windows (agents/flush.py, FlushFreeze: ``PULSE_TEST_FREEZE_AT``):
before the sinks, between the Kafka and the Redis sink, before the changelog, or before the
offset commit. The other worker takes its partitions over after the session timeout, gets
the rest of the data and closes every window (idle close); only then does the test resume
the zombie (SIGCONT). The zombie then writes what it had drained, and more, before it learns
that it lost its partitions: Redis refuses whatever is older than what it holds (fenced
writes, pulse/sinks/redis.py), the aggregates topic and InfluxDB get identical repeats, and
the changelog ignores its late deltas (offset fencing). The zombie rejoins the group and
recovers its share from the changelog, at the end.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
import redis

from agents.flush import FREEZE_STEPS, FREEZE_VARIABLE
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
from tests.integration.test_pipeline import STATE_TTL, wait_for_all_closed

pytestmark = pytest.mark.integration

PARTITIONS = 4
ALL = set(range(PARTITIONS))
PER_DEVICE = 400
FREEZE_AT_FLUSH = 2
"""The zombie stops in its second flush with closed windows: it owns its share by then."""
IDLE_CLOSE_S = 5


def stopped(worker: WorkerProcess) -> bool:
    """Whether the worker's process is stopped (state T in /proc/PID/stat)."""
    assert worker.process is not None
    stat = Path(f"/proc/{worker.process.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.parametrize("step", FREEZE_STEPS)
def test_a_zombie_resumed_after_the_takeover_changes_no_output(
    broker: str,
    redis_url: str,
    influx_url: str,
    topic_prefix: str,
    tmp_path: Path,
    step: str,
) -> None:
    env = scenario_env(topic_prefix, broker, redis_url, influx_url, partitions=PARTITIONS)
    # A partition with no record for this long is closed by idle close: more margin than the
    # scenarios' 2 s for the paced producer, which a loaded machine (two workers starting,
    # one resuming) can hold up that long.
    env["PULSE_IDLE_CLOSE"] = str(IDLE_CLOSE_S)
    prefix = env["PULSE_REDIS_PREFIX"]
    topic = env["PULSE_TOPIC_READINGS"]
    entries = build_entries(topic_prefix, PARTITIONS, PER_DEVICE)
    asyncio.run(kafka.create_topics(broker, {topic: PARTITIONS}))
    producer = PacedProducer(broker, topic, entries)
    producer.allow(0.15)
    producer.start()
    owner = WorkerProcess(env, tmp_path, "owner").start()
    workers = [owner]
    try:
        owner.wait_ready()
        wait_until(lambda: set(next_offsets(owner)) == ALL, "the owner to own all", workers)
        freeze = {FREEZE_VARIABLE: f"{step}:{FREEZE_AT_FLUSH}"}
        zombie = WorkerProcess({**env, **freeze}, tmp_path, "zombie").start()
        workers.append(zombie)
        # It may stop right after its first assignment, before it answers /health as ready.
        wait_until(
            lambda: stopped(zombie) or (zombie.health() or {}).get("ready"),
            "the zombie to be ready",
            workers,
            producer,
            timeout=60,
        )

        def shared_or_stopped() -> bool:
            if stopped(zombie):  # it owned a share: its flushes closed windows
                return True
            mine, theirs = set(next_offsets(owner)), set(next_offsets(zombie))
            return bool(mine and theirs and not mine & theirs and mine | theirs == ALL)

        wait_until(shared_or_stopped, "the workers to share the partitions", workers, producer)
        producer.allow(0.6)
        wait_until(lambda: stopped(zombie), f"the zombie to stop at {step}", workers, producer)
        assert f"SIGSTOP at {step} of flush {FREEZE_AT_FLUSH}" in zombie.log_tail()

        # The owner takes every partition over and finishes them: the newest outputs.
        wait_until(
            lambda: set(next_offsets(owner)) == ALL, "the owner to take over", [owner], producer
        )
        stored = producer.finish()
        records, ends, expected = reference_of(entries, stored)
        owner.wait_caught_up(ends)
        client = redis.Redis.from_url(redis_url)
        series = {(d, m, label) for d, m, label, _ in expected.windows}
        wait_for_all_closed(client, prefix, len(series))

        # The zombie resumes: its pending and late writes go out, then it rejoins the group
        # and recovers its share, at the end, from the changelog.
        assert zombie.process is not None
        zombie.process.send_signal(signal.SIGCONT)

        def shared_at_the_end() -> bool:
            mine, theirs = next_offsets(owner), next_offsets(zombie)
            return (
                bool(mine and theirs)
                and not set(mine) & set(theirs)
                and set(mine) | set(theirs) == ALL
                and all(offset >= ends.get(p, 0) for p, offset in {**mine, **theirs}.items())
            )

        wait_until(shared_at_the_end, "the two workers to share the end again", workers)
        assert_outputs_exact(
            broker, redis_url, influx_url, env, expected, records, dead_letter_repeats=True
        )
        # Every key keeps a TTL, the versions and the removed open windows' tombstones too.
        keys = [*client.scan_iter(f"{prefix}:*"), *client.scan_iter(f"{{{prefix}:*")]
        ttls = {key: client.ttl(key) for key in keys}
        assert {key: ttl for key, ttl in ttls.items() if not 0 < ttl <= STATE_TTL} == {}
        if step in ("sinks", "between_sinks"):
            # Its frozen flush reached Redis after the owner's newer outputs: refused.
            assert "late writes refused" in zombie.log_tail(400)
        for worker in reversed(workers):
            assert worker.stop() == 0, worker.log_tail()
    finally:
        producer.close()
        for worker in workers:
            worker.stop(signal.SIGKILL)
