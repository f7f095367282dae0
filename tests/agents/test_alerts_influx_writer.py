"""The alerts' InfluxDB writer, run alone (``pulse influx-writer`` runs it beside the windows'
writer): the alerts topic into InfluxDB's ``alerts`` measurement.

Real servers: the session's tansu broker and VictoriaMetrics (the InfluxDB stand-in: series
``alerts_<field>``, tags as labels, milliseconds, a string field stored as 0, a boolean as 1
or 0). Transitions built with models.alerts.AlertTransition, window and absence rules, with
and without a site, silenced or not, repeated in the topic, and one record that is no
transition go into a two-partition topic. The store must hold exactly the points computed
here from the transitions themselves (not from the records or the writer's line), the
unreadable record must be dead-lettered with its reason, and the group's offsets committed
to the topic's end.
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

from models.alerts import AlertTransition
from tests.helpers import kafka, victoria
from tests.helpers.alerts import absence_alert, keyed, window_alert

Points = dict[tuple[tuple[str, str], ...], dict[int, float]]


async def committed(broker: str, group: str, topic: str) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap(broker), group_id=group)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in (0, 1)}
    finally:
        await consumer.stop()


def expected_points(transitions: list[AlertTransition]) -> Points:
    """Per series (its labels with ``__name__``), its points, from the transitions: the
    fields value (when there is one), threshold, silenced (1 or 0) and id (a text: 0 in the
    stand-in) at the transition's end in milliseconds; tags rule, device, severity, state,
    metric, and site and window when there are."""
    out: Points = {}
    for t in transitions:
        tags = {
            "rule": t.rule,
            "device": t.device,
            "severity": t.severity,
            "state": t.state,
            "metric": t.metric,
        }
        if t.site is not None:
            tags["site"] = t.site
        if t.window is not None:
            tags["window"] = t.window
        fields = {"threshold": t.threshold, "silenced": float(t.silenced), "id": 0.0}
        if t.value is not None:
            fields["value"] = t.value
        for name, value in fields.items():
            labels = tuple(sorted({**tags, "__name__": f"alerts_{name}"}.items()))
            out.setdefault(labels, {})[t.end_us // 1000] = value
    return out


def test_the_alerts_writer_writes_one_point_per_transition_and_commits(
    broker: str, influx_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    p = topic_prefix
    a, b = f"{p}-a", f"{p}-b"
    partition_0 = [
        window_alert("hot", a, "t", "10s", 10, 1, "firing", 91.5, site="plant a,1"),
        absence_alert("quiet", a, "t", "firing", 0, 30),
        window_alert("hot", a, "t", "10s", 10, 3, "resolved", 65.25, site="plant a,1"),
        absence_alert("quiet", a, "t", "resolved", 25, 30),
    ]
    partition_1 = [
        window_alert("hot", b, "t", "5m/1m", 60, 2, "firing", 1e-7, silenced=True, site=None),
        window_alert("low", b, "h", "1m", 60, 1, "firing", -3.0, threshold=0.0, severity="page"),
    ]
    transitions = partition_0 + partition_1
    garbage = (b.encode(), b'{"rule": "no transition"}')
    aggregates, alerts = f"{p}-aggregates", f"{p}-alerts"
    output_dlq = f"{p}-output-dlq"
    asyncio.run(kafka.create_topics(broker, {aggregates: 2, alerts: 2}))
    records: list[tuple[int | None, bytes | None, bytes | None, int | None]] = [
        *[(0, k, v, None) for k, v in keyed(partition_0 + partition_0[:2])],  # with a repeat
        *[(1, k, v, None) for k, v in [*keyed(partition_1), garbage]],
    ]
    stored = asyncio.run(kafka.produce(broker, alerts, records))
    env = {
        **os.environ,
        "PULSE_BROKER": broker,
        "PULSE_INFLUX_URL": influx_url,
        "PULSE_APP_ID": f"{p}app",
        "PULSE_TOPIC_READINGS": f"{p}-readings",
        "PULSE_TOPIC_AGGREGATES": aggregates,
        "PULSE_TOPIC_ALERTS": alerts,
        "PULSE_TOPIC_DLQ": f"{p}-dlq",
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
        want = expected_points(transitions)
        match = f'{{__name__=~"alerts_.*",device=~"{p}-.*"}}'
        found = victoria.wait_for_points(influx_url, match, sum(len(v) for v in want.values()))
        assert found == want
        letters = asyncio.run(kafka.read_all(broker, output_dlq))
        assert [(r.key, orjson.loads(r.value or b"")) for r in letters] == [
            (
                garbage[0],
                {
                    "reason": "unreadable",
                    "sink": "influx-alerts",
                    "target": f"topic {alerts} partition 1 offset {stored[-1].offset}",
                    "answer": "not an alert transition: no id, device, site, labels, metric, "
                    "window, start, end, aggregate, value, threshold, state, severity, silenced",
                    "key": garbage[0].decode(),
                    "output": garbage[1].decode(),
                },
            )
        ]
        ends = {q: max(s.offset for s in stored if s.partition == q) + 1 for q in (0, 1)}
        deadline = time.monotonic() + 20
        while asyncio.run(committed(broker, f"{p}app-alerts-influx", alerts)) != ends:
            assert time.monotonic() < deadline, "offsets not committed to the end"
            assert writer.poll() is None, log_path.read_text()
            time.sleep(0.5)
    finally:
        writer.send_signal(signal.SIGTERM)
        code = writer.wait(30)
    assert code == 0, log_path.read_text()
    # Nothing more came meanwhile (the repeats were the same points).
    assert victoria.points(influx_url, match) == want
