"""``pulse bridge`` and ``pulse produce --via redis`` as processes: health, metrics, the
max-lag report, a clean stop that hands the streams over at once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from pulse.bridge._redis import lease_key
from tests.helpers.bridge import (
    BridgeProcess,
    assert_exactly_once,
    bridge_env,
    stored_entries,
    wait_for,
)

pytestmark = pytest.mark.integration


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} not in /metrics"
    return float(found.group(1))


def test_bridge_process_health_metrics_and_stop(
    broker: str, redis_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = bridge_env(topic_prefix, broker, redis_url)
    env["PULSE_BRIDGE_MAX_LAG"] = "100"
    client = redis.Redis.from_url(redis_url)
    produce = [
        sys.executable,
        "-m",
        "pulse",
        "produce",
        "--via",
        "redis",
        "--devices",
        "30",
        "--count",
        "3000",
        "--rate",
        "0",
        "--streams",
        "3",
        "--start-ts",
        "1700000000",
    ]
    # Before any bridge runs: the streams hold 3,000 entries, over the max lag.
    done = subprocess.run(
        produce, env={**os.environ, **env}, capture_output=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"appended 3000 readings" in done.stderr
    streams = sorted(str(k, "utf-8") for k in client.scan_iter(f"{topic_prefix}:ingest:*"))
    assert streams == [f"{topic_prefix}:ingest:gw-{n}" for n in range(3)]
    appended: list[tuple[str, str]] = []
    for stream in streams:
        entries: list[tuple[bytes, object]] = client.xrange(stream)  # type: ignore[assignment]
        appended += [(stream, entry_id.decode()) for entry_id, _ in entries]
    assert len(appended) == 3000
    bridge = BridgeProcess(env, tmp_path).start()
    try:
        health = bridge.wait_ready()
        assert health["dependencies"]["redis"]["state"] == "ok"

        def moved() -> bool:
            health = bridge.health() or {}
            return bool(health.get("entries", {}).get("produced") == 3000)

        wait_for(moved, "3,000 entries produced")
        health = bridge.health() or {}
        assert health["bridges"] == 1
        assert set(health["streams"]) == set(streams)
        assert {s["phase"] for s in health["streams"].values()} == {"ready"}
        text = bridge.metrics()
        assert metric(text, 'pulse_bridge_entries_total{outcome="produced"}') == 3000
        assert metric(text, 'pulse_bridge_entries_total{outcome="dead_lettered"}') == 0
        assert metric(text, "pulse_bridge_streams_owned") == 3
        assert metric(text, 'pulse_sink_state{sink="bridge-kafka",state="ok"}') == 1
        wait_for(
            lambda: metric(bridge.metrics(), "pulse_bridge_streams_over_max_lag") == 0,
            "the backlog reported gone",
        )
        assert "more than PULSE_BRIDGE_MAX_LAG (100)" in bridge.log_tail(200)
        readings, letters = stored_entries(broker, env)
        assert_exactly_once(appended, readings, letters, set())
    finally:
        assert bridge.stop(signal.SIGTERM) == 0, bridge.log_tail()
    # Its leases released on the way out: another bridge takes the streams at once.
    assert [client.get(lease_key(s)) for s in streams] == [None, None, None]
    started = time.monotonic()
    second = BridgeProcess(env, tmp_path, "second").start()
    try:
        second.wait_ready()
        wait_for(lambda: len((second.health() or {}).get("streams", {})) == 3, "the streams taken")
        assert time.monotonic() - started < 20
    finally:
        assert second.stop() == 0, second.log_tail()
