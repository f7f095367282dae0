"""``pulse top`` and ``pulse watch`` against a real Redis filled by a real worker.

The worker consumes the pipeline's dataset until idle close has ended every window; the
commands' rows must then be what the reference computes and what the HTTP API (served by the
same worker, ``PULSE_WORKER_SERVES_API=true``) answers, and a bad parameter must stop them
with exit code 2 and the API's own message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from pulse.cli import watch_rows
from tests.helpers.worker import WorkerProcess
from tests.integration.test_pipeline import (
    GRACE_US,
    WINDOWS_US,
    pipeline_env,
    produce_dataset,
    wait_for_all_closed,
)
from tests.reference import Expected, compute

pytestmark = pytest.mark.integration


def pulse(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pulse", *args],
        env={**os.environ, **env, "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def api(worker: WorkerProcess, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def table_rows(text: str) -> list[list[str]]:
    """The header and rows of the rich table in ``text``, cell by cell."""
    return [
        [cell.strip() for cell in line.replace("┃", "│").strip("│").split("│")]
        for line in text.splitlines()
        if line.startswith(("│", "┃"))
    ]


def ranking(expected: Expected, label: str, metric: str, descending: bool) -> list[list[Any]]:
    """Devices by the mean of their newest closed ``label`` window of ``metric`` (ties: by
    name, in the order of the ranking, as Redis's sorted set has them)."""
    newest: dict[str, tuple[int, float]] = {}
    for (device, m, lab, start), agg in expected.windows.items():
        if (m, lab) == (metric, label) and start >= newest.get(device, (-1, 0.0))[0]:
            newest[device] = (start, agg["mean"])
    rows = sorted(((mean, device) for device, (_, mean) in newest.items()), reverse=descending)
    return [[device, mean] for mean, device in rows]


@pytest.fixture(scope="module")
def filled(
    tmp_path_factory: pytest.TempPathFactory, broker: str, redis_url: str, influx_url: str
) -> Any:
    """A worker (serving the API) that has processed the dataset and closed every window."""
    prefix = f"cv{os.getpid()}"
    env = pipeline_env(prefix, broker, redis_url, influx_url)
    env["PULSE_WORKER_SERVES_API"] = "true"
    records, ends = produce_dataset(broker, env["PULSE_TOPIC_READINGS"], prefix)
    expected = compute(records, WINDOWS_US, GRACE_US)
    worker = WorkerProcess(env, tmp_path_factory.mktemp("cli-views")).start()
    try:
        worker.wait_ready()
        worker.wait_caught_up(ends)
        client = redis.Redis.from_url(redis_url)
        series = {(d, m, label) for d, m, label, _ in expected.windows}
        wait_for_all_closed(client, prefix, len(series))
        yield env, worker, expected, client
    finally:
        assert worker.stop() == 0, worker.log_tail()


def test_top_shows_the_leaderboard_as_the_reference_and_the_api(filled: Any) -> None:
    env, worker, expected, _ = filled
    for order, n in (("desc", "5"), ("asc", "3")):
        result = pulse(env, "top", "10s", "temperature", "-n", n, "--order", order, "--json")
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        assert api(worker, f"/api/top/10s/temperature?n={n}&order={order}") == (200, document)
        want = ranking(expected, "10s", "temperature", order == "desc")[: int(n)]
        assert document == {
            "window": "10s",
            "metric": "temperature",
            "order": order,
            "devices": [{"device": device, "mean": mean} for device, mean in want],
        }
    # The table: one row per device, rank, name and mean as the JSON has them.
    result = pulse(env, "top", "1m", "humidity", "-n", "4")
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    want = ranking(expected, "1m", "humidity", True)[:4]
    assert rows == [["#", "device", "mean"]] + [
        [str(rank), device, repr(mean)] for rank, (device, mean) in enumerate(want, 1)
    ]


def test_top_without_a_closed_window_says_so(filled: Any) -> None:
    env, worker, _, _ = filled
    result = pulse(env, "top", "10s", "pressure", "--json")
    status, answer = api(worker, "/api/top/10s/pressure")
    assert (result.returncode, status) == (1, 404)
    assert result.stderr.strip() == f"Error: {answer['error']}"


@pytest.mark.parametrize(
    ("args", "path"),
    [
        (["top", "7s", "temperature"], "/api/top/7s/temperature"),
        (["top", "10s", "bad:metric"], "/api/top/10s/bad:metric"),
        (["top", "10s", "temperature", "-n", "0"], "/api/top/10s/temperature?n=0"),
        (["top", "10s", "temperature", "-n", "ten"], "/api/top/10s/temperature?n=ten"),
        (["watch", "dev 1", "--refreshes", "1"], "/api/devices/dev%201"),
        (["watch", "-n", "1001", "--refreshes", "1"], "/api/devices?limit=1001"),
    ],
)
def test_a_bad_parameter_exits_2_with_the_api_message(
    filled: Any, args: list[str], path: str
) -> None:
    env, worker, _, _ = filled
    result = pulse(env, *args)
    status, answer = api(worker, path)
    assert status in (400, 404)
    message = answer["error"]
    if path.startswith("/api/devices?"):
        message = message.replace("limit:", "n:")  # the option is -n, the API's limit
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.strip() == f"Error: {message}"


def test_watch_json_shows_each_device_as_the_api_does(filled: Any) -> None:
    env, worker, expected, _ = filled
    devices = sorted({device for device, _ in expected.latest})[:3]
    result = pulse(env, "watch", *devices, "--json", "--refreshes", "2", "--interval", "0.2")
    assert result.returncode == 0, result.stderr
    documents = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(documents) == 2
    for document in documents:
        assert [state["device"] for state in document["devices"]] == devices
        for state in document["devices"]:
            assert api(worker, f"/api/devices/{state['device']}") == (200, state)
            latest = {
                metric: {"value": value, "ts": t_us / 1_000_000}
                for (device, metric), (t_us, value) in expected.latest.items()
                if device == state["device"]
            }
            assert state["latest"] == latest
            assert state["open"] == {}  # every window closed


def test_watch_without_devices_shows_the_most_recently_seen(filled: Any) -> None:
    env, _, expected, client = filled
    result = pulse(env, "watch", "-n", "4", "--json", "--refreshes", "1")
    assert result.returncode == 0, result.stderr
    (document,) = [json.loads(line) for line in result.stdout.splitlines()]
    newest: dict[str, int] = {}
    for (device, _), (t_us, _) in expected.latest.items():
        newest[device] = max(newest.get(device, 0), t_us)
    by_time = sorted(newest.items(), key=lambda item: (item[1], item[0]), reverse=True)
    assert [state["device"] for state in document["devices"]] == [d for d, _ in by_time[:4]]
    prefix = env["PULSE_REDIS_PREFIX"]
    indexed = client.zrevrange(f"{prefix}:devices", 0, 3)
    assert [d.decode() for d in indexed] == [d for d, _ in by_time[:4]]


def test_watch_table_rows(filled: Any) -> None:
    env, worker, expected, _ = filled
    device = sorted({device for device, _ in expected.latest})[0]
    result = pulse(env, "watch", device, "nobody-here", "--refreshes", "1")
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    _, state = api(worker, f"/api/devices/{device}")
    nobody = {"device": "nobody-here", "latest": {}, "open": {}, "closed": {}, "sliding": {}}
    want = watch_rows({"time": 0, "devices": [state, nobody]}, ["10s", "1m"])
    header = ["device", "metric", "latest", "at", "10s open", "10s closed", "1m open", "1m closed"]
    assert rows == [header, *want]
    # Exact cells: the latest value and the last closed windows' count and mean.
    for row in want[:-1]:
        metric = row[1]
        t_us, value = expected.latest[(device, metric)]
        assert row[2] == repr(value)
        moment = datetime.fromtimestamp(t_us / 1_000_000, UTC)
        assert row[3] == moment.strftime("%H:%M:%S.") + f"{t_us // 1000 % 1000:03d}"
        for column, label in ((5, "10s"), (7, "1m")):
            start = max(
                s for d, m, lab, s in expected.windows if (d, m, lab) == (device, metric, label)
            )
            agg = expected.windows[(device, metric, label, start)]
            assert row[column] == f"{agg['count']} x {agg['mean']!r}", label
        assert row[4] == row[6] == "-"
    assert want[-1] == ["nobody-here", "-", "no live state", "-", "-", "-", "-", "-"]
