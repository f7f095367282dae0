"""The Pulse run of the benchmark: the real worker with its real sinks.

:func:`run_pulse` starts ``python -m bench.pulse_worker`` (Faust's worker CLI on
``pulse.app:app``, exactly what ``pulse worker`` runs, with an observing subclass of the
readings processor; see that module for what is timed) through
:func:`bench.measure.run_measured_subprocess`, with its own app id (so its own consumer groups,
changelog, aggregates and dead-letter topics) and Redis prefix. Sinks are Pulse's: Redis,
VictoriaMetrics (InfluxDB's write API) and the aggregates topic, plus the changelog.

Afterwards, outside the measured interval, it checks the output: the records on the
aggregates topic must equal the windows the worker emitted, and (when the runner passes the
dataset) the number of distinct (device, metric, window) windows in the dataset.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.dataset import DatasetSpec, generate
from bench.measure import RunResult, run_measured_subprocess
from pulse.local.stack import free_port

if TYPE_CHECKING:
    from bench.run import BenchContext

IDLE_CLOSE_SECONDS = 10.0
"""PULSE_IDLE_CLOSE for the run: the last windows close this long after a partition's last
record. Small, and left out of the measured interval anyway (see bench.pulse_worker)."""

SESSION_TIMEOUT_SECONDS = 6.0
"""PULSE_SESSION_TIMEOUT: the local broker holds each JoinGroup for half of it (startup only)."""


def pulse_env(context: BenchContext, app_id: str, idle_close: float = IDLE_CLOSE_SECONDS) -> dict:
    """The environment of a Pulse worker on the bench stack, with its own names."""
    return {
        **os.environ,
        "PULSE_BROKER": context.broker_url,
        "PULSE_REDIS_URL": context.redis_url,
        "PULSE_INFLUX_URL": context.influx_url,
        "PULSE_APP_ID": app_id,
        "PULSE_WINDOWS": context.windows,
        "PULSE_GRACE": str(context.grace_seconds),
        "PULSE_IDLE_CLOSE": str(idle_close),
        "PULSE_TOPIC_READINGS": context.topic,
        "PULSE_TOPIC_AGGREGATES": f"{app_id}-aggregates",
        "PULSE_TOPIC_DLQ": f"{app_id}-dlq",
        "PULSE_TOPIC_OUTPUT_DLQ": f"{app_id}-output-dlq",
        "PULSE_REDIS_PREFIX": app_id,
        "PULSE_PARTITIONS": str(context.partitions),
        "PULSE_SESSION_TIMEOUT": str(SESSION_TIMEOUT_SECONDS),
        "PULSE_WEB_PORT": str(free_port()),
    }


def run_pulse(context: BenchContext) -> RunResult:
    """Run the Pulse worker over ``context.topic`` and measure it; return its RunResult.

    ``seconds``: first reading consumed to the flush after the last reading (every effect
    durable in Redis, VictoriaMetrics, the aggregates topic and the changelog), plus the busy
    time of the flushes that emit the windows the idle close closes afterwards; the
    ``PULSE_IDLE_CLOSE`` wait itself is not counted. ``cpu_seconds`` over the same intervals.
    """
    app_id = f"bench-pulse-{context.run_id}"
    result = run_measured_subprocess(
        "bench.pulse_worker",
        ["--expected", str(context.readings), "--work-dir", str(context.work_dir)],
        context.work_dir / "result.json",
        log_path=context.work_dir / "output.log",
        env=pulse_env(context, app_id),
    )
    on_topic = asyncio.run(count_records(context.bootstrap, f"{app_id}-aggregates"))
    checks = [f"{on_topic:,} records on the aggregates topic"]
    if on_topic != result.windows_emitted:
        checks[0] += " (MISMATCH with windows emitted)"
    spec = getattr(context, "dataset", None)
    if spec is not None and spec.readings == context.readings:
        expected = distinct_windows(spec)
        checks.append(
            f"{expected:,} distinct windows in the dataset"
            + ("" if expected == result.windows_emitted else " (MISMATCH)")
        )
    result.note = f"{result.note}; {'; '.join(checks)}"
    return result


async def count_records(bootstrap: str, topic: str) -> int:
    """Records in ``topic``, read to the high watermark of every partition (no group)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    # A consumer without a subscription knows no topic's partitions on Apache Kafka: ask.
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    count_of = {t["topic"]: len(t["partitions"]) for t in described if not t.get("error_code")}
    partitions = [TopicPartition(topic, p) for p in range(count_of.get(topic, 0))]
    if not partitions:
        return 0
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        count = 0
        quiet = 0
        # The fetch high watermark, not ListOffsets (which the local broker under-reports).
        while quiet < 3:
            batches = await consumer.getmany(timeout_ms=500, max_records=100_000)
            got = sum(len(records) for records in batches.values())
            count += got
            done = True
            for tp in partitions:
                highwater = consumer.highwater(tp)
                done = done and highwater is not None and await consumer.position(tp) >= highwater
            quiet = quiet + 1 if done and not got else 0
        return count
    finally:
        await consumer.stop()


def distinct_windows(spec: DatasetSpec, sizes_s: tuple[int, ...] = (10, 60)) -> int:
    """Distinct (device, metric, window size, window start) in the dataset: what an exact
    processor that closes every window emits (no reading is late: jitter < grace)."""
    sizes_us = [size * 1_000_000 for size in sizes_s]
    seen: set[tuple[str, str, int, int]] = set()
    add = seen.add
    for _key, value, _timestamp_ms in generate(spec):
        doc = orjson.loads(value)
        device, metric = doc["device"], doc["metric"]
        t_us = round(doc["ts"] * 1_000_000)  # as Pulse reads "ts"
        for size in sizes_us:
            add((device, metric, size, t_us - t_us % size))
    return len(seen)
