"""The worker's Prometheus metrics (pulse/metrics.py) on a known stream, against the reference.

A real ``pulse worker`` consumes the pipeline's dataset (tests/integration/dataset.py) until
idle close has ended every window; its ``/metrics`` text, parsed with prometheus_client's
parser, must then count exactly what the reference computes: records per partition, dead
letters by reason, windows closed, every record of the aggregates topic written to InfluxDB;
no lag left, no open window, and one flush-latency observation per flush.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import kafka
from tests.helpers.scenarios import wait_until
from tests.helpers.worker import WorkerProcess
from tests.integration.test_pipeline import (
    GRACE_US,
    WINDOWS_US,
    pipeline_env,
    produce_dataset,
    wait_for_all_closed,
)
from tests.reference import Valid, compute

pytestmark = pytest.mark.integration

SINKS = ("kafka", "redis-latest", "redis", "influx")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(worker: WorkerProcess) -> Samples:
    """Every sample of the worker's ``/metrics``: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """The samples of ``name`` by the value of their one label ``label``."""
    found = {}
    for (sample, labels), value in samples.items():
        if sample == name:
            assert [key for key, _ in labels] == [label], (name, labels)
            found[labels[0][1]] = value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_count_what_the_reference_computes(
    broker: str, redis_url: str, influx_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = pipeline_env(topic_prefix, broker, redis_url, influx_url)
    records, ends = produce_dataset(broker, env["PULSE_TOPIC_READINGS"], topic_prefix)
    expected = compute(records, WINDOWS_US, GRACE_US)
    per_partition = Counter(record.partition for record in records)
    reasons = Counter(expected.dead_letters.values())
    assert set(reasons) == {"invalid_json", "invalid_reading", "too_large", "late"}

    worker = WorkerProcess(env, tmp_path).start()
    try:
        worker.wait_ready()
        worker.wait_caught_up(ends)
        client = redis.Redis.from_url(redis_url)
        series = {(d, m, label) for d, m, label, _ in expected.windows}
        wait_for_all_closed(client, topic_prefix, len(series))

        last_flushes = [-1.0]

        def settled() -> Samples | None:
            # Every window closed and written to InfluxDB, no lag left, and no flush since
            # the previous look (the last one's changelog round may still have been under way).
            samples = scrape(worker)
            flushes, last_flushes[0] = last_flushes[0], value(samples, "pulse_flushes_total")
            lags = by_label(samples, "pulse_consumer_lag", "partition")
            influx_lags = by_label(samples, "pulse_influx_lag", "partition")
            done = (
                sum(by_label(samples, "pulse_windows_closed_total", "partition").values())
                == len(expected.windows)
                and value(samples, "pulse_influx_written_total") == len(expected.windows)
                and lags == {str(p): 0.0 for p in range(4)}
                and set(influx_lags.values()) == {0.0}
                and flushes == last_flushes[0]
            )
            return samples if done else None

        samples = wait_until(settled, "the metrics to settle", [worker], timeout=30, poll=1.5)
        consumed = by_label(samples, "pulse_readings_consumed_total", "partition")
        assert consumed == {str(p): float(n) for p, n in per_partition.items()}
        assert {str(p): float(n) for p, n in ends.items()} == consumed  # offsets from 0
        dead = by_label(samples, "pulse_dead_letters_total", "reason")
        assert dead == {reason: float(n) for reason, n in reasons.items()}
        closed = by_label(samples, "pulse_windows_closed_total", "partition")
        windows_per_partition: Counter[int] = Counter()
        device_partition = {
            r.meaning.device: r.partition for r in records if isinstance(r.meaning, Valid)
        }
        for device, _, _, _ in expected.windows:
            windows_per_partition[device_partition[device]] += 1
        assert closed == {str(p): float(n) for p, n in windows_per_partition.items()}
        assert by_label(samples, "pulse_open_windows", "partition") == {
            str(p): 0.0 for p in range(4)
        }
        memory = by_label(samples, "pulse_state_memory_bytes", "partition")
        assert set(memory) == {str(p) for p in range(4)}
        assert all(size > 0 for size in memory.values())

        # One observation of each flush histogram per flush completed, the same as /health.
        flushes = value(samples, "pulse_flushes_total")
        assert flushes == (worker.health() or {})["flushes"] > 0
        assert value(samples, "pulse_flush_seconds_count") == flushes
        assert value(samples, "pulse_flush_drain_seconds_count") == flushes
        assert value(samples, "pulse_flush_seconds_bucket", le="+Inf") == flushes
        # Each sink wrote at least once, and a lane writes at most once per flush (merging
        # the flushes that waited); the InfluxDB writer once per fetch.
        for sink in SINKS:
            writes = value(samples, "pulse_sink_write_seconds_count", sink=sink)
            assert writes >= 1, sink
            if sink != "influx":
                assert writes <= flushes, sink
            assert value(samples, "pulse_sink_write_seconds_sum", sink=sink) > 0, sink
            for kind in ("backpressure", "refused", "dead_lettered"):
                assert value(samples, "pulse_sink_errors_total", sink=sink, kind=kind) == 0
            assert value(samples, "pulse_sink_state", sink=sink, state="ok") == 1
    finally:
        assert worker.stop() == 0, worker.log_tail()


def test_metrics_show_a_refused_influxdb_and_what_waits_for_it(
    broker: str, redis_url: str, guarded_influx_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    """InfluxDB refuses the writer's token: its sink counts refusals (and nothing else), the
    writer has written nothing, and shows a lag in each partition it fetched from."""
    env = pipeline_env(topic_prefix, broker, redis_url, guarded_influx_url)
    records, ends = produce_dataset(broker, env["PULSE_TOPIC_READINGS"], topic_prefix)
    expected = compute(records, WINDOWS_US, GRACE_US)
    worker = WorkerProcess(env, tmp_path).start()
    try:
        worker.wait_ready()
        worker.wait_caught_up(ends)
        client = redis.Redis.from_url(redis_url)
        series = {(d, m, label) for d, m, label, _ in expected.windows}
        wait_for_all_closed(client, topic_prefix, len(series))
        stored = asyncio.run(kafka.read_all(broker, env["PULSE_TOPIC_AGGREGATES"]))
        assert len(stored) == len(expected.windows)
        in_topic = Counter(str(record.partition) for record in stored)

        def refused() -> Samples | None:
            samples = scrape(worker)
            lags = by_label(samples, "pulse_influx_lag", "partition")
            shown = value(samples, "pulse_sink_state", sink="influx", state="refused_by_target")
            return samples if lags and shown == 1 else None

        samples = wait_until(refused, "the InfluxDB sink refused", [worker], timeout=30)
        # The high watermark is the one of the writer's last fetch, which the write it is
        # stuck in may have left behind the topic's end; a partition the topic holds nothing
        # of shows 0 once a fetch found nothing there.
        lags = by_label(samples, "pulse_influx_lag", "partition")
        assert all(
            1 <= lag <= in_topic[partition] if in_topic[partition] else lag == 0
            for partition, lag in lags.items()
        ), (lags, in_topic)
        assert value(samples, "pulse_influx_written_total") == 0
        assert value(samples, "pulse_sink_errors_total", sink="influx", kind="refused") >= 1
        for sink in SINKS:
            for kind in ("backpressure", "refused", "dead_lettered"):
                if (sink, kind) != ("influx", "refused"):
                    found = value(samples, "pulse_sink_errors_total", sink=sink, kind=kind)
                    assert found == 0, (sink, kind)
    finally:
        assert worker.stop() == 0, worker.log_tail()
