"""InfluxDB away or refusing delays only InfluxDB; when it is back, every window is there.

The InfluxDB writer reads the ``aggregates`` topic back with its own consumer group and
commits only what InfluxDB acknowledged (agents/influx_writer.py), so a flush no longer waits
for it. Here VictoriaMetrics (the InfluxDB stand-in) is stopped mid-stream for longer than
the flush pipeline's old in-flight bound (64 flushes, which used to stop consumption) while
readings keep coming: Redis must stay current meanwhile, a worker SIGKILLed during the
outage must lose nothing, and once VictoriaMetrics is back on the same port and data
directory every output must equal the independent reference exactly (tests/reference.py).
A second test has InfluxDB refuse the client (401) for a while: ``/health`` and ``/metrics``
say so, then ok, and nothing is lost.
"""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from agents.flush import MAX_FLUSHES_IN_FLIGHT
from pulse.local.stack import free_port, start_victoria
from tests.helpers import kafka
from tests.helpers.influx_proxy import InfluxProxy
from tests.helpers.redis_windows import window_text
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
from tests.integration import test_pipeline
from tests.reference import compute

pytestmark = pytest.mark.integration

PER_DEVICE = 300
OUTAGE_SECONDS = 24.0
"""Longer than the old in-flight bound at the test's flush interval (64 flushes of 0.1 s:
6.4 s), and long enough for a worker to be killed and restarted within it."""


def newest_closed_start(client: redis.Redis, prefix: str) -> float:
    """The latest start of a closed 10s window in Redis (0 if none yet)."""
    starts = [
        float(window["start"])
        for key in client.scan_iter(f"{prefix}:closed:10s:*")
        if (window := window_text(client.hgetall(key))) is not None
    ]
    return max(starts, default=0.0)


def test_influx_away_for_long_delays_only_influx_and_loses_nothing(
    broker: str, redis_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    influx = start_victoria(tmp_path, port=port, stop_with_parent=True)
    env = scenario_env(topic_prefix, broker, redis_url, influx.url, partitions=4)
    assert 3 * MAX_FLUSHES_IN_FLIGHT * float(env["PULSE_FLUSH_INTERVAL"]) < OUTAGE_SECONDS
    topic = env["PULSE_TOPIC_READINGS"]
    entries = build_entries(topic_prefix, 4, PER_DEVICE)
    asyncio.run(kafka.create_topics(broker, {topic: 4}))
    # A slow trickle, so that readings still come when the second worker has run past the
    # old bound (the producer is held while no worker runs).
    producer = PacedProducer(broker, topic, entries, trickle_per_s=20).start()
    worker = WorkerProcess(env, tmp_path, "worker").start()
    client = redis.Redis.from_url(redis_url)
    try:
        worker.wait_ready()
        producer.allow(0.3)
        wait_until(
            lambda: sum(next_offsets(worker).values()) >= 0.2 * producer.total,
            "20 % applied",
            [worker],
        )
        wait_until(lambda: newest_closed_start(client, topic_prefix) > 0, "a closed window", [])

        # VictoriaMetrics goes away (SIGTERM: it stores what it acknowledged) for longer than
        # the old in-flight bound, while the readings go on.
        influx.stop()
        assert not influx.alive()
        down_until = time.monotonic() + OUTAGE_SECONDS
        producer.allow(0.6)
        newest = newest_closed_start(client, topic_prefix)
        applied = sum(next_offsets(worker).values())
        # Redis keeps getting the newest closed windows, and the worker keeps consuming.
        newer = wait_until(
            lambda: newest_closed_start(client, topic_prefix) >= newest + 30,
            "newer closed windows in Redis during the outage",
            [worker],
            producer,
            timeout=OUTAGE_SECONDS / 2,
            poll=0.2,
        )
        assert newer
        assert sum(next_offsets(worker).values()) > applied
        assert sink_state(worker, "influx")["state"] == "waiting"
        assert sink_state(worker, "redis")["state"] == "ok"
        assert sink_state(worker, "kafka")["state"] == "ok"

        # Killed during the outage: the windows it closed wait in the aggregates topic, with
        # the InfluxDB writer's offsets not committed past them.
        producer.hold()
        assert worker.stop(signal.SIGKILL) == -signal.SIGKILL
        worker = WorkerProcess(env, tmp_path, "worker-2").start()
        worker.wait_ready()
        producer.resume()
        # Still current once the second worker has made more flushes than the old bound let
        # be in flight (at one per 0.1 s, 6.4 s): windows keep closing into Redis.
        past_bound = time.monotonic() + 7.5
        while time.monotonic() < past_bound:
            worker.check_alive()
            producer.check()
            time.sleep(0.2)
        newest = newest_closed_start(client, topic_prefix)
        wait_until(
            lambda: newest_closed_start(client, topic_prefix) > newest,
            "newer closed windows in Redis past the old in-flight bound, InfluxDB away",
            [worker],
            producer,
            timeout=30,  # InfluxDB stays away until then: a loaded machine closes late
            poll=0.2,
        )
        assert sink_state(worker, "influx")["state"] == "waiting"
        # A worker stops at once even while InfluxDB is away (its writes wait in Kafka).
        began = time.monotonic()
        assert worker.stop() == 0, worker.log_tail()
        assert time.monotonic() - began < 10
        worker = WorkerProcess(env, tmp_path, "worker-3").start()
        worker.wait_ready()
        while time.monotonic() < down_until:
            worker.check_alive()
            time.sleep(0.5)

        influx = start_victoria(tmp_path, port=port, stop_with_parent=True)
        assert influx.url == env["PULSE_INFLUX_URL"]
        stored = producer.finish()
        records, ends, expected = reference_of(entries, stored)
        worker.wait_caught_up(ends, timeout=60)
        # Every window in InfluxDB (and everywhere else) exactly; repeats only identical.
        assert_outputs_exact(
            broker, redis_url, influx.url, env, expected, records, dead_letter_repeats=True
        )
        wait_until(lambda: sink_state(worker, "influx").get("state") == "ok", "influx ok", [worker])
    finally:
        producer.close()
        try:
            assert worker.stop() == 0, worker.log_tail()
        finally:
            influx.stop()


def test_influx_refusing_the_client_shows_in_health_and_loses_nothing(
    broker: str, redis_url: str, influx_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    # InfluxDB answers 401 (a token being rotated) for the first seconds: /health and
    # /metrics say refused_by_target with the answer, Redis is written meanwhile; once the
    # token is accepted, health is ok and InfluxDB holds every window exactly.
    proxy = InfluxProxy(influx_url).start()
    proxy.refuse = (401, '{"code":"unauthorized","message":"unauthorized access"}')
    env = test_pipeline.pipeline_env(topic_prefix, broker, redis_url, proxy.url)
    records, ends = test_pipeline.produce_dataset(broker, env["PULSE_TOPIC_READINGS"], topic_prefix)
    expected = compute(records, test_pipeline.WINDOWS_US, test_pipeline.GRACE_US)
    worker = WorkerProcess(env, tmp_path).start()
    try:
        worker.wait_ready()
        worker.wait_caught_up(ends)
        refused = wait_until(
            lambda: (
                sink_state(worker, "influx").get("state") == "refused_by_target"
                and sink_state(worker, "influx")
            ),
            "influx refused_by_target in /health",
            [worker],
        )
        assert refused["reason"].startswith("HTTP 401")
        assert "unauthorized access" in refused["reason"]
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics") as response:
            metrics = response.read().decode()
        assert 'pulse_sink_state{sink="influx",state="refused_by_target"} 1.0' in metrics
        assert 'pulse_sink_state{sink="influx",state="ok"} 0.0' in metrics
        assert 'pulse_sink_state{sink="redis",state="ok"} 1.0' in metrics
        # Redis is written all the same.
        client = redis.Redis.from_url(redis_url)
        test_pipeline.wait_for_all_closed(
            client, topic_prefix, len({(d, m, lab) for d, m, lab, _ in expected.windows})
        )
        test_pipeline.assert_redis(client, topic_prefix, expected)
        time.sleep(2)  # a few more tries, each refused
        proxy.refuse = None
        ok = wait_until(
            lambda: (
                sink_state(worker, "influx").get("state") == "ok" and sink_state(worker, "influx")
            ),
            "influx ok again in /health",
            [worker],
        )
        assert ok["since"] > refused["since"] and "reason" not in ok
        test_pipeline.assert_influx(influx_url, topic_prefix, expected)
        test_pipeline.assert_aggregates_topic(broker, env, expected)
        assert proxy.answered.count(401) >= 2
        log = worker.log_path.read_text(errors="replace")
        assert log.count("influx sink: refused by its target") == 1
        assert log.count("influx sink: ok again after") == 1
    finally:
        try:
            assert worker.stop() == 0, worker.log_tail()
        finally:
            proxy.stop()
