"""The PULSE_KAFKA_* settings: their checks, the client options built from them, and secrets
kept out of everything Pulse shows (repr, ``pulse config``, error messages)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import AuthProtocol, SASLMechanism

from pulse.cli import main
from pulse.kafka_clients import broker_credentials, client_options, describe, ssl_context
from pulse.settings import REDACTED, Settings, SettingsError
from tests.helpers.tls import CertificateAuthority, Issued

PASSWORD = "s3cret-Pa55-x1"
EXISTING_FILE = __file__
SASL = {
    "PULSE_BROKER": "kafka://k1:9093,k2:9093",
    "PULSE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "PULSE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "PULSE_KAFKA_SASL_USERNAME": "pulse",
    "PULSE_KAFKA_SASL_PASSWORD": PASSWORD,
}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("tls"), "unit-ca")


@pytest.fixture(scope="module")
def client_cert(ca: CertificateAuthority) -> Issued:
    return ca.issue("unit-client", server=False)


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    settings = Settings.from_env({})
    assert settings.kafka_security_protocol == "PLAINTEXT"
    assert client_options(settings) == {
        "bootstrap_servers": "127.0.0.1:9092",
        "security_protocol": "PLAINTEXT",
    }
    assert ssl_context(settings) is None
    assert broker_credentials(settings) is None


def test_sasl_plaintext_options_and_faust_credentials() -> None:
    settings = Settings.from_env(SASL)
    assert client_options(settings) == {
        "bootstrap_servers": "k1:9093,k2:9093",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "pulse",
        "sasl_plain_password": PASSWORD,
    }
    credentials = broker_credentials(settings)
    assert isinstance(credentials, SASLCredentials)
    assert credentials.protocol is AuthProtocol.SASL_PLAINTEXT
    assert credentials.mechanism is SASLMechanism.SCRAM_SHA_512
    assert (credentials.username, credentials.password) == ("pulse", PASSWORD)
    assert credentials.ssl_context is None
    assert describe(settings) == "SASL_PLAINTEXT, SCRAM-SHA-512 as user 'pulse'"


def test_sasl_ssl_verifies_the_broker_with_the_ca_file(ca: CertificateAuthority) -> None:
    env = {
        **SASL,
        "PULSE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "PULSE_KAFKA_SASL_MECHANISM": "PLAIN",
        "PULSE_KAFKA_SSL_CAFILE": str(ca.cert),
    }
    settings = Settings.from_env(env)
    options = client_options(settings)
    context = options.pop("ssl_context")
    assert options == {
        "bootstrap_servers": "k1:9093,k2:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "pulse",
        "sasl_plain_password": PASSWORD,
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname is True
    # Only the given CA is trusted, not the system's.
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "unit-ca"),),)]
    credentials = broker_credentials(settings)
    assert isinstance(credentials, SASLCredentials)
    assert credentials.protocol is AuthProtocol.SASL_SSL
    assert credentials.mechanism is SASLMechanism.PLAIN
    assert isinstance(credentials.ssl_context, ssl.SSLContext)
    assert describe(settings) == f"SASL_SSL, PLAIN as user 'pulse', CA file {str(ca.cert)!r}"


def test_ssl_with_a_client_certificate(ca: CertificateAuthority, client_cert: Issued) -> None:
    settings = Settings.from_env(
        {
            "PULSE_KAFKA_SECURITY_PROTOCOL": "SSL",
            "PULSE_KAFKA_SSL_CAFILE": str(ca.cert),
            "PULSE_KAFKA_SSL_CERTFILE": str(client_cert.cert),
            "PULSE_KAFKA_SSL_KEYFILE": str(client_cert.key),
        }
    )
    options = client_options(settings)
    assert set(options) == {"bootstrap_servers", "security_protocol", "ssl_context"}
    assert options["security_protocol"] == "SSL"
    credentials = broker_credentials(settings)
    assert isinstance(credentials, SSLCredentials)
    assert credentials.protocol is AuthProtocol.SSL
    assert describe(settings) == (
        f"SSL, CA file {str(ca.cert)!r}, client certificate {str(client_cert.cert)!r}"
    )


def test_without_a_ca_file_the_system_cas_are_trusted() -> None:
    settings = Settings.from_env({"PULSE_KAFKA_SECURITY_PROTOCOL": "SSL"})
    context = ssl_context(settings)
    assert context is not None
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname is True
    default = ssl.create_default_context()
    assert context.cert_store_stats() == default.cert_store_stats()
    assert describe(settings) == "SSL, the system's CAs"


def test_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(f"{PASSWORD}\n")
    env = {**SASL, "PULSE_KAFKA_SASL_PASSWORD": "", "PULSE_KAFKA_SASL_PASSWORD_FILE": str(secret)}
    settings = Settings.from_env(env)
    assert settings.kafka_sasl_password == PASSWORD  # one trailing newline dropped
    assert client_options(settings)["sasl_plain_password"] == PASSWORD
    # The environment that reproduces the settings keeps the password in its file.
    assert settings.env()["PULSE_KAFKA_SASL_PASSWORD"] == ""
    assert settings.env()["PULSE_KAFKA_SASL_PASSWORD_FILE"] == str(secret)
    assert Settings.from_env(settings.env()) == settings
    secret.write_text(" spaced \n\n")
    assert Settings.from_env(env).kafka_sasl_password == " spaced \n"


def test_a_secret_is_taken_verbatim() -> None:
    settings = Settings.from_env({**SASL, "PULSE_KAFKA_SASL_PASSWORD": f" {PASSWORD} "})
    assert settings.kafka_sasl_password == f" {PASSWORD} "


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"PULSE_KAFKA_SECURITY_PROTOCOL": "SASL"},
            "PULSE_KAFKA_SECURITY_PROTOCOL='SASL': must be one of PLAINTEXT, SSL, "
            "SASL_PLAINTEXT, SASL_SSL",
        ),
        (
            {"PULSE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-1"},
            "PULSE_KAFKA_SASL_MECHANISM='SCRAM-SHA-1': must be one of PLAIN, SCRAM-SHA-512 "
            "(or unset)",
        ),
        (
            {"PULSE_KAFKA_SASL_MECHANISM": ""},
            "PULSE_KAFKA_SASL_MECHANISM must be set with "
            "PULSE_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT",
        ),
        (
            {"PULSE_KAFKA_SASL_USERNAME": ""},
            "PULSE_KAFKA_SASL_USERNAME must be set with "
            "PULSE_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT",
        ),
        (
            {"PULSE_KAFKA_SASL_PASSWORD": ""},
            "exactly one of PULSE_KAFKA_SASL_PASSWORD and PULSE_KAFKA_SASL_PASSWORD_FILE must "
            "be set with PULSE_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT",
        ),
        (
            {"PULSE_KAFKA_SASL_PASSWORD_FILE": EXISTING_FILE},
            "exactly one of PULSE_KAFKA_SASL_PASSWORD and PULSE_KAFKA_SASL_PASSWORD_FILE must "
            "be set with PULSE_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT",
        ),
        (
            {"PULSE_KAFKA_SASL_PASSWORD": "", "PULSE_KAFKA_SASL_PASSWORD_FILE": "/no/such"},
            "PULSE_KAFKA_SASL_PASSWORD_FILE='/no/such': must be the path of a readable file",
        ),
        (
            {"PULSE_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"},
            "PULSE_KAFKA_SASL_MECHANISM is set, but PULSE_KAFKA_SECURITY_PROTOCOL=PLAINTEXT does "
            "not use SASL: set PULSE_KAFKA_SECURITY_PROTOCOL to SASL_PLAINTEXT or SASL_SSL, or "
            "unset it",
        ),
        (
            {"PULSE_KAFKA_SECURITY_PROTOCOL": "SSL", "PULSE_KAFKA_SASL_MECHANISM": ""},
            "PULSE_KAFKA_SASL_USERNAME is set, but PULSE_KAFKA_SECURITY_PROTOCOL=SSL does not use "
            "SASL: set PULSE_KAFKA_SECURITY_PROTOCOL to SASL_PLAINTEXT or SASL_SSL, or unset it",
        ),
        (
            {"PULSE_KAFKA_SSL_CAFILE": EXISTING_FILE},
            "PULSE_KAFKA_SSL_CAFILE is set, but PULSE_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT does "
            "not use TLS: set PULSE_KAFKA_SECURITY_PROTOCOL to SSL or SASL_SSL, or unset it",
        ),
        (
            {"PULSE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "PULSE_KAFKA_SSL_KEYFILE": EXISTING_FILE},
            "PULSE_KAFKA_SSL_KEYFILE is set without PULSE_KAFKA_SSL_CERTFILE, the certificate "
            "it belongs to",
        ),
        (
            {"PULSE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "PULSE_KAFKA_SSL_CAFILE": "/no/such"},
            "PULSE_KAFKA_SSL_CAFILE='/no/such': must be the path of a readable file",
        ),
    ],
)
def test_bad_combinations_name_the_variable(changes: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({**SASL, **changes})
    assert str(raised.value) == message
    assert PASSWORD not in str(raised.value)


def test_an_empty_password_file_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    env = {**SASL, "PULSE_KAFKA_SASL_PASSWORD": "", "PULSE_KAFKA_SASL_PASSWORD_FILE": str(empty)}
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(env)
    assert str(raised.value) == f"PULSE_KAFKA_SASL_PASSWORD_FILE={str(empty)!r}: the file is empty"


def test_files_that_do_not_load_name_their_variable(
    tmp_path: Path, ca: CertificateAuthority, client_cert: Issued
) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    settings = Settings.from_env(
        {"PULSE_KAFKA_SECURITY_PROTOCOL": "SSL", "PULSE_KAFKA_SSL_CAFILE": str(not_pem)}
    )
    with pytest.raises(SettingsError, match=r"^PULSE_KAFKA_SSL_CAFILE='.*not\.pem': no PEM CA"):
        client_options(settings)
    # An encrypted key fails at once (OpenSSL would otherwise prompt on the terminal).
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
            "PULSE_KAFKA_SECURITY_PROTOCOL": "SSL",
            "PULSE_KAFKA_SSL_CAFILE": str(ca.cert),
            "PULSE_KAFKA_SSL_CERTFILE": str(client_cert.cert),
            "PULSE_KAFKA_SSL_KEYFILE": str(encrypted),
        }
    )
    with pytest.raises(SettingsError) as raised:
        ssl_context(settings)
    assert str(raised.value) == (
        f"PULSE_KAFKA_SSL_CERTFILE={str(client_cert.cert)!r}, "
        f"PULSE_KAFKA_SSL_KEYFILE={str(encrypted)!r}: the client certificate and its "
        "unencrypted PEM private key could not be loaded (the private key is encrypted)"
    )


def test_secrets_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.from_env({**SASL, "PULSE_INFLUX_TOKEN": "influx-T0ken-77"})
    assert PASSWORD not in repr(settings) and "influx-T0ken-77" not in repr(settings)
    shown = settings.shown()
    assert shown["PULSE_KAFKA_SASL_PASSWORD"] == REDACTED
    assert shown["PULSE_INFLUX_TOKEN"] == REDACTED
    assert shown["PULSE_KAFKA_SASL_USERNAME"] == "pulse"
    assert {k: v for k, v in shown.items() if v == REDACTED} == {
        "PULSE_KAFKA_SASL_PASSWORD": REDACTED,
        "PULSE_INFLUX_TOKEN": REDACTED,
    }
    # An unset secret shows as unset.
    assert Settings.from_env({}).shown()["PULSE_KAFKA_SASL_PASSWORD"] == ""
    for name, value in {**SASL, "PULSE_INFLUX_TOKEN": "influx-T0ken-77"}.items():
        monkeypatch.setenv(name, value)
    printed = CliRunner().invoke(main, ["config"])
    assert printed.exit_code == 0
    assert f"PULSE_KAFKA_SASL_PASSWORD={REDACTED}\n" in printed.output
    assert f"PULSE_INFLUX_TOKEN={REDACTED}\n" in printed.output
    assert PASSWORD not in printed.output and "influx-T0ken-77" not in printed.output


def test_redact_scrubs_every_secret_from_a_text() -> None:
    settings = Settings.from_env({**SASL, "PULSE_INFLUX_TOKEN": "influx-T0ken-77"})
    said = f"broker said: bad password {PASSWORD!r} for pulse; token influx-T0ken-77"
    assert settings.redact(said) == (
        f"broker said: bad password '{REDACTED}' for pulse; token {REDACTED}"
    )
    assert Settings.from_env({}).redact("nothing secret") == "nothing secret"
