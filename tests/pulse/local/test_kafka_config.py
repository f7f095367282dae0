"""The local Apache Kafka's configuration: the plain broker, and the listeners security adds.

That a broker with these settings serves SASL and TLS is shown end to end by
tests/integration/test_kafka_auth.py (the ``secured_kafka`` fixture).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pulse.local import kafka
from pulse.local.stack import ServerProcess, VictoriaSecurity

DATA = Path("/data")


def test_security_adds_listeners_and_properties_to_the_plain_configuration() -> None:
    plain = kafka.server_properties(9092, 9093, DATA).splitlines()
    assert "listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093" in plain
    assert "advertised.listeners=PLAINTEXT://127.0.0.1:9092" in plain
    assert "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT" in plain
    assert kafka.server_properties(9092, 9093, DATA, kafka.BrokerSecurity()).splitlines() == plain

    security = kafka.BrokerSecurity(
        listeners=(
            kafka.Listener("SASL", "SASL_PLAINTEXT", 9094),
            kafka.Listener("TLS", "SSL", 9095),
        ),
        properties={
            "sasl.enabled.mechanisms": "PLAIN",
            "listener.name.tls.ssl.client.auth": "required",
        },
        scram_users={"pulse": "not-shown-4411"},
    )
    secured = kafka.server_properties(9092, 9093, DATA, security).splitlines()
    changed = {
        "listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093": (
            "listeners=PLAINTEXT://127.0.0.1:9092,SASL://127.0.0.1:9094,TLS://127.0.0.1:9095,"
            "CONTROLLER://127.0.0.1:9093"
        ),
        "advertised.listeners=PLAINTEXT://127.0.0.1:9092": (
            "advertised.listeners=PLAINTEXT://127.0.0.1:9092,SASL://127.0.0.1:9094,"
            "TLS://127.0.0.1:9095"
        ),
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT": (
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,"
            "SASL:SASL_PLAINTEXT,TLS:SSL"
        ),
    }
    # The same lines with three changed, then the properties.
    assert secured == [
        *(changed.get(line, line) for line in plain),
        "sasl.enabled.mechanisms=PLAIN",
        "listener.name.tls.ssl.client.auth=required",
    ]
    # SCRAM users are created at format time, never written to the configuration.
    assert "not-shown-4411" not in "\n".join(secured) + repr(security)


def test_each_server_takes_only_its_own_security(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^tansu does not take BrokerSecurity$"):
        ServerProcess("broker", tmp_path, 9092, kind="tansu", security=kafka.BrokerSecurity())
    with pytest.raises(ValueError, match=r"^redis does not take BrokerSecurity$"):
        ServerProcess("redis", tmp_path, 6379, security=kafka.BrokerSecurity())
    with pytest.raises(ValueError, match=r"^kafka does not take VictoriaSecurity$"):
        ServerProcess("broker", tmp_path, 9092, kind="kafka", security=VictoriaSecurity("u", "p"))


def test_cluster_ids_never_start_with_a_dash() -> None:
    # Base64url: 1 in 64 ids would start with "-", which the storage tool reads as an option.
    ids = [kafka._cluster_id() for _ in range(3000)]
    assert not [i for i in ids if i.startswith("-")]
    assert {len(i) for i in ids} == {22}
    assert len({i[0] for i in ids}) == 63  # every other first character does occur
