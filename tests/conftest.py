"""Shared fixtures: real servers on free loopback ports, started only when a test asks.

- ``broker``: ``"kafka://127.0.0.1:PORT"`` of a tansu broker (memory storage).
- ``kafka_broker``: the same of Apache Kafka (one KRaft node, a JVM: started once per session,
  for all its test processes).
  tests/integration/ overrides ``broker`` with each of the two in turn (a test parameter,
  ``tansu`` or ``kafka``): the end-to-end tests prove the engine on both.
- ``redis_url``: ``"redis://127.0.0.1:PORT/0"`` of a redis-server without persistence.
- ``influx_url``: ``"http://127.0.0.1:PORT"`` of VictoriaMetrics (InfluxDB v2 write API).
- ``secured_kafka``: an Apache Kafka with SASL and TLS listeners and the CA, certificates and
  users to reach them (tests/helpers/secured_kafka.py), for the tests of Kafka authentication
  (a JVM: started once per session, for all its test processes).
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
  session, for all its test processes; pulse/local/opensearch.py). Tests keep apart by their
  own index prefix (``PULSE_SEARCH_PREFIX``, e.g. the ``topic_prefix``).
- ``topic_prefix``: a fresh short prefix per test for topic, consumer-group and index names,
  unique across the session's processes too.

The servers live for the whole session. Under pytest-xdist (scripts/test runs three processes)
each process starts its own, but for the JVMs (Apache Kafka, the secured Kafka and
OpenSearch), which the first process that asks starts and every process then shares
(tests/servers.py): tests using them must keep to their own names (``topic_prefix``) and never
count what the whole server holds. A server that cannot start makes the test ERROR with the
server's log tail; nothing is skipped.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator

import pytest

from pulse.local.redis_cluster import RedisCluster, start_redis_cluster
from pulse.local.stack import ServerProcess, create_database
from tests.helpers.secured_kafka import SecuredKafka, start_secured_kafka
from tests.helpers.secured_redis import SecuredRedis, start_guarded_influx, start_secured_redis
from tests.servers import SessionServers, Sharing

_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
"""pytest-xdist's name of this test process (``gw0``, ``gw1``, ...), empty without xdist."""
_topic_numbers = itertools.count(1)
# Also unique across sessions, should a prefix ever reach a broker that outlives one.
_session_token = secrets.token_hex(2)
# Unique across the session's processes, which share the JVM servers (tests/servers.py).
_process_mark = f"w{_XDIST_WORKER.removeprefix('gw')}" if _XDIST_WORKER else ""


@pytest.fixture(scope="session")
def _session_servers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SessionServers]:
    # pytest-xdist gives each worker its own base directory under the session's one, which
    # they share: the shared servers' records live there (tests/servers.py).
    base = tmp_path_factory.getbasetemp()
    shared_dir = base.parent if _XDIST_WORKER else base
    servers = SessionServers(tmp_path_factory.mktemp("servers"), shared_dir)
    # The owner of a shared server stops it after this process's session, once no other
    # process uses it: that wait must not count against the last test's timeout.
    request.config.add_cleanup(servers.close)
    yield servers
    servers.release()


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


_SECURED_KAFKA = Sharing(
    start=start_secured_kafka,
    server=lambda kafka: kafka.server,
    record=SecuredKafka.record,
    of_record=SecuredKafka.of_record,
)


@pytest.fixture
def secured_kafka(_session_servers: SessionServers) -> SecuredKafka:
    """The session's Apache Kafka with SASL and TLS listeners (one for all the session's
    processes); an error if it died."""
    return _session_servers.shared("secured-kafka", _SECURED_KAFKA).get()


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
    """A short prefix no other test uses, e.g. ``t7x3fa2`` (``t7w1x3fa2`` on pytest-xdist's
    worker ``gw1``).

    The brokers are shared by the session (Apache Kafka and OpenSearch by all its processes)
    and keep a consumer group's first session timeout for their whole life, so each test
    needs its own topic, group and index names.
    """
    return f"t{next(_topic_numbers)}{_process_mark}x{_session_token}"
