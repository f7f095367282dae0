"""Every Redis connection Pulse makes, over TLS to a real redis-server that speaks only TLS and
requires a client certificate and a password (``secured_redis``, tests/helpers/secured_redis.py):
the sink's own connection and redis-py's (``pulse state``, the HTTP API, the dead-letter
monitor). What Pulse writes is read back with a redis-py client of the test's own making; a
wrong CA, a missing client certificate or a wrong password is refused with a message that says
which, never with the password. The worker over TLS: tests/integration/test_secrets.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from models.outputs import Latest
from pulse.cli import main
from pulse.live_state import device_state
from pulse.redis_clients import RedisConnectError, check_connection, redis_client, resp_options
from pulse.settings import Settings
from pulse.sinks._base import FlushBatch
from pulse.sinks._resp import RedisRefused, RespPipeline, pack
from pulse.sinks.redis import RedisSink
from tests.helpers.secured_redis import NO_CLIENT_CERTIFICATE, SecuredRedis

S = 1_000_000


def tls_env(redis: SecuredRedis, tmp_path: Path, prefix: str) -> dict[str, str]:
    """The ``PULSE_REDIS_*`` of a client that may connect: password file, CA, certificate."""
    password = tmp_path / "redis-password"
    password.write_text(redis.password + "\n")
    return {
        "PULSE_REDIS_URL": redis.url,
        "PULSE_REDIS_PASSWORD_FILE": str(password),
        "PULSE_REDIS_SSL_CAFILE": str(redis.ca),
        "PULSE_REDIS_SSL_CERTFILE": str(redis.client.cert),
        "PULSE_REDIS_SSL_KEYFILE": str(redis.client.key),
        "PULSE_REDIS_PREFIX": prefix,
    }


def test_the_sink_and_redis_py_connect_over_tls_with_a_client_certificate(
    secured_redis: SecuredRedis, tmp_path: Path, topic_prefix: str
) -> None:
    settings = Settings.from_env(tls_env(secured_redis, tmp_path, topic_prefix))
    batch = FlushBatch(
        latest=[
            Latest("dev-1", "temperature", 1_700_000_000 * S, 21.5, 7),
            Latest("dev-1", "humidity", 1_700_000_001_250_000, 40.125, 8),
        ]
    )

    async def write_then_read() -> dict[str, Any]:
        sink = RedisSink(settings.redis_url, topic_prefix, 600, **resp_options(settings))
        try:
            await sink.write(batch)
        finally:
            await sink.stop()
        client = redis_client(settings)
        try:
            return await device_state(client, settings, "dev-1")
        finally:
            await client.aclose()

    via_pulse = asyncio.run(write_then_read())
    reader = secured_redis.reader()
    key = f"{topic_prefix}:device:dev-1"
    assert reader.hgetall(key) == {
        b"temperature": b"21.5",
        b"temperature:ts": b"1700000000",
        b"temperature:v": b"1700000000000000:7",
        b"humidity": b"40.125",
        b"humidity:ts": b"1700000001.25",
        b"humidity:v": b"1700000001250000:8",
    }
    assert 0 < reader.ttl(key) <= 600
    assert via_pulse == {
        "device": "dev-1",
        "latest": {
            "humidity": {"value": 40.125, "ts": 1700000001.25},
            "temperature": {"value": 21.5, "ts": 1700000000},
        },
        "open": {},
        "closed": {},
        "sliding": {},
    }


def test_pulse_state_reads_over_tls(
    secured_redis: SecuredRedis, tmp_path: Path, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = secured_redis.reader()
    reader.hset(f"{topic_prefix}:device:dev-9", mapping={"t": "1.5", "t:ts": "12"})
    for name, value in tls_env(secured_redis, tmp_path, topic_prefix).items():
        monkeypatch.setenv(name, value)
    shown = CliRunner().invoke(main, ["state", "dev-9", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output) == {
        "device": "dev-9",
        "latest": {"t": {"value": 1.5, "ts": 12}},
        "open": {},
        "closed": {},
        "sliding": {},
    }


REFUSALS: dict[str, tuple[dict[str, str], str | tuple[str, ...]]] = {
    "CA that did not sign the server's certificate": (
        {"PULSE_REDIS_SSL_CAFILE": "{other_ca}"},
        "TLS certificate verify failed: self-signed certificate in certificate chain (the "
        "server's certificate is not signed by a CA in PULSE_REDIS_SSL_CAFILE, or not for this "
        "host)",
    ),
    "no CA (the system's)": (
        {"PULSE_REDIS_SSL_CAFILE": ""},
        "TLS certificate verify failed: self-signed certificate in certificate chain (the "
        "server's certificate is not signed by a CA in PULSE_REDIS_SSL_CAFILE, or not for this "
        "host)",
    ),
    "no client certificate": (
        {"PULSE_REDIS_SSL_CERTFILE": "", "PULSE_REDIS_SSL_KEYFILE": ""},
        NO_CLIENT_CERTIFICATE,
    ),
    "wrong password": (
        {"PULSE_REDIS_PASSWORD_FILE": "{wrong_password}"},
        "WRONGPASS invalid username-password pair or user is disabled. (check the user and "
        "password: PULSE_REDIS_URL, PULSE_REDIS_PASSWORD_FILE)",
    ),
    "no password": (
        {"PULSE_REDIS_PASSWORD_FILE": ""},
        "NOAUTH Authentication required. (Redis wants a password: set it in PULSE_REDIS_URL or "
        "PULSE_REDIS_PASSWORD_FILE)",
    ),
    "redis:// to a port that speaks TLS": (
        {
            "PULSE_REDIS_URL": "{plain_url}",
            "PULSE_REDIS_SSL_CAFILE": "",
            "PULSE_REDIS_SSL_CERTFILE": "",
            "PULSE_REDIS_SSL_KEYFILE": "",
        },
        "Redis closed the connection during the TLS handshake or the first command: check "
        "whether this port speaks TLS (then use a rediss:// URL)",
    ),
}


def refused_env(
    redis: SecuredRedis, tmp_path: Path, prefix: str, changes: dict[str, str]
) -> dict[str, str]:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("wrong-Pa55-0b1c\n")
    places = {
        "{other_ca}": str(redis.other_ca),
        "{wrong_password}": str(wrong),
        "{plain_url}": redis.url.replace("rediss://", "redis://"),
    }
    env = tls_env(redis, tmp_path, prefix)
    env.update({name: places.get(value, value) for name, value in changes.items()})
    return env


@pytest.mark.parametrize("refusal", sorted(REFUSALS))
def test_a_refused_connection_says_why_without_the_password(
    secured_redis: SecuredRedis,
    tmp_path: Path,
    topic_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    refusal: str,
) -> None:
    changes, problem = REFUSALS[refusal]
    settings = Settings.from_env(refused_env(secured_redis, tmp_path, topic_prefix, changes))
    with pytest.raises(RedisConnectError) as raised:
        asyncio.run(check_connection(settings, timeout=10))
    message = str(raised.value)
    assert message.startswith("cannot connect to Redis (")
    said = message.rpartition(f"): 127.0.0.1:{secured_redis.port}: ")[2]
    assert said in (problem if isinstance(problem, tuple) else (problem,))
    assert secured_redis.password not in message
    # pulse state checks the same way before it reads.
    for name, value in refused_env(secured_redis, tmp_path, topic_prefix, changes).items():
        monkeypatch.setenv(name, value)
    shown = CliRunner().invoke(main, ["state", "dev-1"])
    assert shown.exit_code == 1
    # The same message, but for the server's answer: TLS 1.3 sends its refusal after the
    # handshake, so which of the problem's texts a connection meets is a matter of timing.
    head, _, _ = message.rpartition(said)
    assert shown.output.startswith(f"Error: {head}") and shown.output.endswith("\n")
    assert shown.output[len(f"Error: {head}") : -1] in (
        problem if isinstance(problem, tuple) else (problem,)
    )


def test_a_redis_that_cannot_be_reached_is_left_to_the_sink(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listens: not a refusal of the settings, so start-up goes on (the sink waits)."""
    from pulse.local.stack import free_port

    port = free_port()
    settings = Settings.from_env({"PULSE_REDIS_URL": f"rediss://:pw-Not-Sh0wn@127.0.0.1:{port}/0"})
    with caplog.at_level(logging.WARNING, logger="pulse.redis_clients"):
        asyncio.run(check_connection(settings, timeout=5))
    assert [r.getMessage() for r in caplog.records] == [
        f"could not reach Redis at 127.0.0.1:{port}: ConnectionRefusedError: [Errno 111] "
        f"Connect call failed ('127.0.0.1', {port})"
    ]


def test_a_refused_password_is_retried_like_a_failed_connection(
    secured_redis: SecuredRedis,
    tmp_path: Path,
    topic_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The sink's connection: a wrong password is a :class:`RedisRefused`, which the sink
    reports as a refusal of the client (logged once, with why, and in its health) and retries;
    it never stops the worker."""
    env = refused_env(
        secured_redis, tmp_path, topic_prefix, {"PULSE_REDIS_PASSWORD_FILE": "{wrong_password}"}
    )
    settings = Settings.from_env(env)

    async def connect() -> None:
        pipeline = RespPipeline(settings.redis_url, 10, [pack("PING")], **resp_options(settings))
        try:
            await pipeline.execute([pack("PING")])
        finally:
            await pipeline.close()

    with pytest.raises(RedisRefused) as raised:
        asyncio.run(connect())
    assert str(raised.value) == (
        "Redis refused the connection: WRONGPASS invalid username-password pair or user is "
        "disabled. (check the user and password: PULSE_REDIS_URL, PULSE_REDIS_PASSWORD_FILE)"
    )

    async def write_a_while() -> None:
        sink = RedisSink(settings.redis_url, topic_prefix, 600, **resp_options(settings))
        write = asyncio.ensure_future(
            sink.write(FlushBatch(latest=[Latest("dev-1", "t", 1 * S, 1.0, 1)]))
        )
        for _ in range(100):  # until it has tried three times, at most 10 s
            if len(tries(logging.DEBUG)) >= 3:
                break
            await asyncio.sleep(0.1)
        assert not write.done()  # still trying
        assert (sink.health.state, sink.health.reason) == ("refused_by_target", str(raised.value))
        write.cancel()
        await sink.stop()

    def tries(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == level]

    with caplog.at_level(logging.DEBUG, logger="pulse.sinks"):
        asyncio.run(write_a_while())
    assert len(tries(logging.DEBUG)) >= 3
    assert all(
        message.startswith(f"redis write failed (try {n}), retrying in ")
        for n, message in enumerate(tries(logging.DEBUG), 1)
    )
    assert tries(logging.ERROR) == [
        "redis sink: refused by its target (fix the configuration or the target; outputs are "
        f"kept and retried): {raised.value}"
    ]
    assert secured_redis.reader().exists(f"{topic_prefix}:device:dev-1") == 0
