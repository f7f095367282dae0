"""Servers that want credentials, for the tests of Pulse's secrets and of TLS to Redis.

- :func:`start_secured_redis`: a redis-server that speaks only TLS on its port, requires a
  client certificate signed by the session's CA and a password (:data:`REDIS_PASSWORD`);
- :func:`start_guarded_influx`: a VictoriaMetrics (the InfluxDB stand-in) that takes writes
  only with HTTP basic authentication, so that any InfluxDB token Pulse sends gets a 401.

Certificates come from tests/helpers/tls.py; ``other_ca`` signs nothing the server uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis

from pulse.local.stack import (
    LOOPBACK,
    RedisSecurity,
    ServerProcess,
    VictoriaSecurity,
    start_redis,
    start_victoria,
)
from tests.helpers.tls import CertificateAuthority, Issued

REDIS_PASSWORD = "r3dis-Pa55/w+rd@1e9c"
"""The secured Redis's password: distinct enough to be searched for in any output, and with
characters a URL must percent-encode (``/``, ``+``, ``@``), so both its forms are searched."""
INFLUX_BASIC_AUTH = ("pulse-vm", "vm-Basic-3d8a0f")
"""(user, password) the guarded VictoriaMetrics wants; Pulse never has them."""

NO_CLIENT_CERTIFICATE = (
    "TLS handshake failed: TLSV13_ALERT_CERTIFICATE_REQUIRED (the server requires a client "
    "certificate: set PULSE_REDIS_SSL_CERTFILE)",
    "Redis closed the connection during the TLS handshake or the first command: check whether "
    "it requires a client certificate (PULSE_REDIS_SSL_CERTFILE), and that this port speaks TLS",
)
"""What Pulse says when Redis wants a client certificate and gets none. Under TLS 1.3 the server
refuses after the client's handshake is done, with an alert, and closes; the client then reads
the alert, or a reset when the first command it sent reached the closed socket: either way the
message names the certificate's variable."""


@dataclass(frozen=True)
class SecuredRedis:
    """The running TLS redis-server and what a client needs to reach it."""

    server: ServerProcess
    url: str
    """``rediss://127.0.0.1:PORT/0``, without the password."""
    ca: Path
    other_ca: Path
    client: Issued
    password: str

    @property
    def port(self) -> int:
        return self.server.port

    def url_with_password(self) -> str:
        """``url`` with the password in its user info, percent-encoded."""
        return self.url.replace("://", f"://:{quote(self.password, safe='')}@", 1)

    def reader(self) -> redis.Redis:
        """A redis-py client of its own TLS settings (none of Pulse's code), for the tests to
        read back what Pulse wrote."""
        return redis.Redis(
            host=LOOPBACK,
            port=self.port,
            password=self.password,
            ssl=True,
            ssl_ca_certs=str(self.ca),
            ssl_certfile=str(self.client.cert),
            ssl_keyfile=str(self.client.key),
        )

    def stop(self) -> None:
        self.server.stop()


def start_secured_redis(root: Path) -> SecuredRedis:
    """Make the certificates under ``root/tls`` and start the server under ``root``; raises
    :class:`pulse.local.stack.StackError` with its log tail if it does not answer."""
    ca = CertificateAuthority(root / "tls", "redis-test-ca")
    other_ca = CertificateAuthority(root / "tls", "redis-other-ca")
    server_cert = ca.issue("redis-server", server=True)
    client = ca.issue("redis-client", server=False)
    security = RedisSecurity(
        cert=server_cert.cert,
        key=server_cert.key,
        ca=ca.cert,
        probe_cert=client.cert,
        probe_key=client.key,
        password=REDIS_PASSWORD,
    )
    server = start_redis(root, stop_with_parent=True, security=security)
    return SecuredRedis(server, server.url, ca.cert, other_ca.cert, client, REDIS_PASSWORD)


def start_guarded_influx(root: Path) -> ServerProcess:
    """A VictoriaMetrics under ``root`` that answers 401 to every write without
    :data:`INFLUX_BASIC_AUTH` (an InfluxDB token among them)."""
    return start_victoria(
        root, stop_with_parent=True, security=VictoriaSecurity(*INFLUX_BASIC_AUTH)
    )
