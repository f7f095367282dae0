"""One Apache Kafka with authentication for the tests: SASL and TLS listeners beside PLAINTEXT.

Listeners (all on loopback, each on its own free port):

- ``PLAINTEXT``: the tests' own producing and reading, and the readiness probe;
- ``SASL`` (SASL_PLAINTEXT) and ``SASLTLS`` (SASL_SSL): mechanisms PLAIN (user
  :data:`PLAIN_USER`) and SCRAM-SHA-512 (user :data:`SCRAM_USER`, created when the log directory
  is formatted);
- ``MTLS`` (SSL): TLS that requires a client certificate signed by the test CA.

The broker's certificate (for 127.0.0.1 and localhost) and the client's are signed by a CA made
for the session (tests/helpers/tls.py); a second CA, ``other_ca``, signs nothing the broker uses.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pulse.local import kafka
from pulse.local.stack import LOOPBACK, ServerProcess, StackError, free_port, start_broker
from tests.helpers.tls import CertificateAuthority, Issued
from tests.servers import server_of_record, server_record

PLAIN_USER = ("pulse-plain", "plain-Secret-4fd1c2")
SCRAM_USER = ("pulse", "scram-Secret-9a7e33")
"""(name, password) of the broker's users; each password is distinct enough to be searched for
in a log."""


@dataclass(frozen=True)
class SecuredKafka:
    """The running broker and what a client needs to reach each of its listeners."""

    server: ServerProcess
    plaintext: str
    sasl_plaintext: str
    sasl_ssl: str
    mtls: str
    ca: Path
    other_ca: Path
    client: Issued

    def stop(self) -> None:
        self.server.stop()

    def record(self) -> dict[str, Any]:
        """JSON for the session's other test processes (:meth:`of_record`; tests/servers.py)."""
        return {
            "server": server_record(self.server),
            **{name: getattr(self, name) for name in _URLS},
            **{name: str(getattr(self, name)) for name in ("ca", "other_ca")},
            "client": {"cert": str(self.client.cert), "key": str(self.client.key)},
        }

    @classmethod
    def of_record(cls, record: dict[str, Any]) -> SecuredKafka:
        """The broker :meth:`record` recorded, as seen by a process that did not start it."""
        return cls(
            server=server_of_record(record["server"]),
            **{name: record[name] for name in _URLS},
            ca=Path(record["ca"]),
            other_ca=Path(record["other_ca"]),
            client=Issued(Path(record["client"]["cert"]), Path(record["client"]["key"])),
        )


_URLS = ("plaintext", "sasl_plaintext", "sasl_ssl", "mtls")


def start_secured_kafka(root: Path) -> SecuredKafka:
    """Make the certificates under ``root/tls`` and start the broker under ``root``; raises
    :class:`StackError` with the broker's log tail if it does not come up."""
    ca = CertificateAuthority(root / "tls", "pulse-test-ca")
    other_ca = CertificateAuthority(root / "tls", "other-ca")
    broker_cert = ca.issue("broker", server=True)
    client = ca.issue("client", server=False)
    # Kafka's PEM key store: one file with the private key, then the certificate chain.
    keystore = root / "tls" / "broker-keystore.pem"
    keystore.write_bytes(broker_cert.key.read_bytes() + broker_cert.cert.read_bytes())

    ports = {name: free_port() for name in ("SASL", "SASLTLS", "MTLS")}
    plain_jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'user_{PLAIN_USER[0]}="{PLAIN_USER[1]}";'
    )
    scram_jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    properties = {
        "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-512",
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(ca.cert),
        "listener.name.mtls.ssl.client.auth": "required",
    }
    for listener in ("sasl", "sasltls"):
        properties[f"listener.name.{listener}.plain.sasl.jaas.config"] = plain_jaas
        properties[f"listener.name.{listener}.scram-sha-512.sasl.jaas.config"] = scram_jaas
    security = kafka.BrokerSecurity(
        listeners=(
            kafka.Listener("SASL", "SASL_PLAINTEXT", ports["SASL"]),
            kafka.Listener("SASLTLS", "SASL_SSL", ports["SASLTLS"]),
            kafka.Listener("MTLS", "SSL", ports["MTLS"]),
        ),
        properties=properties,
        scram_users=dict([SCRAM_USER]),
    )
    # stop_with_parent: a test run killed outright takes it along (see tests/servers.py).
    server = start_broker(root, kind="kafka", stop_with_parent=True, security=security)
    try:
        for name, port in ports.items():
            _wait_listening(name, port)
    except StackError:
        server.stop()
        raise
    url = f"kafka://{LOOPBACK}:{{}}".format
    return SecuredKafka(
        server=server,
        plaintext=server.url,
        sasl_plaintext=url(ports["SASL"]),
        sasl_ssl=url(ports["SASLTLS"]),
        mtls=url(ports["MTLS"]),
        ca=ca.cert,
        other_ca=other_ca.cert,
        client=client,
    )


def _wait_listening(name: str, port: int, timeout: float = 10.0) -> None:
    """The broker opens every listener as it starts; wait until ``port`` accepts TCP."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((LOOPBACK, port), timeout=1).close()
            return
        except OSError as exc:
            if time.monotonic() >= deadline:
                message = f"the {name} listener on port {port} never opened: {exc}"
                raise StackError(message) from None
            time.sleep(0.05)
