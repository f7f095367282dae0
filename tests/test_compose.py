"""docker-compose.yml and Dockerfile wiring, checked without a Docker engine.

The worker's PULSE_* settings must name real services on the ports those services listen on,
Kafka's KRaft settings must agree with each other, and InfluxDB's initial org, bucket and
token must be the worker's.
"""

from __future__ import annotations

import base64
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from pulse.local.kafka import KAFKA_VERSION
from pulse.settings import VARIABLES, Settings

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = {var.name: var.default for var in VARIABLES}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
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
    assert set(services) == {"kafka", "redis", "influxdb", "postgres", "worker", "api"}
    assert {name: ("image" in svc) != ("build" in svc) for name, svc in services.items()} == {
        name: True for name in services
    }
    # The broker the tests and the local stack run (pulse/local/kafka.py), not another.
    assert services["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert services["influxdb"]["image"] == "influxdb:2.7"
    assert services["redis"]["image"].split(":")[1].split(".")[0] == "7"
    assert services["postgres"]["image"].split(":")[1].split(".")[0] == "15"


def test_worker_sets_only_known_pulse_variables(worker_env: dict[str, str]) -> None:
    pulse_names = {name for name in worker_env if name.startswith("PULSE_")}
    assert pulse_names <= set(DEFAULTS), pulse_names - set(DEFAULTS)
    assert {"PULSE_BROKER", "PULSE_REDIS_URL", "PULSE_INFLUX_URL"} <= pulse_names
    # Every value passes the same checks as at worker startup.
    settings = Settings.from_env(worker_env)
    assert settings.bootstrap_servers == "kafka:19092"


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
    assert initial == ("pulse", "pulse", "pulse-dev-token")
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
