"""How every Kafka client of Pulse connects: one set of options from the ``PULSE_KAFKA_*`` settings.

- :func:`client_options`: the keyword arguments of every aiokafka client Pulse makes (the
  readings consumer, the producer of outputs and changelog, the recovery consumers, the admin
  client that creates topics, ``pulse produce``): bootstrap servers, security protocol, SASL
  and the TLS context;
- :func:`ssl_context`: that TLS context (the broker's certificate and host name verified);
- :func:`broker_credentials`: the same settings for Faust's app (``broker_credentials``);
- :func:`check_connection`: one connection made with those options before the clients start,
  so that a wrong password or CA stops start-up with one message that says so.

Importing this module installs :mod:`pulse.kafka_records`: the consumers of a process that
makes its Kafka clients here build their records a batch at a time in C.

No message built here holds a secret (:meth:`Settings.redact` scrubs what a server said).
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from aiokafka import errors
from aiokafka.conn import create_conn
from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import CredentialsT

from pulse import kafka_records, tls
from pulse.settings import Settings

log = logging.getLogger(__name__)

kafka_records.install()

CHECK_TIMEOUT = 15.0
"""Seconds :func:`check_connection` gives each bootstrap server to connect, shake hands and
authenticate."""


class KafkaConnectError(RuntimeError):
    """No bootstrap server accepted Pulse's credentials or TLS settings; the message names the
    problem (e.g. ``authentication failed``, ``certificate verify failed``) and no secret."""


def uses_sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol.startswith("SASL_")


def uses_tls(settings: Settings) -> bool:
    return settings.kafka_security_protocol.endswith("SSL")


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the ``SSL`` and ``SASL_SSL`` protocols (None for the others): see
    :func:`pulse.tls.client_context`, with the ``PULSE_KAFKA_SSL_*`` files."""
    if not uses_tls(settings):
        return None
    return tls.client_context(_tls_files(settings))


def _tls_files(settings: Settings) -> tls.TLSFiles:
    return tls.TLSFiles(
        settings.kafka_ssl_cafile,
        settings.kafka_ssl_certfile,
        settings.kafka_ssl_keyfile,
        "PULSE_KAFKA_SSL_CAFILE",
        "PULSE_KAFKA_SSL_CERTFILE",
        "PULSE_KAFKA_SSL_KEYFILE",
    )


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for every aiokafka client (``AIOKafkaConsumer``,
    ``AIOKafkaProducer``, ``AIOKafkaAdminClient``): ``bootstrap_servers``,
    ``security_protocol`` and, as the protocol needs them, ``ssl_context`` and the SASL
    mechanism, user name and password. Each call builds a new TLS context."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    if uses_tls(settings):
        options["ssl_context"] = ssl_context(settings)
    if uses_sasl(settings):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    return options


def broker_credentials(settings: Settings) -> CredentialsT | None:
    """Faust's ``broker_credentials`` for the same connection as :func:`client_options`
    (None for ``PLAINTEXT``): Faust's consumer, producer and admin requests then connect as
    Pulse's own clients do."""
    options = client_options(settings)
    if uses_sasl(settings):
        return SASLCredentials(
            username=options["sasl_plain_username"],
            password=options["sasl_plain_password"],
            mechanism=options["sasl_mechanism"],
            ssl_context=options.get("ssl_context"),
        )
    if uses_tls(settings):
        return SSLCredentials(options["ssl_context"])
    return None


def describe(settings: Settings) -> str:
    """How the clients connect, for messages: protocol, SASL mechanism and user, CA file."""
    parts = [settings.kafka_security_protocol]
    if uses_sasl(settings):
        parts.append(f"{settings.kafka_sasl_mechanism} as user {settings.kafka_sasl_username!r}")
    if uses_tls(settings):
        cafile = settings.kafka_ssl_cafile
        parts.append(f"CA file {cafile!r}" if cafile else "the system's CAs")
        if settings.kafka_ssl_certfile:
            parts.append(f"client certificate {settings.kafka_ssl_certfile!r}")
    return ", ".join(parts)


async def check_connection(settings: Settings, timeout: float = CHECK_TIMEOUT) -> None:
    """Connect to each bootstrap server in turn as every client does (TLS handshake, SASL
    authentication) until one accepts; does nothing for ``PLAINTEXT``.

    Raises :class:`KafkaConnectError` when no server accepted and one of them failed the TLS
    handshake or the authentication, or dropped the connection (a listener of another
    protocol), within ``timeout`` seconds per server. A server that cannot be reached at all
    (refused, no answer) is only logged: that is left to the clients, as without security.
    """
    if settings.kafka_security_protocol == "PLAINTEXT":
        return
    options = client_options(settings)
    del options["bootstrap_servers"]
    failures: list[str] = []
    refused_by_security = False
    for server in settings.bootstrap_servers.split(","):
        host, _, port = server.rpartition(":")
        try:
            connection = await create_conn(
                host, int(port), request_timeout_ms=int(timeout * 1000), **options
            )
        except (OSError, errors.KafkaError) as exc:
            reason, security = _explain(exc, settings, timeout)
            failures.append(settings.redact(f"{server}: {reason}"))
            refused_by_security |= security
            if not security:
                log.warning("could not reach Kafka at %s", failures[-1])
            continue
        connection.close()
        return
    if refused_by_security:
        raise KafkaConnectError(
            f"cannot connect to Kafka ({describe(settings)}): {'; '.join(failures)}"
        )


def _explain(exc: BaseException, settings: Settings, timeout: float) -> tuple[str, bool]:
    """What went wrong, in words, and whether it was the TLS handshake or authentication."""
    handshake = tls.handshake_failure(exc, "broker", _tls_files(settings))
    if handshake is not None:
        return handshake, True
    if isinstance(exc, errors.SaslAuthenticationFailed):
        said = exc.args[0] if exc.args else exc.description
        return (
            f"authentication failed: {said} (check PULSE_KAFKA_SASL_USERNAME, the password "
            "and PULSE_KAFKA_SASL_MECHANISM)",
            True,
        )
    if isinstance(exc, errors.UnsupportedSaslMechanismError | errors.IllegalSaslStateError):
        return f"authentication failed: {exc}", True
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s", False
    if isinstance(exc, errors.KafkaConnectionError | ConnectionResetError):
        # It accepted the connection, then dropped it: a retry would fare no better.
        return (
            "the broker closed the connection during the TLS handshake or the first request: "
            "check that PULSE_KAFKA_SECURITY_PROTOCOL is what this listener speaks, and "
            "whether it requires a client certificate (PULSE_KAFKA_SSL_CERTFILE)",
            True,
        )
    return f"{type(exc).__name__}: {exc}", False
