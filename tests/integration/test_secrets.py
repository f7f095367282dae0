"""A real worker with secrets: a Redis password and an InfluxDB token, from the environment or
from files, over TLS to Redis with a client certificate.

Redis is ``secured_redis`` (TLS only, client certificate and password required) and InfluxDB
``guarded_influx_url`` (a VictoriaMetrics that answers 401 to any token: the token is wrong).
The worker writes every output to Redis and the aggregates topic over its TLS connection, read
back with the test's own TLS client and compared exactly with the reference; it keeps running
while InfluxDB refuses the token and says so. Then the worker's log, ``pulse config`` (and
``--markdown``), ``pulse state`` and every web endpoint are searched for each secret: none may
appear. A wrong CA, a missing client certificate or a wrong password stops the worker at once
with a message saying which.

Redis over TLS does not depend on the broker: these run on tansu only.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.helpers import victoria
from tests.helpers.secured_redis import INFLUX_BASIC_AUTH, NO_CLIENT_CERTIFICATE, SecuredRedis
from tests.helpers.worker import WorkerProcess
from tests.integration.test_pipeline import (
    GRACE_US,
    WINDOWS_US,
    assert_aggregates_topic,
    assert_api_and_cli,
    assert_dead_letter_counts,
    assert_redis,
    pipeline_env,
    produce_dataset,
    wait_for_all_closed,
)
from tests.reference import compute
from tests.servers import SessionServers

pytestmark = pytest.mark.integration

TOKEN = "influx-Wr0ng-T0ken-c4a7"
EXIT_TIMEOUT = 30.0
"""Seconds within which a worker that Redis refuses must have exited."""
ENDPOINTS = (
    "/",
    "/health",
    "/health/live",
    "/api/devices/{device}",
    "/api/devices",
    "/api/top/10s/{metric}",
    "/api/dead-letters",
    "/api/openapi.json",
    "/metrics",
)


@pytest.fixture
def tansu(_session_servers: SessionServers) -> str:
    """``kafka://127.0.0.1:PORT`` of the session's tansu broker."""
    return _session_servers.get("broker").url


def secrets_env(redis: SecuredRedis, way: str, tmp_path: Path) -> dict[str, str]:
    """The Redis URL, TLS files, password and InfluxDB token, the secrets given ``way``."""
    env = {
        "PULSE_REDIS_SSL_CAFILE": str(redis.ca),
        "PULSE_REDIS_SSL_CERTFILE": str(redis.client.cert),
        "PULSE_REDIS_SSL_KEYFILE": str(redis.client.key),
    }
    if way == "environment":
        env["PULSE_REDIS_URL"] = redis.url_with_password()
        env["PULSE_INFLUX_TOKEN"] = TOKEN
        return env
    assert way == "files"
    password, token = tmp_path / "redis-password", tmp_path / "influx-token"
    password.write_text(redis.password + "\n")
    token.write_text(TOKEN + "\n")
    env["PULSE_REDIS_URL"] = redis.url
    env["PULSE_REDIS_PASSWORD_FILE"] = str(password)
    env["PULSE_INFLUX_TOKEN_FILE"] = str(token)
    return env


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pulse", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def get(port: int, path: str) -> tuple[int, str]:
    """Status and body of ``GET path`` on a worker, whatever the status."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def stored_in_guarded_influx(influx_url: str, prefix: str) -> list[dict[str, Any]]:
    """What the guarded VictoriaMetrics holds for ``prefix``'s devices (read with its
    credentials)."""
    credentials = base64.b64encode(":".join(INFLUX_BASIC_AUTH).encode()).decode()
    headers = {"Authorization": f"Basic {credentials}"}
    return victoria.export(influx_url, f'{{device=~"{prefix}-.*"}}', headers)


def wait_for_log(worker: WorkerProcess, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in worker.log_path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise AssertionError(f"not logged: {text!r}\n{worker.log_tail()}")
        time.sleep(0.3)


@pytest.mark.parametrize("way", ["environment", "files"])
def test_a_worker_with_secrets_shows_none_of_them(
    secured_redis: SecuredRedis,
    guarded_influx_url: str,
    tansu: str,
    topic_prefix: str,
    tmp_path: Path,
    way: str,
) -> None:
    env = {
        **pipeline_env(topic_prefix, tansu, "", guarded_influx_url),
        **secrets_env(secured_redis, way, tmp_path),
    }
    secrets = (TOKEN, secured_redis.password, quote(secured_redis.password, safe=""))
    records, ends = produce_dataset(tansu, env["PULSE_TOPIC_READINGS"], topic_prefix)
    expected = compute(records, WINDOWS_US, GRACE_US)
    series = {(d, m, label) for d, m, label, _ in expected.windows}
    assert len(expected.windows) > 100

    worker = WorkerProcess(env, tmp_path).start()
    outputs: dict[str, str] = {}
    try:
        worker.wait_ready()
        worker.wait_caught_up(ends)
        reader = secured_redis.reader()  # TLS and the password, none of Pulse's code
        wait_for_all_closed(reader, topic_prefix, len(series))
        assert_aggregates_topic(tansu, env, expected)
        assert_redis(reader, topic_prefix, expected)
        # /state, /top and pulse state over TLS; InfluxDB refuses the token
        assert_api_and_cli(worker, env, expected, influx="refused_by_target")
        assert_dead_letter_counts(reader, topic_prefix, expected)  # the Faust agent's client
        # InfluxDB refuses the token: the worker says so, keeps it all, and keeps running.
        wait_for_log(
            worker,
            "HTTP 401 Unauthorized: InfluxDB refused the token of PULSE_INFLUX_TOKEN or "
            "PULSE_INFLUX_TOKEN_FILE: check that it is valid and may write to bucket 'pulse' "
            "of org 'pulse'",
        )
        assert stored_in_guarded_influx(guarded_influx_url, topic_prefix) == []
        assert (worker.health() or {}).get("ready") is True

        device, metric = sorted(expected.latest)[0]
        for path in ENDPOINTS:
            status, body = get(worker.port, path.format(device=device, metric=metric))
            outputs[f"GET {path}"] = body
            assert status == 200, (path, status, body)
        for args in (("config",), ("config", "--markdown"), ("state", device)):
            done = run_cli(env, *args)
            assert done.returncode == 0, done.stderr
            outputs[f"pulse {' '.join(args)}"] = done.stdout + done.stderr
    finally:
        # InfluxDB is off the flush path: a worker stops at once while it refuses the token
        # (the closed windows wait in the aggregates topic for the InfluxDB writer).
        assert worker.stop() == 0, worker.log_tail()
    outputs["worker log"] = worker.log_path.read_text(errors="replace")

    config = outputs["pulse config"]
    port = secured_redis.port
    if way == "environment":
        assert f"PULSE_REDIS_URL=rediss://:<redacted>@127.0.0.1:{port}/0\n" in config
        assert "PULSE_INFLUX_TOKEN=<redacted>\n" in config
    else:
        assert f"PULSE_REDIS_URL=rediss://127.0.0.1:{port}/0\n" in config
        assert "PULSE_INFLUX_TOKEN=\n" in config
        assert f"PULSE_INFLUX_TOKEN_FILE={env['PULSE_INFLUX_TOKEN_FILE']}\n" in config
    assert f"device {device}\n" in outputs[f"pulse state {device}"]
    shown = {name: [s for s in secrets if s in text] for name, text in outputs.items()}
    assert shown == {name: [] for name in outputs}


REFUSALS = {
    "CA that did not sign the server's certificate": (
        {"PULSE_REDIS_SSL_CAFILE": "other"},
        (
            "TLS certificate verify failed: self-signed certificate in certificate chain (the "
            "server's certificate is not signed by a CA in PULSE_REDIS_SSL_CAFILE, or not for "
            "this host)",
        ),
    ),
    "no client certificate": (
        {"PULSE_REDIS_SSL_CERTFILE": "", "PULSE_REDIS_SSL_KEYFILE": ""},
        NO_CLIENT_CERTIFICATE,
    ),
    "wrong password": (
        {"PULSE_REDIS_URL": "wrong password"},
        (
            "WRONGPASS invalid username-password pair or user is disabled. (check the user and "
            "password: PULSE_REDIS_URL, PULSE_REDIS_PASSWORD_FILE)",
        ),
    ),
}


@pytest.mark.parametrize("refusal", sorted(REFUSALS))
def test_the_worker_stops_with_a_clear_message_when_redis_refuses_it(
    secured_redis: SecuredRedis,
    influx_url: str,
    tansu: str,
    topic_prefix: str,
    tmp_path: Path,
    refusal: str,
) -> None:
    changes, problem = REFUSALS[refusal]
    env = {
        **pipeline_env(topic_prefix, tansu, "", influx_url),
        **secrets_env(secured_redis, "environment", tmp_path),
        **changes,
    }
    if env["PULSE_REDIS_SSL_CAFILE"] == "other":
        env["PULSE_REDIS_SSL_CAFILE"] = str(secured_redis.other_ca)
    if env["PULSE_REDIS_URL"] == "wrong password":
        env["PULSE_REDIS_URL"] = secured_redis.url.replace("://", "://:wrong-Pa55-e3f0@")
    began = time.monotonic()
    worker = WorkerProcess(env, tmp_path).start()
    assert worker.process is not None
    try:
        returncode = worker.process.wait(EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        worker.stop()
        raise AssertionError(f"the worker still runs:\n{worker.log_tail()}") from None
    assert returncode == 1
    assert time.monotonic() - began < EXIT_TIMEOUT
    log = worker.log_path.read_text()
    assert log.startswith("Error: cannot connect to Redis (TLS, "), log
    assert [p for p in problem if f"): 127.0.0.1:{secured_redis.port}: {p}\n" in log] != [], log
    assert [s for s in (secured_redis.password, "wrong-Pa55-e3f0") if s in log] == []
