"""The InfluxDB writer alone (``pulse influx-writer``): the aggregates topic into InfluxDB.

Real servers: the session's tansu broker and VictoriaMetrics. Records written as the Kafka
sink writes them (plus one that is no aggregates record) go into the topic; the writer, run
as its own process, must write each window's point, dead-letter the unreadable record with
its reason, commit its group's offsets to the topic's end, and stop cleanly.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from models.outputs import ClosedWindow
from pulse.sinks.kafka import aggregate_records
from tables.aggregators import Summary
from tests.helpers import kafka, victoria

START = 1_700_000_000 * 1_000_000


async def committed(broker: str, group: str, topic: str) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap(broker), group_id=group)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in (0, 1)}
    finally:
        await consumer.stop()


def test_the_writer_alone_writes_the_topic_to_influx_and_commits_it(
    broker: str, influx_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    aggregates, output_dlq = f"{topic_prefix}-aggregates", f"{topic_prefix}-output-dlq"
    windows = []
    for i in range(30):
        tags = {"site": f"s{i % 3}"} if i % 2 else None  # the last reading's tags are the window's
        state = Summary.initialize(START + i, float(i), None)
        Summary.add(state, START + i + 1, float(i) + 0.25, tags)
        windows.append(
            ClosedWindow(f"{topic_prefix}-d{i}", "wr", "10s", START, START + 10_000_000, state)
        )
    records = aggregate_records(windows)
    garbage = (f"{topic_prefix}-x".encode(), b'{"device": "no window"}')
    asyncio.run(kafka.create_topics(broker, {aggregates: 2}))
    stored = asyncio.run(
        kafka.produce(
            broker,
            aggregates,
            [(i % 2, key, value, None) for i, (key, value) in enumerate([*records, garbage])],
        )
    )
    env = {
        **os.environ,
        "PULSE_BROKER": broker,
        "PULSE_INFLUX_URL": influx_url,
        "PULSE_APP_ID": f"{topic_prefix}app",
        "PULSE_TOPIC_READINGS": f"{topic_prefix}-readings",
        "PULSE_TOPIC_AGGREGATES": aggregates,
        "PULSE_TOPIC_DLQ": f"{topic_prefix}-dlq",
        "PULSE_TOPIC_OUTPUT_DLQ": output_dlq,
        "PULSE_PARTITIONS": "2",
        "PULSE_SESSION_TIMEOUT": "2",
    }
    log_path = tmp_path / "writer.log"
    with log_path.open("wb") as log:
        writer = subprocess.Popen(
            [sys.executable, "-m", "pulse", "influx-writer"],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        found = victoria.wait_for_points(
            influx_url, f'{{__name__="wr_first",device=~"{topic_prefix}-.*"}}', len(windows)
        )
        assert {dict(labels)["device"]: points for labels, points in found.items()} == {
            w.device: {START // 1000: float(i)} for i, w in enumerate(windows)
        }
        site = {dict(labels)["device"]: dict(labels).get("site") for labels in found}
        assert site == {w.device: f"s{i % 3}" if i % 2 else None for i, w in enumerate(windows)}
        letters = asyncio.run(kafka.read_all(broker, output_dlq))
        assert [(r.key, orjson.loads(r.value or b"")) for r in letters] == [
            (
                garbage[0],
                {
                    "reason": "unreadable",
                    "sink": "influx",
                    "target": f"topic {aggregates} partition 0 offset {stored[-1].offset}",
                    "answer": "not an aggregates record (KeyError: 'metric')",
                    "key": garbage[0].decode(),
                    "output": garbage[1].decode(),
                },
            )
        ]
        ends = {p: max(s.offset for s in stored if s.partition == p) + 1 for p in (0, 1)}
        deadline = time.monotonic() + 20
        while asyncio.run(committed(broker, f"{topic_prefix}app-influx", aggregates)) != ends:
            assert time.monotonic() < deadline, "offsets not committed to the end"
            assert writer.poll() is None, log_path.read_text()
            time.sleep(0.5)
    finally:
        writer.send_signal(signal.SIGTERM)
        code = writer.wait(30)
    assert code == 0, log_path.read_text()
