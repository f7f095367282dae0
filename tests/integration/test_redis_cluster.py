"""The pipeline on a Redis Cluster: three masters, each with a replica, of real redis-servers.

``PULSE_REDIS_URL=redis+cluster://...``: every Redis output equals the independent reference
(tests/reference.py) as on one server, and ``pulse state`` and the HTTP API read it from the
cluster. Then a master is killed (SIGKILL) mid-stream: its replica takes over its slots,
the sinks wait out the failover, the lanes rewrite every live key (a promoted replica may lack
the last writes), and the final state is exact.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from pulse.local.redis_cluster import RedisCluster, start_redis_cluster
from tests.helpers import kafka
from tests.helpers.redis_cluster import sync_redis
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
from tests.integration.test_pipeline import (
    GRACE_US,
    WINDOWS_US,
    assert_aggregates_topic,
    assert_api_and_cli,
    assert_dead_letter_counts,
    assert_dead_letters,
    assert_influx,
    assert_redis,
    pipeline_env,
    produce_dataset,
    wait_for_all_closed,
)
from tests.reference import compute

pytestmark = pytest.mark.integration

PER_DEVICE = 300


def test_pipeline_outputs_on_a_redis_cluster_equal_the_reference(
    broker: str,
    redis_cluster: RedisCluster,
    influx_url: str,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    env = pipeline_env(topic_prefix, broker, redis_cluster.url, influx_url)
    records, ends = produce_dataset(broker, env["PULSE_TOPIC_READINGS"], topic_prefix)
    expected = compute(records, WINDOWS_US, GRACE_US)
    worker = WorkerProcess(env, tmp_path).start()
    try:
        worker.wait_ready()
        worker.wait_caught_up(ends)
        client = sync_redis(redis_cluster.url)
        series = {(d, m, label) for d, m, label, _ in expected.windows}
        wait_for_all_closed(client, topic_prefix, len(series))
        assert_redis(client, topic_prefix, expected)
        # The keys are spread over every master (no hash tag gathers them in one slot).
        for master in redis_cluster.masters():
            with sync_redis(f"redis://{master.address}/0") as node:
                assert any(node.scan_iter(f"{topic_prefix}:closed:*")), master.address
        assert_api_and_cli(worker, env, expected)  # pulse state and the API, from the cluster
        assert_dead_letter_counts(client, topic_prefix, expected)
        assert_aggregates_topic(broker, env, expected)
        assert_dead_letters(broker, env, expected, records)
        assert_influx(influx_url, topic_prefix, expected)
    finally:
        assert worker.stop() == 0, worker.log_tail()


def test_a_master_killed_mid_stream_fails_over_and_the_final_state_is_exact(
    broker: str, influx_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    cluster = start_redis_cluster(tmp_path / "cluster")
    env = scenario_env(topic_prefix, broker, cluster.url, influx_url, partitions=4)
    topic = env["PULSE_TOPIC_READINGS"]
    entries = build_entries(topic_prefix, 4, PER_DEVICE)
    asyncio.run(kafka.create_topics(broker, {topic: 4}))
    producer = PacedProducer(broker, topic, entries).start()
    worker = WorkerProcess(env, tmp_path, "worker").start()
    try:
        worker.wait_ready()
        producer.allow(0.4)
        wait_until(
            lambda: sum(next_offsets(worker).values()) >= 0.3 * producer.total,
            "30 % applied",
            [worker],
            producer,
        )
        # The master of the device index, which every flush of latest values writes: it
        # holds the pipeline's keys when it dies, and a write to it is under way or next.
        victim = cluster.master_of(f"{topic_prefix}:devices")
        with sync_redis(f"redis://{victim.address}/0") as node:
            assert node.dbsize() > 0
        producer.allow(0.7)
        victim.kill()
        killed = time.monotonic()
        cluster.wait_healthy(timeout=30)  # its replica took over its slots
        failed_over = time.monotonic() - killed
        assert victim not in cluster.masters()
        assert len(cluster.masters()) == 3

        stored = producer.finish()
        records, ends, expected = reference_of(entries, stored)
        worker.wait_caught_up(ends, timeout=60)
        live = RedisCluster([node for node in cluster.nodes if node.alive()])
        assert_outputs_exact(
            broker, live.url, influx_url, env, expected, records, dead_letter_repeats=False
        )
        for name in ("redis-latest", "redis"):
            assert sink_state(worker, name)["state"] == "ok", name
        # The failover was noticed: the writes to the dead master failed and were retried,
        # and the new layout made each lane write every live key again.
        log = worker.log_path.read_text(errors="replace")
        assert " redis-latest sink: waiting (backpressure)" in log
        for name in ("redis-latest", "redis"):
            assert f" {name} sink: new connection " in log, name
        assert failed_over < 15
    finally:
        producer.close()
        try:
            assert worker.stop() == 0, worker.log_tail()
        finally:
            cluster.stop()


def test_the_session_cluster_is_whole(redis_cluster: RedisCluster) -> None:
    """Three masters, each with a replica in sync (the fixture others rely on)."""
    assert len(redis_cluster.masters()) == 3
    roles = {}
    for node in redis_cluster.nodes:
        with sync_redis(f"redis://{node.address}/0") as one:
            info = one.info("replication")
            roles[node.address] = (info["role"], info.get("master_link_status", "up"))
    assert sorted(roles.values()) == [("master", "up")] * 3 + [("slave", "up")] * 3
    assert int(redis_cluster.client().cluster_info()["cluster_slots_ok"]) == 16384
