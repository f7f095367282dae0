"""Apache Kafka for the local stack and the tests: installed once from Maven Central, one node.

:func:`kafka_libs` resolves the broker (``org.apache.kafka:kafka_2.13``) and its runtime
dependencies with Maven from the small POM beside this module (``kafka/pom.xml``) into a
cache outside the checkout (``$PULSE_CACHE_DIR``, default ``$XDG_CACHE_HOME/pulse`` or
``~/.cache/pulse``), once per version; later starts only read the jars.

:func:`kafka_command` writes a single-node KRaft configuration (broker and controller in one
JVM, on loopback), formats the log directory on first start, and returns the command that
runs it. The settings differ from Apache Kafka's defaults only where a one-node development
broker needs it; each is explained where it is set, and docs/operations.md says what to
choose on a real cluster.

:class:`BrokerSecurity` adds listeners with other security protocols (SASL, TLS) beside the
PLAINTEXT one, with their properties and SCRAM users, for the tests of Pulse's Kafka
authentication; without it the configuration is the plain development broker's.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

KAFKA_VERSION = "4.1.1"
"""The Apache Kafka the local stack, the tests and the benchmark run; docker-compose.yml runs
the image of the same version (tests/test_compose.py holds them equal)."""

HEAP = "-Xms256m -Xmx1g"
"""Heap for a 2-core, 24 GiB development machine: the broker's data lives in the page
cache, not the heap."""

POM = Path(__file__).with_name("kafka") / "pom.xml"


class KafkaNotInstalled(RuntimeError):
    """Java or Maven is missing, or Maven could not resolve the broker."""


def cache_root() -> Path:
    """Where downloaded servers are kept, shared by every checkout on the machine."""
    configured = os.environ.get("PULSE_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pulse"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One installer at a time per cache (tests and ``pulse stack up`` may race)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def kafka_libs(version: str = KAFKA_VERSION) -> Path:
    """The folder of the broker's jars, resolved by Maven on first use.

    The folder appears complete or not at all (Maven fills a temporary folder that is then
    renamed), so an interrupted download is started again, never half used.
    """
    home = cache_root() / f"kafka-{version}"
    libs = home / "libs"
    if libs.is_dir():
        return libs
    with _locked(home.with_name(home.name + ".lock")):
        if libs.is_dir():
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise KafkaNotInstalled(
                "Apache Kafka is installed with Maven, which is missing: run scripts/setup "
                "(it installs Debian's maven and openjdk-17-jre-headless)"
            )
        partial = home / "libs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        home.mkdir(parents=True, exist_ok=True)
        command = [
            mvn, "--batch-mode", "--quiet", "--file", str(POM),
            f"-Dkafka.version={version}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}",
            "-DincludeScope=runtime",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
            raise KafkaNotInstalled(
                f"Maven could not resolve Apache Kafka {version} from Maven Central:\n{tail}"
            )
        partial.rename(libs)
    return libs


def java_executable() -> str:
    """The ``java`` that runs the broker (Java 17 or later)."""
    java = shutil.which("java")
    if java is None:
        raise KafkaNotInstalled(
            "Apache Kafka needs Java 17, which is missing: run scripts/setup (it installs "
            "Debian's openjdk-17-jre-headless)"
        )
    return java


def _cluster_id() -> str:
    """A new cluster id as Kafka's storage tool makes them: 16 random bytes, base64url, not
    starting with ``-`` (which the tool's command line would take for an option; Kafka's own
    ``Uuid.randomUuid`` draws again then too)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


@dataclass(frozen=True)
class Listener:
    """A listener besides PLAINTEXT: its ``name`` (upper case; its own properties are
    ``listener.name.<name in lower case>.*``), security ``protocol`` and ``port``."""

    name: str
    protocol: str
    port: int


@dataclass(frozen=True)
class BrokerSecurity:
    """What a secured broker adds to the plain one: ``listeners`` on loopback (advertised as
    such), server ``properties`` (SASL mechanisms, JAAS configs, key and trust stores) and
    ``scram_users`` (name -> password), whose SCRAM-SHA-512 credentials are created when the
    log directory is formatted. The PLAINTEXT listener stays: it carries the inter-broker
    traffic and the readiness probe."""

    listeners: tuple[Listener, ...] = ()
    properties: Mapping[str, str] = field(default_factory=dict)
    scram_users: Mapping[str, str] = field(default_factory=dict, repr=False)


def server_properties(
    port: int, controller_port: int, data_dir: Path, security: BrokerSecurity | None = None
) -> str:
    """The one-node KRaft configuration (see the module's docstring), with ``security``'s
    listeners and properties when given."""
    extra = security or BrokerSecurity()
    listeners = "".join(f",{x.name}://127.0.0.1:{x.port}" for x in extra.listeners)
    protocols = "".join(f",{x.name}:{x.protocol}" for x in extra.listeners)
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{port}{listeners}"
            f",CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}{listeners}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            f"listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT{protocols}",
            f"log.dirs={data_dir}",
            # One node: every internal topic has one replica.
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            # Fewer partitions of the internal topics than the 50 of a cluster: they are
            # created on the first group and the first transaction, which then take
            # milliseconds instead of seconds.
            "offsets.topic.num.partitions=4",
            "transaction.state.log.num.partitions=4",
            # A group's first rebalance starts at once, not after 3 s, and sessions as short
            # as the tests' (1 s) are allowed (the broker's floor is 6 s by default).
            "group.initial.rebalance.delay.ms=0",
            "group.min.session.timeout.ms=1000",
            # Topics a client asks for before Pulse created them are made, as on tansu.
            "auto.create.topics.enable=true",
            "num.partitions=1",
            *(f"{key}={value}" for key, value in extra.properties.items()),
            "",
        ]
    )


def _log4j_properties() -> str:
    return "\n".join(
        [
            "appender.out.type = Console",
            "appender.out.name = out",
            "appender.out.layout.type = PatternLayout",
            "appender.out.layout.pattern = [%d] %p %m (%c)%n",
            "rootLogger.level = INFO",
            "rootLogger.appenderRef.out.ref = out",
            "logger.state.name = state.change.logger",
            "logger.state.level = WARN",
            "",
        ]
    )


def kafka_command(
    java: str,
    port: int,
    work_dir: Path,
    controller_port: int,
    security: BrokerSecurity | None = None,
) -> list[str]:
    """The command that runs a one-node Apache Kafka in ``work_dir`` on ``port`` (and on
    ``security``'s listeners, if given).

    Writes ``server.properties`` and ``log4j2.properties`` there and, when the log directory
    is not formatted yet, formats it (a new cluster, with ``security``'s SCRAM users); the
    data of an earlier start is kept.
    """
    libs = kafka_libs()
    data_dir = work_dir / "data"
    config = work_dir / "server.properties"
    config.write_text(server_properties(port, controller_port, data_dir, security))
    log4j = work_dir / "log4j2.properties"
    log4j.write_text(_log4j_properties())
    classpath = f"{libs}/*"
    jvm = [
        java, *HEAP.split(),
        "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp", classpath,
    ]  # fmt: skip
    if not (data_dir / "meta.properties").exists():
        scram = [
            arg
            for name, password in (security.scram_users.items() if security else ())
            for arg in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]")
        ]
        format_command = [
            *jvm, "kafka.tools.StorageTool", "format",
            "-t", _cluster_id(), "-c", str(config), *scram,
        ]  # fmt: skip
        formatted = subprocess.run(format_command, capture_output=True, text=True, check=False)
        if formatted.returncode != 0:
            tail = "\n".join((formatted.stdout + formatted.stderr).splitlines()[-20:])
            raise KafkaNotInstalled(f"formatting Kafka's log directory failed:\n{tail}")
    return [*jvm, "kafka.Kafka", str(config)]
