"""Every measurement, field and tag pulse/measurements.py declares reaches the store.

A real ``pulse worker`` consumes the pipeline's dataset (tests/integration/dataset.py: two
metrics, readings with and without a ``site`` tag, every kind of dead letter but one) until
idle close has ended every window, writing its health every second. VictoriaMetrics (the
InfluxDB stand-in: series ``<measurement>_<field>``, tags as labels) must then hold every
declared field of every measurement with exactly its declared tags, and the worker's last
``pulse_stats`` point of each partition the exact counts the reference computes.
"""

from __future__ import annotations

import socket
from collections import Counter
from pathlib import Path

import pytest
import redis

from models.reading import DEAD_LETTER_REASONS
from pulse.measurements import PULSE_STATS, PULSE_STATS_SINK, PULSE_STATS_WORKER, STATS, WINDOWS
from tests.helpers import victoria
from tests.helpers.scenarios import wait_until
from tests.helpers.worker import WorkerProcess
from tests.integration.dataset import METRICS
from tests.integration.test_pipeline import (
    GRACE_US,
    WINDOWS_US,
    pipeline_env,
    produce_dataset,
    wait_for_all_closed,
)
from tests.reference import Valid, compute

pytestmark = pytest.mark.integration

SINKS = {
    "kafka",
    "redis-latest",
    "redis",
    "influx",
    "influx-stats",
    "history",
    "alerts",
    "influx-alerts",
    "alert-history",
}

Latest = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""(series name, its labels but the name) -> the value of its latest point."""


def latest(influx_url: str, match: str) -> Latest:
    found: Latest = {}
    for labels, values in victoria.points(influx_url, match).items():
        name = dict(labels)["__name__"]
        rest = tuple(item for item in labels if item[0] != "__name__")
        found[(name, rest)] = values[max(values)]
    return found


def test_declared_names_reach_the_store_and_stats_count_the_stream(
    broker: str, redis_url: str, influx_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = pipeline_env(topic_prefix, broker, redis_url, influx_url)
    assert env["PULSE_STATS_INTERVAL"] == "1"
    records, ends = produce_dataset(broker, env["PULSE_TOPIC_READINGS"], topic_prefix)
    expected = compute(records, WINDOWS_US, GRACE_US)
    partitions = range(4)
    readings = Counter(record.partition for record in records)
    dead = Counter((p, reason) for (p, _), reason in expected.dead_letters.items())
    assert {reason for _, reason in dead} == {
        "invalid_json",
        "invalid_reading",
        "too_large",
        "late",
    }
    device_partition = {
        r.meaning.device: r.partition for r in records if isinstance(r.meaning, Valid)
    }
    closed = Counter(device_partition[device] for device, _, _, _ in expected.windows)

    worker = WorkerProcess(env, tmp_path).start()
    try:
        worker.wait_ready()
        worker.wait_caught_up(ends)
        client = redis.Redis.from_url(redis_url)
        wait_for_all_closed(client, topic_prefix, len({k[:3] for k in expected.windows}))
        assert worker.process is not None
        name = f"{socket.gethostname()}-{worker.process.pid}"
        stats_match = f'{{__name__=~"pulse_stats_.*",worker="{name}"}}'

        def per_partition(found: Latest, field: str) -> dict[int, float]:
            series = f"{PULSE_STATS.name}_{field}"
            return {
                int(dict(labels)["partition"]): value
                for (n, labels), value in found.items()
                if n == series
            }

        def settled() -> Latest | None:
            found = latest(influx_url, stats_match)
            done = per_partition(found, "readings") == dict(readings) and per_partition(
                found, "windows_closed"
            ) == dict(closed)
            return found if done and per_partition(found, "open_windows") else None

        found = wait_until(settled, "pulse_stats to count the stream", [worker], timeout=60, poll=1)

        # The last pulse_stats point of each partition: exactly what the reference computes.
        assert per_partition(found, "readings") == {p: float(readings[p]) for p in partitions}
        assert per_partition(found, "windows_closed") == {p: float(closed[p]) for p in partitions}
        for reason in DEAD_LETTER_REASONS:
            assert per_partition(found, f"dead_letters_{reason}") == {
                p: float(dead[(p, reason)]) for p in partitions
            }, reason
        assert per_partition(found, "lag") == dict.fromkeys(partitions, 0.0)
        assert per_partition(found, "open_windows") == dict.fromkeys(partitions, 0.0)

        # Each stats measurement: every declared field, with exactly its declared tags.
        for measurement in STATS:
            for field in measurement.field_names:
                series = [
                    dict(labels)
                    for (n, labels), _ in found.items()
                    if n == f"{measurement.name}_{field}"
                ]
                assert series, (measurement.name, field)
                assert {tuple(sorted(labels)) for labels in series} == {
                    tuple(sorted(measurement.tag_names))
                }, (measurement.name, field)
        sinks = {
            dict(labels)["sink"]: value
            for (n, labels), value in found.items()
            if n.startswith(f"{PULSE_STATS_SINK.name}_")
        }
        assert set(sinks) == SINKS
        assert set(sinks.values()) == {0.0}  # no sink failed a try
        worker_point = {
            n.removeprefix(f"{PULSE_STATS_WORKER.name}_"): value
            for (n, _), value in found.items()
            if n.startswith(f"{PULSE_STATS_WORKER.name}_")
        }
        assert worker_point["flushes"] == worker_point["flush_seconds_count"] > 0
        assert worker_point["flush_seconds_sum"] > 0

        # The windows: every aggregate of both metrics, tagged device and window, and site
        # where the reading had one.
        devices = sorted(device_partition)
        windows_match = f'{{__name__=~"({"|".join(METRICS)})_.*",device=~"{topic_prefix}-dev-.*"}}'
        points = victoria.wait_for_points(
            influx_url, windows_match, len(expected.windows) * len(WINDOWS.fields), timeout=60
        )
        labels_of = [dict(labels) for labels in points]
        assert {labels["__name__"] for labels in labels_of} == {
            f"{metric}_{field}" for metric in METRICS for field in WINDOWS.field_names
        }
        always = {tag.name for tag in WINDOWS.tags if tag.always}
        assert all(always <= set(labels) for labels in labels_of)
        assert {labels["device"] for labels in labels_of} == set(devices)
        assert {labels["window"] for labels in labels_of} == set(expected.window_sizes)
        optional = {tag.name for tag in WINDOWS.tags if not tag.always}
        for tag in optional:
            assert any(tag in labels for labels in labels_of), tag
    finally:
        assert worker.stop() == 0, worker.log_tail()
