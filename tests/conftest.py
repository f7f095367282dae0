"""Shared fixtures: real servers on free loopback ports, started only when a test asks.

- ``broker``: ``"kafka://127.0.0.1:PORT"`` of a tansu broker (memory storage).
- ``kafka_broker``: the same of Apache Kafka (one KRaft node, a JVM: started once per session).
  tests/integration/ overrides ``broker`` with each of the two in turn (a test parameter,
  ``tansu`` or ``kafka``): the end-to-end tests prove the engine on both.
- ``redis_url``: ``"redis://127.0.0.1:PORT/0"`` of a redis-server without persistence.
- ``influx_url``: ``"http://127.0.0.1:PORT"`` of VictoriaMetrics (InfluxDB v2 write API).
- ``secured_kafka``: an Apache Kafka with SASL and TLS listeners and the CA, certificates and
  users to reach them (tests/helpers/secured_kafka.py), for the tests of Kafka authentication.
- ``secured_redis``: a redis-server that speaks only TLS and requires a client certificate and
  a password, with the CA, certificates and password to reach it; ``guarded_influx_url``: a
  VictoriaMetrics that answers 401 to any InfluxDB token (tests/helpers/secured_redis.py).
- ``redis_cluster``: a Redis Cluster of six redis-servers (three masters, each with a replica;
  pulse/local/redis_cluster.py); its ``url`` is ``PULSE_REDIS_URL``'s cluster form. A test
  that kills a node starts a cluster of its own instead.
- ``postgres_server``: the session's PostgreSQL (pulse/local/stack.py: ``initdb`` in a temporary
  directory, run as the ``postgres`` user when root); ``postgres_url``: a fresh empty database
  of it per test; ``registry_url``: a fresh database with the registry's schema
  (``pulse db upgrade``).
- ``search_url``: ``"http://127.0.0.1:PORT"`` of OpenSearch (one node, a JVM: started once per
  session; pulse/local/opensearch.py). Tests keep apart by their own index prefix
  (``PULSE_SEARCH_PREFIX``, e.g. the ``topic_prefix``).
- ``topic_prefix``: a fresh short prefix per test for topic and consumer-group names.

The servers live for the whole session. A server that cannot start makes the test ERROR with
the server's log tail; nothing is skipped.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator

import pytest

from pulse.local.redis_cluster import RedisCluster, start_redis_cluster
from pulse.local.stack import ServerProcess, create_database
from tests.helpers.secured_kafka import SecuredKafka, start_secured_kafka
from tests.helpers.secured_redis import SecuredRedis, start_guarded_influx, start_secured_redis
from tests.servers import SessionServers

_topic_numbers = itertools.count(1)
# Also unique across sessions, should a prefix ever reach a broker that outlives one.
_session_token = secrets.token_hex(2)


@pytest.fixture(scope="session")
def _session_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionServers]:
    servers = SessionServers(tmp_path_factory.mktemp("servers"))
    yield servers
    servers.close()


@pytest.fixture(scope="session")
def broker(_session_servers: SessionServers) -> str:
    """``kafka://127.0.0.1:PORT`` of the session's tansu broker."""
    return _session_servers.get("broker").url


@pytest.fixture(scope="session")
def kafka_broker(_session_servers: SessionServers) -> str:
    """``kafka://127.0.0.1:PORT`` of the session's Apache Kafka."""
    return _session_servers.get("kafka").url


@pytest.fixture(scope="session")
def redis_url(_session_servers: SessionServers) -> str:
    """``redis://127.0.0.1:PORT/0`` of the session's redis-server."""
    return _session_servers.get("redis").url


@pytest.fixture(scope="session")
def influx_url(_session_servers: SessionServers) -> str:
    """``http://127.0.0.1:PORT`` of the session's VictoriaMetrics (the InfluxDB stand-in)."""
    return _session_servers.get("influx").url


@pytest.fixture(scope="session")
def search_url(_session_servers: SessionServers) -> str:
    """``http://127.0.0.1:PORT`` of the session's OpenSearch (security plugin absent)."""
    return _session_servers.get("search").url


@pytest.fixture(scope="session")
def postgres_server(_session_servers: SessionServers) -> ServerProcess:
    """The session's PostgreSQL (superuser ``pulse``, trust authentication on loopback)."""
    return _session_servers.get("postgres")


_database_numbers = itertools.count(1)


@pytest.fixture
def postgres_url(postgres_server: ServerProcess) -> str:
    """``postgresql://pulse@127.0.0.1:PORT/DB`` of a database no other test uses, empty."""
    name = f"t{next(_database_numbers)}x{_session_token}"
    create_database(postgres_server, name)
    return postgres_server.url.rpartition("/")[0] + f"/{name}"


@pytest.fixture
def registry_url(postgres_url: str) -> str:
    """A fresh database with the registry's schema, as ``pulse db upgrade`` makes it."""
    from pulse.registry import migrate
    from pulse.settings import Settings

    migrate.upgrade(Settings.from_env({"PULSE_POSTGRES_URL": postgres_url}))
    return postgres_url


@pytest.fixture(scope="session")
def _session_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster(_session_redis_cluster: RedisCluster) -> RedisCluster:
    """The session's Redis Cluster (three masters, three replicas), healthy; an error if a
    node died."""
    for node in _session_redis_cluster.nodes:
        if not node.alive():
            raise RuntimeError(
                f"a node of the session's Redis Cluster ({node.address}) died:\n{node.log_tail()}"
            )
    return _session_redis_cluster


@pytest.fixture(scope="session")
def _session_secured_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    kafka = start_secured_kafka(tmp_path_factory.mktemp("secured-kafka"))
    yield kafka
    kafka.stop()


@pytest.fixture
def secured_kafka(_session_secured_kafka: SecuredKafka) -> SecuredKafka:
    """The session's Apache Kafka with SASL and TLS listeners; an error if it died."""
    server = _session_secured_kafka.server
    if not server.alive():
        raise RuntimeError(
            f"the session's secured Kafka (pid {server.pid}) died; log {server.log_path}:\n"
            f"{server.log_tail()}"
        )
    return _session_secured_kafka


@pytest.fixture(scope="session")
def _session_secured_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredRedis]:
    server = start_secured_redis(tmp_path_factory.mktemp("secured-redis"))
    yield server
    server.stop()


@pytest.fixture
def secured_redis(_session_secured_redis: SecuredRedis) -> SecuredRedis:
    """The session's TLS-only redis-server; an error if it died."""
    _check_alive("secured Redis", _session_secured_redis.server)
    return _session_secured_redis


@pytest.fixture(scope="session")
def _session_guarded_influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_guarded_influx(tmp_path_factory.mktemp("guarded-influx"))
    yield server
    server.stop()


@pytest.fixture
def guarded_influx_url(_session_guarded_influx: ServerProcess) -> str:
    """``http://127.0.0.1:PORT`` of the session's VictoriaMetrics that refuses every token."""
    _check_alive("guarded VictoriaMetrics", _session_guarded_influx)
    return _session_guarded_influx.url


def _check_alive(name: str, server: ServerProcess) -> None:
    if not server.alive():
        raise RuntimeError(
            f"the session's {name} (pid {server.pid}) died; log {server.log_path}:\n"
            f"{server.log_tail()}"
        )


@pytest.fixture
def topic_prefix() -> str:
    """A short prefix no other test uses, e.g. ``t7x3fa2``.

    The broker is shared by the session and keeps a consumer group's first session timeout
    for its whole life, so each test needs its own topic and group names.
    """
    return f"t{next(_topic_numbers)}x{_session_token}"
