"""Pulse on an Apache Kafka that requires authentication: SASL (PLAIN, SCRAM-SHA-512) and TLS.

One broker for the session (``secured_kafka``, tests/helpers/secured_kafka.py) has a
SASL_PLAINTEXT, a SASL_SSL and a mutual-TLS listener. A real ``pulse produce`` and a real
``pulse worker`` connect through them with ``PULSE_KAFKA_*`` settings; the outputs are read back
through the broker's PLAINTEXT listener and compared exactly with the reference computation.
With a wrong password or CA, or no client certificate, the worker and ``pulse produce`` stop at
once with a message naming the problem, and no log holds a password.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import redis

from pulse.kafka_clients import KafkaConnectError, check_connection
from pulse.producer import SyntheticReadings
from pulse.settings import Settings
from tests.helpers.secured_kafka import PLAIN_USER, SCRAM_USER, SecuredKafka
from tests.helpers.worker import WorkerProcess
from tests.integration.test_pipeline import (
    GRACE_US,
    WINDOWS_US,
    assert_aggregates_topic,
    assert_redis,
    pipeline_env,
    wait_for_all_closed,
)
from tests.reference import Record, Valid, compute

pytestmark = pytest.mark.integration

READINGS = SyntheticReadings(devices=4, count=400, seed=3, start_ts=1_700_000_000, step=0.5)
"""200 s of event time long past: the idle close ends every window."""
PASSWORDS = (PLAIN_USER[1], SCRAM_USER[1])
EXIT_TIMEOUT = 30.0
"""Seconds within which a worker that cannot connect must have exited."""


def connection_env(kafka: SecuredKafka, connection: str, tmp_path: Path) -> dict[str, str]:
    """``PULSE_BROKER`` and ``PULSE_KAFKA_*`` for one way of connecting to ``kafka``."""
    if connection == "SASL_PLAINTEXT SCRAM-SHA-512, password file":
        secret = tmp_path / "kafka-password"
        secret.write_text(SCRAM_USER[1] + "\n")
        return {
            "PULSE_BROKER": kafka.sasl_plaintext,
            "PULSE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "PULSE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "PULSE_KAFKA_SASL_USERNAME": SCRAM_USER[0],
            "PULSE_KAFKA_SASL_PASSWORD_FILE": str(secret),
        }
    if connection == "SASL_SSL PLAIN":
        return {
            "PULSE_BROKER": kafka.sasl_ssl,
            "PULSE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "PULSE_KAFKA_SASL_MECHANISM": "PLAIN",
            "PULSE_KAFKA_SASL_USERNAME": PLAIN_USER[0],
            "PULSE_KAFKA_SASL_PASSWORD": PLAIN_USER[1],
            "PULSE_KAFKA_SSL_CAFILE": str(kafka.ca),
        }
    assert connection == "SSL, client certificate"
    return {
        "PULSE_BROKER": kafka.mtls,
        "PULSE_KAFKA_SECURITY_PROTOCOL": "SSL",
        "PULSE_KAFKA_SSL_CAFILE": str(kafka.ca),
        "PULSE_KAFKA_SSL_CERTFILE": str(kafka.client.cert),
        "PULSE_KAFKA_SSL_KEYFILE": str(kafka.client.key),
    }


CONNECTIONS = (
    "SASL_PLAINTEXT SCRAM-SHA-512, password file",
    "SASL_SSL PLAIN",
    "SSL, client certificate",
)


def expected_outputs() -> tuple[list[Record], int]:
    """The reference's records for READINGS (event time only grows, so no reading is late
    whatever its partition) and the number of (device, metric, window) series."""
    records = []
    for offset, (_, value) in enumerate(READINGS):
        doc = orjson.loads(value)
        meaning = Valid(
            doc["device"], doc["metric"], doc["value"], round(doc["ts"] * 1_000_000), doc["tags"]
        )
        records.append(Record(0, offset, meaning))
    series = {(r.meaning.device, r.meaning.metric) for r in records if isinstance(r.meaning, Valid)}
    return records, len(series) * len(WINDOWS_US)


def pulse_produce(env: dict[str, str], work_dir: Path) -> subprocess.CompletedProcess[str]:
    """``pulse produce`` of READINGS with ``env``."""
    command = [
        sys.executable, "-m", "pulse", "produce",
        "--devices", str(READINGS.devices), "--count", str(READINGS.count),
        "--seed", str(READINGS.seed), "--start-ts", str(READINGS.start_ts),
        "--step", str(READINGS.step), "--rate", "0",
    ]  # fmt: skip
    return subprocess.run(
        command,
        env={**os.environ, **env},
        cwd=work_dir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("connection", CONNECTIONS)
def test_worker_processes_readings_over_an_authenticated_connection(
    secured_kafka: SecuredKafka,
    redis_url: str,
    influx_url: str,
    topic_prefix: str,
    tmp_path: Path,
    connection: str,
) -> None:
    env = {
        **pipeline_env(topic_prefix, secured_kafka.plaintext, redis_url, influx_url),
        **connection_env(secured_kafka, connection, tmp_path),
    }
    records, series = expected_outputs()
    expected = compute(records, WINDOWS_US, GRACE_US)
    # 4 devices x 2 metrics: 153 windows of 10 s (7 of the 160 got no reading), 32 of 1 min.
    assert len(expected.windows) == 185

    worker = WorkerProcess(env, tmp_path).start()
    try:
        worker.wait_ready()
        produced = pulse_produce(env, tmp_path)
        assert produced.returncode == 0, produced.stderr
        assert f"produced {READINGS.count} readings" in produced.stderr
        client = redis.Redis.from_url(redis_url)
        wait_for_all_closed(client, topic_prefix, series)
        # Read back through the PLAINTEXT listener: what the worker wrote over its own.
        assert_aggregates_topic(secured_kafka.plaintext, env, expected)
        assert_redis(client, topic_prefix, expected)
    finally:
        assert worker.stop() == 0, worker.log_tail()
    log = worker.log_path.read_text()
    assert not [p for p in PASSWORDS if p in log]
    assert not [p for p in PASSWORDS if p in produced.stdout + produced.stderr]


FAILURES = {
    "wrong password": (
        "SASL_PLAINTEXT SCRAM-SHA-512, password file",
        {"PULSE_KAFKA_SASL_PASSWORD_FILE": "", "PULSE_KAFKA_SASL_PASSWORD": "wrong-Secret-5b2d"},
        "authentication failed: Authentication failed during authentication due to invalid "
        "credentials with SASL mechanism SCRAM-SHA-512",
    ),
    "wrong PLAIN password over TLS": (
        "SASL_SSL PLAIN",
        {"PULSE_KAFKA_SASL_PASSWORD": "wrong-Secret-5b2d"},
        "authentication failed: Authentication failed: Invalid username or password",
    ),
    "CA that did not sign the broker's certificate": (
        "SASL_SSL PLAIN",
        {"PULSE_KAFKA_SSL_CAFILE": "other"},
        "TLS certificate verify failed: unable to get local issuer certificate",
    ),
    "no CA (the system's)": (
        "SSL, client certificate",
        {"PULSE_KAFKA_SSL_CAFILE": ""},
        "TLS certificate verify failed: unable to get local issuer certificate",
    ),
    "no client certificate": (
        "SSL, client certificate",
        {"PULSE_KAFKA_SSL_CERTFILE": "", "PULSE_KAFKA_SSL_KEYFILE": ""},
        "the broker closed the connection during the TLS handshake or the first request",
    ),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_worker_stops_with_a_clear_message_when_it_cannot_authenticate(
    secured_kafka: SecuredKafka,
    redis_url: str,
    influx_url: str,
    topic_prefix: str,
    tmp_path: Path,
    failure: str,
) -> None:
    connection, changes, problem = FAILURES[failure]
    env = {
        **pipeline_env(topic_prefix, secured_kafka.plaintext, redis_url, influx_url),
        **connection_env(secured_kafka, connection, tmp_path),
        **changes,
    }
    if env.get("PULSE_KAFKA_SSL_CAFILE") == "other":
        env["PULSE_KAFKA_SSL_CAFILE"] = str(secured_kafka.other_ca)
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
    server = env["PULSE_BROKER"].removeprefix("kafka://")
    assert log.startswith("Error: cannot connect to Kafka (")
    assert f"): {server}: {problem}" in log
    secrets = [*PASSWORDS, changes.get("PULSE_KAFKA_SASL_PASSWORD", PASSWORDS[0])]
    assert not [s for s in secrets if s in log]
    # pulse produce checks the same way.
    produced = pulse_produce(env, tmp_path)
    assert produced.returncode == 1
    assert f"): {server}: {problem}" in produced.stderr
    assert not [s for s in secrets if s in produced.stdout + produced.stderr]


@pytest.mark.parametrize(
    ("protocol", "mechanism", "user"),
    [
        pytest.param(protocol, mechanism, user, id=f"{protocol} {mechanism}")
        for protocol in ("SASL_PLAINTEXT", "SASL_SSL")
        for mechanism, user in (("PLAIN", PLAIN_USER), ("SCRAM-SHA-512", SCRAM_USER))
    ],
)
def test_each_sasl_mechanism_authenticates_over_each_protocol(
    secured_kafka: SecuredKafka, protocol: str, mechanism: str, user: tuple[str, str]
) -> None:
    """The connection every client makes, with the right and a wrong password."""
    env = {
        "PULSE_BROKER": secured_kafka.sasl_ssl
        if protocol == "SASL_SSL"
        else secured_kafka.sasl_plaintext,
        "PULSE_KAFKA_SECURITY_PROTOCOL": protocol,
        "PULSE_KAFKA_SASL_MECHANISM": mechanism,
        "PULSE_KAFKA_SASL_USERNAME": user[0],
        "PULSE_KAFKA_SASL_PASSWORD": user[1],
    }
    if protocol == "SASL_SSL":
        env["PULSE_KAFKA_SSL_CAFILE"] = str(secured_kafka.ca)
    asyncio.run(check_connection(Settings.from_env(env)))
    wrong = Settings.from_env({**env, "PULSE_KAFKA_SASL_PASSWORD": user[1] + "x"})
    with pytest.raises(KafkaConnectError, match="authentication failed") as raised:
        asyncio.run(check_connection(wrong))
    assert wrong.kafka_sasl_password not in str(raised.value)
