"""Hostile input end to end: the corpus of what a hostile or broken producer sends
(tests/integration/hostile_corpus.json) interleaved with clean readings through a real worker.

Each hostile record must land in the dead-letter topic with the reason the corpus gives it
(and the reference computes, for the two reasons that depend on the records before it), and
cost nothing else: every output of the clean readings (the aggregates topic, Redis,
InfluxDB) equals the independent reference exactly, every number in them is finite although
the clean readings include values up to +-1e290, and the worker ends as it began. On tansu
only: the rules read the records, not the broker (tests/pulse/test_topics.py checks the
readings topic's timestamps on Apache Kafka).
"""

from __future__ import annotations

import asyncio
import base64
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import redis

from tests.helpers import kafka, victoria
from tests.helpers.redis_windows import window_text
from tests.helpers.worker import WorkerProcess
from tests.integration import dataset
from tests.integration.test_pipeline import (
    GRACE_US,
    WINDOWS_US,
    assert_aggregates_topic,
    assert_dead_letters,
    assert_influx,
    assert_redis,
    pipeline_env,
    wait_for_all_closed,
)
from tests.reference import Expected, Invalid, Record, Valid, compute

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).with_name("hostile_corpus.json")
HUGE = (1e290, 9.87654321e289, 3e289, 5.5e289, 1.2345678901234567e289)
"""The values of one device's clean readings: at the edge of the contract's range, positive
for one metric, negative for the other. (One device has them all: VictoriaMetrics, standing
in for InfluxDB, stores a series' points with a shared decimal exponent, which turns a -20.4
next to a 1e290 into 0; InfluxDB keeps each float64 as it is.)"""


@dataclass(frozen=True)
class Hostile:
    what: str
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None
    reason: str
    detail: str | None


def corpus() -> tuple[dict[str, Any], list[Hostile]]:
    doc = orjson.loads(CORPUS.read_bytes())
    records = []
    for row in doc["records"]:
        key = base64.b64decode(row["key_base64"]) if "key_base64" in row else row["key"]
        value = base64.b64decode(row["value_base64"]) if "value_base64" in row else row["value"]
        records.append(
            Hostile(
                row["what"],
                key.encode() if isinstance(key, str) else key,
                value.encode() if isinstance(value, str) else value,
                row.get("timestamp_ms"),
                row["reason"],
                row.get("detail"),
            )
        )
    return doc, records


def clean_entries(prefix: str) -> list[dataset.Entry]:
    """The valid readings of the contract dataset (late ones included: the reference knows
    them), those of its last device with values up to +-1e290, and some with a tag value that
    line protocol must escape."""
    out = []
    valid = [e for e in dataset.build(prefix, per_device=50) if isinstance(e.meaning, Valid)]
    for number, entry in enumerate(valid):
        meaning = entry.meaning
        assert isinstance(meaning, Valid) and entry.value is not None
        doc = orjson.loads(entry.value)
        if meaning.device == f"{prefix}-dev-f":
            sign = 1.0 if meaning.metric == "temperature" else -1.0
            doc["value"] = sign * HUGE[number % len(HUGE)]
        if number % 11 == 7 and meaning.tags:
            doc["tags"] = {**meaning.tags, "site": "hall 2, bay=3 {a:b}"}
        meaning = replace(meaning, value=float(doc["value"]), tags=doc.get("tags"))
        out.append(replace(entry, value=orjson.dumps(doc), meaning=meaning))
    return out


def meaning_of(hostile: Hostile) -> Valid | Invalid:
    """What the reference makes of a hostile record: a reading for the reasons that depend on
    the partition's earlier records (it must find the corpus's reason itself), else the
    corpus's reason."""
    if hostile.reason not in ("late", "too_many_tag_values"):
        return Invalid(hostile.reason)
    assert hostile.value is not None
    doc = orjson.loads(hostile.value)
    return Valid(
        doc["device"], doc["metric"], float(doc["value"]), round(doc["ts"] * 1e6), doc.get("tags")
    )


@pytest.mark.parametrize("broker", ["tansu"], indirect=True)
def test_hostile_records_are_dead_lettered_and_cost_the_clean_ones_nothing(
    broker: str, redis_url: str, influx_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    limits, hostiles = corpus()
    env = pipeline_env(topic_prefix, broker, redis_url, influx_url)
    env["PULSE_MAX_MESSAGE_BYTES"] = str(limits["max_message_bytes"])
    env["PULSE_MAX_TAG_VALUES"] = str(limits["max_tag_values"])
    clean = clean_entries(topic_prefix)
    # Each hostile record after a quarter of the clean ones (so that its partition has a
    # watermark and tag values in use), evenly spread, over the four partitions in turn.
    placed: list[tuple[int, bytes | None, bytes | None, int | None, Valid | Invalid, Any]] = [
        (e.partition, e.key, e.value, e.timestamp_ms, e.meaning, None) for e in clean
    ]
    begin, gap = len(clean) // 4, len(clean) * 3 // 4 // len(hostiles)
    for number, hostile in reversed(list(enumerate(hostiles))):
        row = (number % 4, hostile.key, hostile.value, hostile.timestamp_ms)
        placed.insert(begin + number * gap, (*row, meaning_of(hostile), hostile))
    topic = env["PULSE_TOPIC_READINGS"]
    asyncio.run(kafka.create_topics(broker, {topic: 4}))
    stored = asyncio.run(kafka.produce(broker, topic, [p[:4] for p in placed]))
    records = [Record(s.partition, s.offset, p[4]) for s, p in zip(stored, placed, strict=True)]
    ends: dict[int, int] = {}
    for s in stored:
        ends[s.partition] = max(ends.get(s.partition, 0), s.offset + 1)
    expected = compute(records, WINDOWS_US, GRACE_US, max_tag_values=limits["max_tag_values"])

    # The reference gives every hostile record the corpus's reason, and rejects no clean
    # reading but the late ones of the dataset.
    hostile_at = {
        (s.partition, s.offset): p[5] for s, p in zip(stored, placed, strict=True) if p[5]
    }
    assert {k: expected.dead_letters.get(k) for k in hostile_at} == {
        k: h.reason for k, h in hostile_at.items()
    }
    assert {r for k, r in expected.dead_letters.items() if k not in hostile_at} == {"late"}
    assert any(abs(w["sum"]) >= 1e290 for w in expected.windows.values())

    worker = WorkerProcess(env, tmp_path).start()
    try:
        worker.wait_ready()
        worker.wait_caught_up(ends)
        client = redis.Redis.from_url(redis_url)
        series = {(d, m, label) for d, m, label, _ in expected.windows}
        wait_for_all_closed(client, topic_prefix, len(series))
        assert_dead_letters(broker, env, expected, records)
        assert_details(broker, env, hostile_at)
        assert_aggregates_topic(broker, env, expected)
        assert_redis(client, topic_prefix, expected)
        assert_all_finite(broker, env, client, influx_url, topic_prefix, expected)
        assert_influx(influx_url, topic_prefix, expected)
        assert worker.health() is not None  # alive and answering after all of it
    finally:
        assert worker.stop() == 0, worker.log_tail()


def assert_details(broker: str, env: dict[str, str], hostile_at: dict[Any, Hostile]) -> None:
    """Each dead letter of a hostile record says why, as the corpus expects."""
    stored = asyncio.run(kafka.read_all(broker, env["PULSE_TOPIC_DLQ"]))
    letters = {}
    for record in stored:
        assert record.value is not None
        letter = orjson.loads(record.value)
        letters[(letter["partition"], letter["offset"])] = letter
    for position, hostile in hostile_at.items():
        letter = letters[position]
        assert letter["reason"] == hostile.reason, hostile.what
        if hostile.detail is not None:
            assert hostile.detail in letter["detail"], (hostile.what, letter["detail"])


def assert_all_finite(
    broker: str,
    env: dict[str, str],
    client: redis.Redis,
    influx_url: str,
    prefix: str,
    expected: Expected,
) -> None:
    """No output holds a number that is not finite: the aggregates topic's JSON (which could
    not even hold NaN), every field of every Redis hash and sorted set, every stored point."""
    for record in asyncio.run(kafka.read_all(broker, env["PULSE_TOPIC_AGGREGATES"])):
        assert record.value is not None
        doc = orjson.loads(record.value)
        for name in ("count", "sum", "min", "max", "mean", "first", "last", "p50", "p95", "p99"):
            assert isinstance(doc[name], int | float) and math.isfinite(doc[name]), doc
    for key in client.scan_iter(f"{prefix}:*"):
        kind = client.type(key)
        if kind == b"hash":
            fields = cast(dict[bytes, bytes], client.hgetall(key))
            window = window_text(fields) if b"window" in fields else None
            if window is not None:  # a window's hash: its values, each a number
                fields = {b"v": fields[b"v"], **{k.encode(): v.encode() for k, v in window.items()}}
            for field, value in fields.items():
                # Not a number: a version (a window's v, a metric's {metric}:v).
                if field == b"v" or field.endswith(b":v"):
                    assert value.split(b":")[0].lstrip(b"-").isdigit(), (key, field, value)
                elif not field.endswith(b":ts"):
                    assert math.isfinite(float(value)), (key, field, value)
        elif kind == b"zset":
            members = client.zrange(key, 0, -1, withscores=True)
            for _, score in cast(list[tuple[bytes, float]], members):
                assert math.isfinite(score), key
    match = f'{{__name__=~"(temperature|humidity)_.*",device=~"{prefix}-.*"}}'
    points = victoria.wait_for_points(influx_url, match, 10 * len(expected.windows))
    values = [v for series in points.values() for v in series.values()]
    assert values and all(math.isfinite(v) for v in values)
    assert max(abs(v) for v in values) >= 1e290
