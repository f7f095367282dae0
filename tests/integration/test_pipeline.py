"""The core pipeline end to end on real servers: readings -> aggregates, DLQ, Redis, InfluxDB.

A real ``pulse worker`` process consumes a pre-produced dataset from a 4-partition topic; its
outputs are compared exactly with an independent reference computation (tests/reference.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from tests.helpers import kafka, victoria
from tests.helpers.redis_cluster import SyncRedis, sync_redis
from tests.helpers.redis_windows import ORDER as WINDOW_ORDER
from tests.helpers.redis_windows import window_text
from tests.helpers.worker import WorkerProcess
from tests.integration import dataset
from tests.reference import QUANTILE_ACCURACY, Expected, Record, assert_window_fields, compute

pytestmark = pytest.mark.integration

WINDOWS_US = {"10s": 10_000_000, "1m": 60_000_000}
WINDOW_SETS: dict[str, tuple[str, Mapping[str, int | tuple[int, int]], dict[str, int]]] = {
    "tumbling": ("10s,1m", WINDOWS_US, {}),
    "hopping+sliding": (
        "10s,30s/10s,sliding:20s",
        {"10s": 10_000_000, "30s/10s": (30_000_000, 10_000_000)},
        {"sliding:20s": 20_000_000},
    ),
}
GRACE_US = 5_000_000
STATE_TTL = 3600
HISTORY_LENGTH = 5
"""Fewer than the dataset's longest series has windows (8): the history keeps the newest."""
FIELDS = ("count", "sum", "min", "max", "mean", "first", "last", "p50", "p95", "p99")


def pipeline_env(prefix: str, broker: str, redis_url: str, influx_url: str) -> dict[str, str]:
    return {
        "PULSE_BROKER": broker,
        "PULSE_REDIS_URL": redis_url,
        "PULSE_INFLUX_URL": influx_url,
        "PULSE_APP_ID": f"{prefix}app",
        "PULSE_TOPIC_READINGS": f"{prefix}-readings",
        "PULSE_TOPIC_AGGREGATES": f"{prefix}-aggregates",
        "PULSE_TOPIC_DLQ": f"{prefix}-dlq",
        "PULSE_TOPIC_ALERTS": f"{prefix}-alerts",
        "PULSE_TOPIC_OUTPUT_DLQ": f"{prefix}-output-dlq",
        "PULSE_REDIS_PREFIX": prefix,
        "PULSE_WINDOWS": "10s,1m",
        "PULSE_GRACE": "5",
        "PULSE_IDLE_CLOSE": "2",
        "PULSE_STATE_TTL": str(STATE_TTL),
        "PULSE_HISTORY_LENGTH": str(HISTORY_LENGTH),
        "PULSE_FLUSH_INTERVAL": "0.1",
        "PULSE_MAX_MESSAGE_BYTES": str(dataset.MAX_MESSAGE_BYTES),
        "PULSE_PARTITIONS": "4",
        "PULSE_SESSION_TIMEOUT": "2",
        "PULSE_WORKER_SERVES_API": "true",
        # The pipeline's health in InfluxDB every second (agents/stats.py): its sink has
        # written, in the InfluxDB sink's state, by the time a test looks at /health.
        "PULSE_STATS_INTERVAL": "1",
    }


def produce_dataset(broker: str, topic: str, prefix: str) -> tuple[list[Record], dict[int, int]]:
    entries = dataset.build(prefix)
    asyncio.run(kafka.create_topics(broker, {topic: 4}))
    stored = asyncio.run(
        kafka.produce(
            broker, topic, [(e.partition, e.key, e.value, e.timestamp_ms) for e in entries]
        )
    )
    records = [
        Record(s.partition, s.offset, e.meaning) for s, e in zip(stored, entries, strict=True)
    ]
    ends: dict[int, int] = {}
    for s in stored:
        ends[s.partition] = max(ends.get(s.partition, 0), s.offset + 1)
    return records, ends


def wait_for_all_closed(
    client: SyncRedis, prefix: str, expected_closed: int, timeout: float = 40.0
) -> None:
    """Idle close ends every window: wait until no open window is left in Redis."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        open_keys = list(client.scan_iter(f"{prefix}:open:*"))
        closed_keys = list(client.scan_iter(f"{prefix}:closed:*"))
        if not open_keys and len(closed_keys) == expected_closed:
            return
        time.sleep(0.3)
    raise AssertionError(f"open windows left: {open_keys[:5]}, closed keys {len(closed_keys)}")


@pytest.mark.parametrize("window_set", sorted(WINDOW_SETS))
def test_pipeline_outputs_equal_the_reference(
    broker: str,
    redis_url: str,
    influx_url: str,
    topic_prefix: str,
    tmp_path: Path,
    window_set: str,
) -> None:
    spec, windows, sliding = WINDOW_SETS[window_set]
    env = pipeline_env(topic_prefix, broker, redis_url, influx_url)
    env["PULSE_WINDOWS"] = spec
    env["PULSE_WORKER_SERVES_API"] = "true"  # /api/history, over Redis and VictoriaMetrics
    env["PULSE_HISTORY_STORE"] = "victoria"
    records, ends = produce_dataset(broker, env["PULSE_TOPIC_READINGS"], topic_prefix)
    expected = compute(records, windows, GRACE_US, sliding)
    # The dataset must exercise every rule it is meant to.
    reasons = set(expected.dead_letters.values())
    assert reasons == {"invalid_json", "invalid_reading", "too_large", "late"}
    assert expected.late_for_some > 0
    assert len(expected.windows) > 100
    assert {label for _, _, label, _ in expected.windows} == set(windows)
    assert {label for _, _, label in expected.sliding} == set(sliding)

    worker = WorkerProcess(env, tmp_path).start()
    try:
        worker.wait_ready()
        worker.wait_caught_up(ends)
        client = sync_redis(redis_url)
        series = {(d, m, label) for d, m, label, _ in expected.windows}
        wait_for_all_closed(client, topic_prefix, len(series))
        assert_aggregates_topic(broker, env, expected)
        assert_dead_letters(broker, env, expected, records)
        assert_redis(client, topic_prefix, expected)
        assert_sliding(client, topic_prefix, expected)
        assert_history(client, topic_prefix, expected)
        assert_api_and_cli(worker, env, expected)
        assert_dead_letter_counts(client, topic_prefix, expected)
        assert_influx(influx_url, topic_prefix, expected)
        assert_history_api(worker, expected)
    finally:
        assert worker.stop() == 0, worker.log_tail()


def assert_aggregates_topic(
    broker: str, env: dict[str, str], expected: Expected, timeout: float = 30.0
) -> None:
    """Every window once in the aggregates topic, exactly as the reference has it; repeats only
    with identical content. Reads again while windows are missing (up to ``timeout``): each
    output has its own lane, so the topic may still be catching up (a sink that waited out a
    broker outage) when Redis already holds everything."""
    wanted = expected.aggregate_documents()
    deadline = time.monotonic() + timeout
    while True:
        stored = asyncio.run(kafka.read_all(broker, env["PULSE_TOPIC_AGGREGATES"]))
        versions: dict[tuple, set[str]] = {}
        found = {}
        for record in stored:
            assert record.value is not None
            doc = orjson.loads(record.value)
            assert record.key == doc["device"].encode()
            key = (doc["device"], doc["metric"], doc["window"], doc["start"])
            versions.setdefault(key, set()).add(json.dumps(doc, sort_keys=True))
            found[key] = doc
        # Once per window; a repeat is allowed only with identical content.
        assert {k: len(v) for k, v in versions.items() if len(v) > 1} == {}
        if set(found) >= set(wanted) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert set(found) == set(wanted)
    for key, doc in wanted.items():
        assert_window_fields(found[key], doc, key)


def assert_dead_letters(
    broker: str, env: dict[str, str], expected: Expected, records: list[Record]
) -> None:
    stored = asyncio.run(kafka.read_all(broker, env["PULSE_TOPIC_DLQ"]))
    letters = [orjson.loads(r.value) for r in stored if r.value is not None]
    assert len(letters) == len(stored), "a dead letter without a value"
    found = {(d["partition"], d["offset"]): d["reason"] for d in letters}
    assert found == expected.dead_letters
    assert len(letters) == len(found), "a record was dead-lettered twice"
    originals = asyncio.run(kafka.read_all(broker, env["PULSE_TOPIC_READINGS"]))
    by_position = {(r.partition, r.offset): r for r in originals}
    for letter in letters:
        original = by_position[(letter["partition"], letter["offset"])]
        assert letter["topic"] == env["PULSE_TOPIC_READINGS"]
        key = original.key.decode("utf-8", "replace") if original.key is not None else None
        assert letter["key"] == key
        assert letter["detail"]
        if original.value is None:
            assert letter["value"] is None
        elif letter.get("value_encoding") == "base64":
            assert base64.b64decode(letter["value"]) == original.value
            assert letter["reason"] == "invalid_json"
        elif letter["reason"] == "too_large":
            assert letter["value_truncated"] is True
            assert letter["value_size"] == len(original.value)
            assert original.value.startswith(letter["value"].encode())
        else:
            assert letter["value"].encode() == original.value


def _hash(client: SyncRedis, key: str) -> dict[bytes, bytes]:
    """HGETALL; the client returns bytes (no decode_responses), whatever its types say."""
    return cast(dict[bytes, bytes], client.hgetall(key))


def _window_hash(client: SyncRedis, key: str, version: str) -> dict[str, str]:
    """A window's fields as stored text, after checking its version (its field ``v``, which
    the contract's readers leave out): ``version``."""
    stored = _hash(client, key)
    assert stored.get(b"v") == version.encode(), key
    text = window_text(stored)
    assert text is not None, key
    return text


def assert_redis(client: SyncRedis, prefix: str, expected: Expected) -> None:
    devices: dict[str, dict[str, tuple[int, float]]] = {}
    for (device, metric), (t_us, value) in expected.latest.items():
        devices.setdefault(device, {})[metric] = (t_us, value)
    for device, metrics in devices.items():
        key = f"{prefix}:device:{device}"
        stored = _hash(client, key)
        want = {}
        for metric, (t_us, value) in metrics.items():
            want[metric.encode()] = repr(value).encode()
            seconds = t_us // 1_000_000 if t_us % 1_000_000 == 0 else t_us / 1_000_000
            want[f"{metric}:ts".encode()] = repr(seconds).encode()
            # Its version: the value's event time, then the partition's offset at the drain
            # (which the reference does not follow).
            version = stored.pop(f"{metric}:v".encode(), b"").decode()
            assert version.startswith(f"{t_us}:") and version.split(":")[1].isdigit(), device
        assert stored == want, device
        assert 0 < client.ttl(key) <= STATE_TTL

    newest: dict[tuple[str, str, str], int] = {}
    for device, metric, label, start in expected.windows:
        newest[(label, device, metric)] = max(newest.get((label, device, metric), start), start)
    tops: dict[tuple[str, str], dict[str, float]] = {}
    for (label, device, metric), start in newest.items():
        agg = expected.windows[(device, metric, label, start)]
        key = f"{prefix}:closed:{label}:{device}:{metric}"
        text = _window_hash(client, key, f"{start}:{agg['count']}")  # (start, count)
        shown = {name: float(value) for name, value in text.items()}
        end = start + expected.window_sizes[label]
        fields: dict[str, Any] = {name: agg[name] for name in FIELDS}
        fields["start"] = start // 1_000_000
        fields["end"] = end // 1_000_000
        assert_window_fields(shown, fields, key)
        # Counts are written as integers, the rest so that they round-trip exactly.
        assert text["count"] == str(agg["count"])
        assert text["sum"] == repr(agg["sum"])
        assert 0 < client.ttl(key) <= STATE_TTL
        tops.setdefault((label, metric), {})[device] = agg["mean"]
    for (label, metric), scores in tops.items():
        key = f"{prefix}:top:{label}:{metric}"
        ranked: list[tuple[bytes, float]] = client.zrange(key, 0, -1, withscores=True)  # type: ignore[assignment]
        assert dict(ranked) == {d.encode(): s for d, s in scores.items()}
        assert 0 < client.ttl(key) <= STATE_TTL
    assert list(client.scan_iter(f"{prefix}:open:*")) == []


def assert_sliding(client: SyncRedis, prefix: str, expected: Expected) -> None:
    """Sliding windows as last shown; the state behind them expired (idle close)."""
    found = {k.decode() for k in client.scan_iter(f"{prefix}:sliding:*")}
    wanted = {
        f"{prefix}:sliding:{label.removeprefix('sliding:')}:{device}:{metric}": fields
        for (device, metric, label), fields in expected.sliding.items()
    }
    assert found == set(wanted)
    for key, fields in wanted.items():
        version = f"{round(fields['end'] * 1_000_000)}:{fields['count']}"  # (end, count)
        text = _window_hash(client, key, version)
        assert_window_fields({name: float(value) for name, value in text.items()}, fields, key)
        assert 0 < client.ttl(key) <= STATE_TTL


def assert_history(
    client: SyncRedis, prefix: str, expected: Expected, timeout: float = 30.0
) -> None:
    """The history writer's keys: per series the newest HISTORY_LENGTH windows of the
    reference, each as its aggregates, start and end, scored by its start, with the TTL; and
    one event (its aggregates document) per closed window (every window entered its series'
    history when it closed, the newest then; no run here repeats one)."""
    docs = expected.aggregate_documents()
    wanted: dict[str, list[dict[str, Any]]] = {}
    for window in sorted(docs, key=lambda k: k[3]):
        device, metric, label, _ = window
        wanted.setdefault(f"{prefix}:history:{label}:{device}:{metric}", []).append(docs[window])
    wanted = {key: windows[-HISTORY_LENGTH:] for key, windows in wanted.items()}
    assert max(len(w) for w in wanted.values()) == HISTORY_LENGTH
    events: list[tuple[bytes, dict[bytes, bytes]]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # the writer trails the topic
        events = client.xrange(f"{prefix}:events")  # type: ignore[assignment]
        if len(events) >= len(docs):
            break
        time.sleep(0.3)
    assert {k.decode() for k in client.scan_iter(f"{prefix}:history:*")} == set(wanted)
    for history_key, windows in wanted.items():
        held: list[tuple[bytes, float]] = client.zrange(history_key, 0, -1, withscores=True)  # type: ignore[assignment]
        assert [score for _, score in held] == [w["start"] for w in windows], history_key
        for (member, _), want in zip(held, windows, strict=True):
            # The window as readers answer it: its aggregates, start and end, in that order.
            window = orjson.loads(member)
            assert tuple(window) == WINDOW_ORDER, history_key
            assert_window_fields(window, {n: want[n] for n in window}, history_key)
        assert 0 < client.ttl(history_key) <= STATE_TTL
    streamed = [orjson.loads(fields[b"window"]) for _, fields in events]
    by_window = {(d["device"], d["metric"], d["window"], d["start"]): d for d in streamed}
    assert len(streamed) == len(by_window) == len(docs)
    assert set(by_window) == set(docs)
    for key, doc in docs.items():
        assert_window_fields(by_window[key], doc, key)


def assert_history_api(worker: WorkerProcess, expected: Expected) -> None:
    """The worker's ``/api/history`` of the series with the most windows, over all time: every
    window of the reference, the newest HISTORY_LENGTH from Redis, the older ones from the
    store (VictoriaMetrics, which the InfluxDB writer wrote: to 12 significant digits)."""
    docs = expected.aggregate_documents()
    counts = Counter((d, m, label) for d, m, label, _ in docs)
    (device, metric, label), count = max(counts.items(), key=lambda item: (item[1], item[0]))
    assert count > HISTORY_LENGTH
    want = sorted(
        (doc for key, doc in docs.items() if key[:3] == (device, metric, label)),
        key=lambda doc: doc["start"],
    )
    query = urllib.parse.urlencode({"window": label, "since": "0", "until": "4000000000"})
    url = f"http://127.0.0.1:{worker.port}/api/history/{device}/{metric}?{query}"
    with urllib.request.urlopen(url) as response:
        body = json.loads(response.read())
    assert body["store_error"] is None
    assert body["sources"] == {"redis": HISTORY_LENGTH, "store": count - HISTORY_LENGTH, "cache": 0}
    assert [w["start"] for w in body["windows"]] == [doc["start"] for doc in want]
    for found, doc in zip(body["windows"], want, strict=True):
        shown = {k: v for k, v in doc.items() if k not in ("device", "metric", "window", "tags")}
        source = found.pop("source")
        if source == "redis":
            assert_window_fields(found, shown, (device, metric, doc["start"]))
        else:
            assert source == "store"
            for name, value in shown.items():
                rel = QUANTILE_ACCURACY + 1e-9 if name in ("p50", "p95", "p99") else 1e-11
                assert found[name] == pytest.approx(value, rel=rel, abs=1e-9), name


def assert_api_and_cli(
    worker: WorkerProcess, env: dict[str, str], expected: Expected, influx: str = "ok"
) -> None:
    """``GET /api/devices/{device}`` and ``pulse state --json`` show what Redis holds;
    ``/health`` and ``/metrics`` every sink ok (InfluxDB's: in state ``influx``)."""
    device, metric = sorted(expected.latest)[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/api/devices/{device}") as response:
        via_http = json.loads(response.read())
    cli = subprocess.run(
        [sys.executable, "-m", "pulse", "state", device, "--json"],
        env={**os.environ, **env},
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert json.loads(cli.stdout) == via_http
    t_us, value = expected.latest[(device, metric)]
    assert via_http["latest"][metric] == {"value": value, "ts": t_us / 1_000_000}
    assert via_http["open"] == {}
    for label, size in expected.window_sizes.items():
        start = max(
            s for d, m, lab, s in expected.windows if (d, m, lab) == (device, metric, label)
        )
        shown = via_http["closed"][label][metric]
        assert (shown["start"], shown["end"]) == (start / 1_000_000, (start + size) / 1_000_000)
        assert shown["count"] == expected.windows[(device, metric, label, start)]["count"]
    # Every sink ok, none with a refused output; the same in the Prometheus metrics.
    health = worker.health() or {}
    assert {name: (s["state"], s["dead_letters"]) for name, s in health["sinks"].items()} == {
        "kafka": ("ok", 0),
        "redis-latest": ("ok", 0),
        "redis": ("ok", 0),
        "influx": (influx, 0),
        "history": ("ok", 0),
        "influx-stats": (influx, 0),
        "alerts": ("ok", 0),
        "influx-alerts": ("ok", 0),
        "alert-history": ("ok", 0),
    }
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics") as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        metrics = response.read().decode()
    for name, state in (
        ("kafka", "ok"),
        ("redis-latest", "ok"),
        ("redis", "ok"),
        ("influx", influx),
        ("history", "ok"),
        ("influx-stats", influx),
        ("alerts", "ok"),
        ("influx-alerts", "ok"),
        ("alert-history", "ok"),
    ):
        assert f'pulse_sink_state{{sink="{name}",state="{state}"}} 1.0' in metrics
        assert f'pulse_output_dead_letters_total{{sink="{name}"}} 0.0' in metrics
    label = sorted(expected.window_sizes)[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/api/top/{label}/{metric}") as resp:
        top = json.loads(resp.read())["devices"]
    means: dict[str, tuple[int, float]] = {}
    for (d, m, lab, start), agg in expected.windows.items():
        if (m, lab) == (metric, label) and start >= means.get(d, (-1, 0))[0]:
            means[d] = (start, agg["mean"])
    ranked = sorted(((mean, d) for d, (_, mean) in means.items()), reverse=True)
    assert [(row["device"], row["mean"]) for row in top] == [(d, m) for m, d in ranked][:10]


def assert_dead_letter_counts(client: SyncRedis, prefix: str, expected: Expected) -> None:
    """The dead-letter monitor agent (a Faust agent) counts the DLQ by reason."""
    wanted = dict(Counter(expected.dead_letters.values()))
    deadline = time.monotonic() + 30
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        raw = _hash(client, f"{prefix}:dlq:counts")
        counts = {k.decode(): int(v) for k, v in raw.items()}
        if counts == wanted:
            return
        time.sleep(0.3)
    assert counts == wanted


def assert_influx(influx_url: str, prefix: str, expected: Expected) -> None:
    wanted: dict[tuple[tuple[str, str], ...], dict[int, float]] = {}
    for (device, metric, label, start), agg in expected.windows.items():
        for name in FIELDS:
            series = {
                "__name__": f"{metric}_{name}",
                "device": device,
                "window": label,
                **agg["tags"],
            }
            wanted.setdefault(tuple(sorted(series.items())), {})[start // 1000] = float(agg[name])
    match = f'{{__name__=~"(temperature|humidity)_.*",device=~"{prefix}-.*"}}'
    found = victoria.wait_for_points(influx_url, match, sum(len(v) for v in wanted.values()))
    assert set(found) == set(wanted)
    for labels, points in wanted.items():
        assert set(found[labels]) == set(points), labels
        name = dict(labels)["__name__"].rsplit("_", 1)[1]
        rel = QUANTILE_ACCURACY + 1e-9 if name in ("p50", "p95", "p99") else 1e-11
        for ts, value in points.items():
            # VictoriaMetrics keeps 12 significant digits; the exact text sent is unit-tested.
            assert found[labels][ts] == pytest.approx(value, rel=rel, abs=1e-9), (labels, ts)
