"""The InfluxDB token and the Redis password: from the environment or from a file, each way
checked, and never shown by anything Pulse prints (repr, ``pulse config``, error messages).

The Kafka SASL password, read the same way, is tested in test_kafka_security.py; the secrets
of a running worker, its CLI and its web endpoints in tests/integration/test_secrets.py.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import cast
from urllib.parse import quote

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from pulse.cli import main
from pulse.redis_clients import describe, redis_client, resp_options, tls_context
from pulse.settings import REDACTED, Settings, SettingsError
from pulse.sinks import influx
from pulse.sinks._retry import RefusedByTarget
from tests.helpers.tls import CertificateAuthority, Issued

TOKEN = "influx-T0ken-5e1b"
PASSWORD = "r3dis/Pa55+w@rd-77"
"""With characters a URL percent-encodes: both forms must stay hidden."""
IN_URL = quote(PASSWORD, safe="")
URL = f"rediss://pulse:{IN_URL}@redis.example.net:6380/2"
SECRETS = (TOKEN, PASSWORD, IN_URL)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("tls"), "unit-redis-ca")


@pytest.fixture(scope="module")
def client_cert(ca: CertificateAuthority) -> Issued:
    return ca.issue("unit-redis-client", server=False)


def secret_file(folder: Path, name: str, content: str) -> str:
    path = folder / name
    path.write_text(content)
    return str(path)


def test_the_influx_token_from_the_environment_is_taken_verbatim() -> None:
    settings = Settings.from_env({"PULSE_INFLUX_TOKEN": f" {TOKEN} "})
    assert settings.influx_token == f" {TOKEN} "
    assert Settings.from_env({}).influx_token == ""  # unset by default: no token is sent


def test_the_influx_token_from_a_file(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "token", f"{TOKEN}\n")
    settings = Settings.from_env({"PULSE_INFLUX_TOKEN_FILE": path})
    assert settings.influx_token == TOKEN  # one trailing newline dropped
    # The environment that reproduces the settings keeps the token in its file.
    assert settings.env()["PULSE_INFLUX_TOKEN"] == ""
    assert settings.env()["PULSE_INFLUX_TOKEN_FILE"] == path
    assert Settings.from_env(settings.env()) == settings
    secret_file(tmp_path, "token", f" {TOKEN} \r\n")
    assert Settings.from_env({"PULSE_INFLUX_TOKEN_FILE": path}).influx_token == f" {TOKEN} "
    secret_file(tmp_path, "token", f"{TOKEN}\n\n")
    assert Settings.from_env({"PULSE_INFLUX_TOKEN_FILE": path}).influx_token == f"{TOKEN}\n"


def test_the_redis_password_from_the_url_or_a_file(tmp_path: Path) -> None:
    from_url = Settings.from_env({"PULSE_REDIS_URL": URL})
    assert from_url.redis_password == PASSWORD  # percent-decoded, as redis-py reads it
    assert resp_options(from_url)["password"] == PASSWORD
    path = secret_file(tmp_path, "password", f"{PASSWORD}\n")
    url = "rediss://pulse@redis.example.net:6380/2"
    from_file = Settings.from_env({"PULSE_REDIS_URL": url, "PULSE_REDIS_PASSWORD_FILE": path})
    assert from_file.redis_password == PASSWORD
    assert from_file.redis_url == url
    assert Settings.from_env(from_file.env()) == from_file
    assert resp_options(from_file)["password"] == PASSWORD
    client = redis_client(from_file)
    assert isinstance(client, aioredis.Redis)
    pool = client.connection_pool
    assert pool.connection_kwargs["password"] == PASSWORD
    assert pool.connection_kwargs["username"] == "pulse"
    # A cluster's client: the same user and password on every node's connections.
    cluster_url = "rediss+cluster://pulse@h1:7000,h2:7001"
    cluster = Settings.from_env({"PULSE_REDIS_URL": cluster_url, "PULSE_REDIS_PASSWORD_FILE": path})
    options = cast(aioredis.RedisCluster, redis_client(cluster)).connection_kwargs
    assert (options["username"], options["password"]) == ("pulse", PASSWORD)
    assert Settings.from_env({}).redis_password == ""
    assert resp_options(Settings.from_env({}))["password"] is None


def test_each_way_is_described_without_the_secret(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "password", PASSWORD)
    assert describe(Settings.from_env({"PULSE_REDIS_URL": URL})) == (
        "TLS, as user 'pulse', password in PULSE_REDIS_URL, the system's CAs"
    )
    assert describe(
        Settings.from_env({"PULSE_REDIS_URL": "redis://h:1/0", "PULSE_REDIS_PASSWORD_FILE": path})
    ) == (f"no TLS, password file {path!r}")


def bad_files(folder: Path) -> dict[str, tuple[str, str]]:
    """Name -> (path, the reason the message gives)."""
    not_utf8 = folder / "latin1"
    not_utf8.write_bytes("pässword".encode("latin-1"))
    empty = folder / "empty"
    empty.write_text("\n")
    return {
        "missing": ("/no/such/secret", "must be the path of a readable file"),
        "a directory": (str(folder), "must be the path of a readable file"),
        "not UTF-8": (str(not_utf8), "is not UTF-8 text"),
        "empty": (str(empty), "the file is empty"),
    }


@pytest.mark.parametrize("variable", ["PULSE_INFLUX_TOKEN_FILE", "PULSE_REDIS_PASSWORD_FILE"])
@pytest.mark.parametrize("bad", ["missing", "a directory", "not UTF-8", "empty"])
def test_a_file_that_cannot_be_read_names_the_variable_and_the_path(
    tmp_path: Path, variable: str, bad: str
) -> None:
    path, reason = bad_files(tmp_path)[bad]
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({variable: path})
    assert str(raised.value) == f"{variable}={path!r}: {reason}"
    assert "pässword" not in str(raised.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"PULSE_INFLUX_TOKEN": TOKEN, "PULSE_INFLUX_TOKEN_FILE": "{file}"},
            "PULSE_INFLUX_TOKEN and PULSE_INFLUX_TOKEN_FILE are both set: set one of them",
        ),
        (
            {"PULSE_REDIS_URL": URL, "PULSE_REDIS_PASSWORD_FILE": "{file}"},
            "PULSE_REDIS_URL holds a password and PULSE_REDIS_PASSWORD_FILE is set: give the "
            "password in one of them",
        ),
        (
            {"PULSE_REDIS_URL": f"redis://:{IN_URL}@h:1/0", "PULSE_REDIS_SSL_CAFILE": "{file}"},
            "PULSE_REDIS_SSL_CAFILE is set, but PULSE_REDIS_URL is not a rediss:// or "
            "rediss+cluster:// URL (TLS): use one, or unset it",
        ),
        (
            {"PULSE_REDIS_URL": "redis://h:1/0", "PULSE_REDIS_SSL_CERTFILE": "{file}"},
            "PULSE_REDIS_SSL_CERTFILE is set, but PULSE_REDIS_URL is not a rediss:// or "
            "rediss+cluster:// URL (TLS): use one, or unset it",
        ),
        (
            {"PULSE_REDIS_URL": "rediss://h:1/0", "PULSE_REDIS_SSL_KEYFILE": "{file}"},
            "PULSE_REDIS_SSL_KEYFILE is set without PULSE_REDIS_SSL_CERTFILE, the certificate "
            "it belongs to",
        ),
        (
            {"PULSE_REDIS_URL": f"http://:{IN_URL}@h:1/0"},
            f"PULSE_REDIS_URL='http://:{REDACTED}@h:1/0': must be a URL with scheme redis, "
            "rediss or unix, or a Redis Cluster's redis+cluster://HOST:PORT[,HOST:PORT...] "
            "(rediss+cluster:// with TLS)",
        ),
        (
            # Unescaped, the password's '/' ends the host part: no host, and still not shown.
            {"PULSE_REDIS_URL": f"redis://:{PASSWORD}@h:1/0"},
            f"PULSE_REDIS_URL='redis://:{REDACTED}@h:1/0': must be a URL with scheme redis, "
            "rediss or unix, or a Redis Cluster's redis+cluster://HOST:PORT[,HOST:PORT...] "
            "(rediss+cluster:// with TLS)",
        ),
        (
            {"PULSE_REDIS_URL": f"redis://h:1/0?password={IN_URL}&db=1"},
            f"PULSE_REDIS_URL='redis://h:1/0?password={REDACTED}&db=1': must not hold a "
            "password parameter: give the password as the URL's user info "
            "(redis://[USER]:PASSWORD@HOST:PORT/DB) or in PULSE_REDIS_PASSWORD_FILE",
        ),
    ],
)
def test_bad_combinations_name_the_variables_not_the_secrets(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    path = secret_file(tmp_path, "secret", "from-a-File-9f\n")
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({name: value.replace("{file}", path) for name, value in env.items()})
    assert str(raised.value) == message
    assert [s for s in (*SECRETS, "from-a-File-9f") if s in str(raised.value)] == []


def test_secrets_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"PULSE_REDIS_URL": URL, "PULSE_INFLUX_TOKEN": TOKEN}
    settings = Settings.from_env(env)
    assert [s for s in SECRETS if s in repr(settings)] == []
    shown = settings.shown()
    assert shown["PULSE_REDIS_URL"] == f"rediss://pulse:{REDACTED}@redis.example.net:6380/2"
    assert shown["PULSE_INFLUX_TOKEN"] == REDACTED
    assert shown["PULSE_REDIS_PASSWORD_FILE"] == ""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    printed = CliRunner().invoke(main, ["config"])
    assert printed.exit_code == 0
    assert f"PULSE_REDIS_URL=rediss://pulse:{REDACTED}@redis.example.net:6380/2\n" in printed.output
    assert f"PULSE_INFLUX_TOKEN={REDACTED}\n" in printed.output
    assert [s for s in SECRETS if s in printed.output] == []
    reference = CliRunner().invoke(main, ["config", "--markdown"])
    assert reference.exit_code == 0
    assert [s for s in SECRETS if s in reference.output] == []
    # No secret by default either: the token is unset unless given.
    assert "| `PULSE_INFLUX_TOKEN` | (unset) |" in reference.output


def test_redact_scrubs_the_redis_password_in_both_forms() -> None:
    settings = Settings.from_env({"PULSE_REDIS_URL": URL, "PULSE_INFLUX_TOKEN": TOKEN})
    said = f"auth {PASSWORD} failed for {URL}; token {TOKEN}"
    assert settings.redact(said) == (
        f"auth {REDACTED} failed for rediss://pulse:{REDACTED}@redis.example.net:6380/2; "
        f"token {REDACTED}"
    )


def test_a_rediss_url_verifies_the_server_with_the_ca_file(
    ca: CertificateAuthority, client_cert: Issued
) -> None:
    settings = Settings.from_env(
        {
            "PULSE_REDIS_URL": "rediss://redis.example.net:6380/0",
            "PULSE_REDIS_SSL_CAFILE": str(ca.cert),
            "PULSE_REDIS_SSL_CERTFILE": str(client_cert.cert),
            "PULSE_REDIS_SSL_KEYFILE": str(client_cert.key),
        }
    )
    context = tls_context(settings)
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname is True
    # Only the given CA is trusted, not the system's.
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "unit-redis-ca"),),)]
    assert describe(settings) == (
        f"TLS, CA file {str(ca.cert)!r}, client certificate {str(client_cert.cert)!r}"
    )
    # Without a CA file the system's CAs verify it; a redis:// URL has no TLS at all.
    system = tls_context(Settings.from_env({"PULSE_REDIS_URL": "rediss://h:1/0"}))
    assert system is not None
    assert system.cert_store_stats() == ssl.create_default_context().cert_store_stats()
    assert tls_context(Settings.from_env({})) is None


def test_tls_files_that_do_not_load_name_their_variable(
    tmp_path: Path, ca: CertificateAuthority, client_cert: Issued
) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    settings = Settings.from_env(
        {"PULSE_REDIS_URL": "rediss://h:1/0", "PULSE_REDIS_SSL_CAFILE": str(not_pem)}
    )
    with pytest.raises(SettingsError, match=r"^PULSE_REDIS_SSL_CAFILE='.*not\.pem': no PEM CA"):
        tls_context(settings)
    key = serialization.load_pem_private_key(client_cert.key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"key-password"),
        )
    )
    settings = Settings.from_env(
        {
            "PULSE_REDIS_URL": "rediss://h:1/0",
            "PULSE_REDIS_SSL_CAFILE": str(ca.cert),
            "PULSE_REDIS_SSL_CERTFILE": str(client_cert.cert),
            "PULSE_REDIS_SSL_KEYFILE": str(encrypted),
        }
    )
    with pytest.raises(SettingsError) as raised:
        redis_client(settings)  # the CLI's and web views' client loads the same files
    assert str(raised.value) == (
        f"PULSE_REDIS_SSL_CERTFILE={str(client_cert.cert)!r}, "
        f"PULSE_REDIS_SSL_KEYFILE={str(encrypted)!r}: the client certificate and its "
        "unencrypted PEM private key could not be loaded (the private key is encrypted)"
    )


@pytest.mark.parametrize("token", ["", TOKEN])
def test_influxdb_refusing_the_token_says_so_without_it(
    guarded_influx_url: str, token: str
) -> None:
    """A real VictoriaMetrics that wants other credentials answers 401 to any token."""
    sink = influx.InfluxSink(guarded_influx_url, token, "plant-a", "readings")

    async def post() -> RefusedByTarget:
        await sink.start()
        try:
            with pytest.raises(RefusedByTarget) as raised:
                await sink._post("m,device=d f=1 1700000000000")
            return raised.value
        finally:
            await sink.stop()

    refused = asyncio.run(post())
    wanted = (
        "InfluxDB refused the token of PULSE_INFLUX_TOKEN or PULSE_INFLUX_TOKEN_FILE: check "
        "that it is valid and may write to bucket 'readings' of org 'plant-a'"
        if token
        else "InfluxDB wants a token: set PULSE_INFLUX_TOKEN or PULSE_INFLUX_TOKEN_FILE"
    )
    assert str(refused) == f"HTTP 401 Unauthorized: {wanted}"
