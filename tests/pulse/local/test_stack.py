"""The embedded local stack against real processes: start, answer, reuse, stop, CLI."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from click.testing import CliRunner
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS

from pulse.local.cli import stack as stack_cli
from pulse.local.stack import (
    SERVER_NAMES,
    Endpoints,
    LocalStack,
    ServerNotInstalled,
    StackError,
    free_port,
    kafka_answers,
    postgres_data_dir,
    redis_answers,
    start_redis,
    start_victoria,
    victoria_answers,
)
from tests.helpers import victoria

pytestmark = pytest.mark.integration

_PREFIXES = pytest.StashKey[set[str]]()


def _bootstrap(broker: str) -> str:
    return broker.removeprefix("kafka://")


async def _kafka_round_trip(broker: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=_bootstrap(broker))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=_bootstrap(broker))
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"reading-1", key=b"device-1")
    finally:
        await producer.stop()
    # No group: a consumer group's join waits half its session timeout on tansu.
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=_bootstrap(broker), group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=10_000, max_records=10)
    finally:
        await consumer.stop()
    return [(record.key, record.value) for records in batches.values() for record in records]


def _pid_exists(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture
def local_stack(tmp_path: Path) -> Iterator[LocalStack]:
    local = LocalStack(tmp_path / "stack", default_ports=False)
    yield local
    local.down()
    shutil.rmtree(postgres_data_dir(local.state_dir / "postgres"), ignore_errors=True)


def test_local_stack_serves_kafka_redis_influx_and_postgres_and_stops(
    local_stack: LocalStack,
) -> None:
    endpoints = local_stack.up()
    ports = {name: info["port"] for name, info in local_stack.status().items()}
    assert endpoints == Endpoints(
        broker=f"kafka://127.0.0.1:{ports['broker']}",
        redis_url=f"redis://127.0.0.1:{ports['redis']}/0",
        influx_url=f"http://127.0.0.1:{ports['influx']}",
        postgres_url=f"postgresql://pulse@127.0.0.1:{ports['postgres']}/pulse",
    )
    assert endpoints.env() == {
        "PULSE_BROKER": endpoints.broker,
        "PULSE_REDIS_URL": endpoints.redis_url,
        "PULSE_INFLUX_URL": endpoints.influx_url,
        "PULSE_HISTORY_STORE": "victoria",
        "PULSE_POSTGRES_URL": endpoints.postgres_url,
    }

    # PostgreSQL: a row written and read back in the stack's database.
    with psycopg.connect(endpoints.postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE stack_check (n integer)")
        conn.execute("INSERT INTO stack_check VALUES (42)")
        assert conn.execute("SELECT n, current_database() FROM stack_check").fetchall() == [
            (42, "pulse")
        ]

    # Kafka: one record through a real producer and consumer.
    records = asyncio.run(_kafka_round_trip(endpoints.broker, "stack-check"))
    assert records == [(b"device-1", b"reading-1")]

    # Redis: SET then GET.
    client = redis.Redis.from_url(endpoints.redis_url)
    try:
        assert client.set("pulse:stack-check", "42") is True
        assert client.get("pulse:stack-check") == b"42"
    finally:
        client.close()

    # VictoriaMetrics: one InfluxDB v2 point at ms precision, read back exactly.
    timestamp_ms = int(time.time() * 1000)
    with InfluxDBClient(url=endpoints.influx_url, token="pulse-dev-token", org="pulse") as influx:
        influx.write_api(write_options=SYNCHRONOUS).write(
            bucket="pulse",
            record=f"stack_check,device=d1 mean=21.5 {timestamp_ms}",
            write_precision=WritePrecision.MS,
        )
    # A new series becomes visible after about a second (tests/helpers/victoria.py): poll.
    deadline = time.monotonic() + 15
    exported = victoria.export(endpoints.influx_url, '{__name__="stack_check_mean"}')
    while not exported and time.monotonic() < deadline:
        time.sleep(0.25)
        exported = victoria.export(endpoints.influx_url, '{__name__="stack_check_mean"}')
    assert exported == [
        {
            "metric": {"__name__": "stack_check_mean", "device": "d1"},
            "values": [21.5],
            "timestamps": [timestamp_ms],
        }
    ]

    status = local_stack.status()
    assert {name: (info["alive"], info["answering"]) for name, info in status.items()} == {
        name: (True, True) for name in SERVER_NAMES
    }
    assert {name: info["kind"] for name, info in status.items()} == {
        "broker": "tansu",
        "redis": "redis",
        "influx": "influx",
        "postgres": "postgres",
    }
    pids = [info["pid"] for info in status.values()]

    local_stack.down()
    assert not local_stack.record_path.exists()
    assert [_pid_exists(pid) for pid in pids] == [False, False, False, False]
    assert local_stack.status() == {
        name: {
            "kind": None,
            "pid": None,
            "port": None,
            "url": None,
            "alive": False,
            "answering": False,
        }
        for name in SERVER_NAMES
    }


def test_up_with_apache_kafka_replaces_the_broker_and_keeps_the_others(
    local_stack: LocalStack,
) -> None:
    local_stack.up()
    before = local_stack.status()
    endpoints = local_stack.up("kafka")
    after = local_stack.status()
    assert after["broker"]["kind"] == "kafka" and after["broker"]["answering"]
    assert after["broker"]["pid"] != before["broker"]["pid"]
    assert not _pid_exists(before["broker"]["pid"])  # the tansu it replaced is stopped
    for name in ("redis", "influx", "postgres"):
        assert after[name]["pid"] == before[name]["pid"]  # untouched
    assert [server.name for server in local_stack.last_started] == ["broker"]
    ready = local_stack.last_started[0].ready_seconds
    assert ready is not None and 0 < ready < 120
    records = asyncio.run(_kafka_round_trip(endpoints.broker, "stack-check-kafka"))
    assert records == [(b"device-1", b"reading-1")]
    # A second `up` with the same broker keeps it, as for the other servers.
    local_stack.up("kafka")
    assert local_stack.status()["broker"]["pid"] == after["broker"]["pid"]
    assert local_stack.last_started == []


def test_second_up_returns_the_running_stack(local_stack: LocalStack) -> None:
    first = local_stack.up()
    first_status = local_stack.status()
    # A separate object, as a second `pulse stack up` process would build.
    again = LocalStack(local_stack.state_dir, default_ports=False)
    assert again.up() == first
    assert again.status() == first_status


def test_up_restarts_a_server_that_died(local_stack: LocalStack) -> None:
    first = local_stack.up()
    before = local_stack.status()
    os.kill(before["redis"]["pid"], 9)
    deadline = time.monotonic() + 5
    while local_stack.status()["redis"]["alive"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert local_stack.status()["redis"]["alive"] is False

    assert local_stack.up() == first  # its old port was free again, so it is reused
    after = local_stack.status()
    assert after["redis"]["pid"] != before["redis"]["pid"]
    assert after["redis"]["answering"] is True
    assert (after["broker"], after["influx"]) == (before["broker"], before["influx"])


def test_start_on_a_taken_port_fails_loudly(tmp_path: Path) -> None:
    taken = start_redis(tmp_path)
    try:
        with pytest.raises(StackError, match=rf"port 127\.0\.0\.1:{taken.port} is already in use"):
            start_redis(tmp_path / "second", port=taken.port)
    finally:
        taken.stop()


def test_cli_up_prints_exports_status_and_down(tmp_path: Path) -> None:
    runner = CliRunner()
    state_dir = tmp_path / "cli-stack"
    up = runner.invoke(stack_cli, ["up", "--state-dir", str(state_dir), "--free-ports"])
    try:
        assert up.exit_code == 0, up.output
        assert all(line.startswith("export PULSE_") for line in up.stdout.splitlines())
        # What `eval "$(pulse stack up)"` does in a real shell.
        shell = subprocess.run(
            ["bash", "-c", 'eval "$1" && env', "bash", up.stdout],
            env={"PATH": os.environ["PATH"]},
            capture_output=True,
            text=True,
            check=True,
        )
        exported = dict(
            line.split("=", 1) for line in shell.stdout.splitlines() if line.startswith("PULSE_")
        )
        recorded = LocalStack(state_dir).status()
        assert exported == {
            "PULSE_BROKER": f"kafka://127.0.0.1:{recorded['broker']['port']}",
            "PULSE_REDIS_URL": f"redis://127.0.0.1:{recorded['redis']['port']}/0",
            "PULSE_INFLUX_URL": f"http://127.0.0.1:{recorded['influx']['port']}",
            "PULSE_HISTORY_STORE": "victoria",
            "PULSE_POSTGRES_URL": (
                f"postgresql://pulse@127.0.0.1:{recorded['postgres']['port']}/pulse"
            ),
        }
        assert "stop with: pulse stack down" in up.stderr

        status = runner.invoke(stack_cli, ["status", "--state-dir", str(state_dir)])
        assert status.exit_code == 0, status.output
        assert [line.split()[:3] for line in status.stdout.splitlines()] == [
            ["broker", "tansu", "up"],
            ["redis", "redis", "up"],
            ["influx", "influx", "up"],
            ["postgres", "postgres", "up"],
        ]
        assert "broker: tansu kafka://127.0.0.1:" in up.stderr and "ready in" in up.stderr
    finally:
        down = runner.invoke(stack_cli, ["down", "--state-dir", str(state_dir)])
        shutil.rmtree(postgres_data_dir(state_dir / "postgres"), ignore_errors=True)
    assert down.exit_code == 0, down.output
    status = runner.invoke(stack_cli, ["status", "--state-dir", str(state_dir)])
    assert status.exit_code == 1
    assert [line.split() for line in status.stdout.splitlines()] == [
        ["broker", "-", "stopped", "pid=-", "-"],
        ["redis", "-", "stopped", "pid=-", "-"],
        ["influx", "-", "stopped", "pid=-", "-"],
        ["postgres", "-", "stopped", "pid=-", "-"],
    ]


def test_free_port_is_bindable(tmp_path: Path) -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    redis_server = start_redis(tmp_path, port)
    try:
        assert redis_server.port == port and redis_server.answering()
    finally:
        redis_server.stop()


def test_cli_up_in_a_process_that_exits_leaves_the_servers_running(tmp_path: Path) -> None:
    state_dir = tmp_path / "detached"
    command = [sys.executable, "-c", "from pulse.local.cli import stack; stack()"]
    options = ["--state-dir", str(state_dir)]
    # Its own session and process group stand in for a terminal and its shell.
    up = subprocess.Popen(
        [*command, "up", "--free-ports", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _, up_stderr = up.communicate(timeout=60)
    assert up.returncode == 0, up_stderr
    started = LocalStack(state_dir).status()
    try:
        # Closing a terminal hangs up its process group (here up's own, led by up.pid): the
        # servers must not be in it. An empty group is the expected outcome.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGHUP)
        time.sleep(0.2)
        status = subprocess.run([*command, "status", *options], capture_output=True, text=True)
        assert status.returncode == 0, status.stdout + status.stderr
        assert LocalStack(state_dir).status() == started
    finally:
        down = subprocess.run([*command, "down", *options], capture_output=True, text=True)
        shutil.rmtree(postgres_data_dir(state_dir / "postgres"), ignore_errors=True)
    assert down.returncode == 0, down.stderr
    pids = [info["pid"] for info in started.values()]
    deadline = time.monotonic() + 5
    # Not our children: init reaps them, shortly after they exit.
    while any(_pid_exists(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [_pid_exists(pid) for pid in pids] == [False, False, False, False]


def test_session_fixtures_are_real_servers(
    broker: str, redis_url: str, influx_url: str, topic_prefix: str
) -> None:
    broker_port = int(broker.removeprefix("kafka://127.0.0.1:"))
    redis_port = int(redis_url.removeprefix("redis://127.0.0.1:").removesuffix("/0"))
    influx_port = int(influx_url.removeprefix("http://127.0.0.1:"))
    assert (
        kafka_answers(broker_port),
        redis_answers(redis_port),
        victoria_answers(influx_port),
    ) == (
        True,
        True,
        True,
    )
    assert topic_prefix.startswith("t") and len(topic_prefix) <= 12


def test_topic_prefix_differs_between_tests(
    topic_prefix: str, request: pytest.FixtureRequest
) -> None:
    seen = request.config.stash.setdefault(_PREFIXES, set())
    assert topic_prefix not in seen
    seen.add(topic_prefix)


def test_missing_server_binary_says_to_run_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(ServerNotInstalled, match=r"redis-server .*run scripts/setup"):
        start_redis(tmp_path)
    with pytest.raises(ServerNotInstalled, match=r"victoria-metrics .*run scripts/setup"):
        start_victoria(tmp_path)


def test_stop_with_parent_server_dies_when_its_starter_is_killed(tmp_path: Path) -> None:
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from pulse.local.stack import start_redis;"
            "print(start_redis(Path(sys.argv[1]), stop_with_parent=True).pid, flush=True);"
            "time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    with starter:
        try:
            assert starter.stdout is not None
            redis_pid = int(starter.stdout.readline())
            assert _pid_exists(redis_pid)
        finally:
            starter.kill()  # SIGKILL: no finaliser of the starter runs
    deadline = time.monotonic() + 5
    while _pid_exists(redis_pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _pid_exists(redis_pid) is False


def test_a_server_starts_in_a_relative_work_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `pulse stack up` without --state-dir uses .pulse/stack, relative to where it runs; the
    # server runs inside its work directory, so its paths must not be relative to it.
    monkeypatch.chdir(tmp_path)
    server = start_redis(Path(".pulse") / "stack")
    try:
        assert server.work_dir == tmp_path / ".pulse" / "stack" / "redis"
        assert redis.Redis(port=server.port).ping() is True
    finally:
        server.stop()
