"""OpenSearch for the local stack and the tests: installed once from Maven Central, one node.

:func:`opensearch_home` resolves OpenSearch's integration-test distribution
(``org.opensearch.distribution.integ-test-zip:opensearch``, a zip) with Maven from the small
POM beside this module (``opensearch/pom.xml``) and unpacks it into the cache the local
Apache Kafka uses (``$PULSE_CACHE_DIR``, default ``$XDG_CACHE_HOME/pulse`` or
``~/.cache/pulse``), once per version; later starts only read it.

What that distribution is: ``bin/opensearch`` and its launchers, ``lib/`` (the server and
Lucene), and one module, ``transport-netty4`` (HTTP and transport). It bundles no JDK (the
machine's Java 17 runs it: the launcher warns that such distributions are deprecated) and
no plugin: no security plugin (so no TLS or users to set up), no ISM (so retention is the
indexer's own, pulse/search), no Painless and no ``analysis-common`` (so only the
analyzers of the server itself: ``standard``, ``simple``, ``whitespace``, ``keyword``...).
What Pulse's indexer and queries use is all in the server: composable index templates,
aliases, ``flat_object``, bulk, ``search_after``, ``terms`` and ``date_histogram``
aggregations.

:func:`opensearch_command` writes a single-node configuration (loopback only, so the
production bootstrap checks are warnings; the disk watermarks off, so a development machine
whose disk is nearly full does not turn the indices read-only) and returns the command that
runs it: the JVM as ``bin/opensearch`` runs it (the machine's Java 17 as the JDK).
OpenSearch refuses to run as root; when we are root the command runs it in a user namespace
of its own as an unprivileged user (``unshare --user``): the JVM has no privilege on the
machine, and still reads the root-owned install and writes its root-owned folder.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path

from pulse.local.kafka import KafkaNotInstalled, _locked, cache_root, java_executable

OPENSEARCH_VERSION = "2.19.6"
"""The OpenSearch the local stack and the tests run (the newest 2.19, the last line that
runs on Java 17); docker-compose.yml runs the image of the same version
(tests/test_compose.py holds them equal)."""

HEAP = "512m"
"""Heap (minimum and maximum) for a 2-core development machine shared with a broker, Redis
and the tests."""

CLUSTER_NAME = "pulse-local"
POM = Path(__file__).with_name("opensearch") / "pom.xml"
UNPRIVILEGED_ID = 1000
"""The user and group id OpenSearch sees itself run as in its user namespace when we are
root (mapped to root outside: only the namespace's view changes)."""


class OpenSearchNotInstalled(KafkaNotInstalled):
    """Java or Maven is missing, or Maven could not resolve the distribution."""


def opensearch_home(version: str = OPENSEARCH_VERSION) -> Path:
    """The unpacked distribution (``bin/``, ``lib/``, ``modules/``), fetched by Maven and
    unpacked on first use.

    The folder appears complete or not at all (the zip is unpacked into a temporary folder
    that is then renamed), so an interrupted install is started again, never half used.
    """
    root = cache_root() / f"opensearch-{version}"
    home = root / "home"
    if (home / "bin" / "opensearch").is_file():
        return home
    with _locked(root.with_name(root.name + ".lock")):
        if (home / "bin" / "opensearch").is_file():
            return home
        mvn = shutil.which("mvn")
        if mvn is None:
            raise OpenSearchNotInstalled(
                "OpenSearch is installed with Maven, which is missing: run scripts/setup "
                "(it installs Debian's maven and openjdk-17-jre-headless)"
            )
        download = root / "download"
        shutil.rmtree(download, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        command = [
            mvn, "--batch-mode", "--quiet", "--file", str(POM),
            f"-Dopensearch.version={version}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={download}",
            "-DincludeScope=runtime",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        archive = download / f"opensearch-{version}.zip"
        if done.returncode != 0 or not archive.is_file():
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
            raise OpenSearchNotInstalled(
                f"Maven could not resolve OpenSearch {version} "
                f"(org.opensearch.distribution.integ-test-zip:opensearch:zip) from Maven "
                f"Central:\n{tail}"
            )
        partial = root / "home.partial"
        shutil.rmtree(partial, ignore_errors=True)
        _unpack(archive, partial, f"opensearch-{version}/")
        shutil.rmtree(home, ignore_errors=True)
        partial.rename(home)
        shutil.rmtree(download, ignore_errors=True)
    return home


def _unpack(archive: Path, target: Path, top: str) -> None:
    """Unpack ``archive``'s folder ``top`` into ``target``, with the files' modes (the
    scripts in ``bin/`` must stay executable, which :mod:`zipfile` alone does not keep)."""
    with zipfile.ZipFile(archive) as zipped:
        for member in zipped.infolist():
            if not member.filename.startswith(top) or member.filename == top:
                continue
            relative = member.filename[len(top) :]
            path = target / relative
            if not path.resolve().is_relative_to(target.resolve()):
                raise OpenSearchNotInstalled(f"{archive}: {member.filename} leaves the folder")
            if member.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with zipped.open(member) as source, path.open("wb") as copy:
                shutil.copyfileobj(source, copy)
            mode = (member.external_attr >> 16) & 0o777
            if mode:
                path.chmod(mode)
            elif relative.startswith("bin/"):
                path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def node_settings(port: int, transport_port: int, work_dir: Path) -> str:
    """``opensearch.yml`` of the one-node development server (see the module's docstring)."""
    return "\n".join(
        [
            f"cluster.name: {CLUSTER_NAME}",
            "node.name: pulse",
            f"path.data: {work_dir / 'data'}",
            f"path.logs: {work_dir / 'logs'}",
            # Loopback only: development mode, in which the bootstrap checks only warn.
            "network.host: 127.0.0.1",
            f"http.port: {port}",
            f"transport.port: {transport_port}",
            "discovery.type: single-node",
            # A nearly full development disk must not make the indices read-only.
            "cluster.routing.allocation.disk.threshold_enabled: false",
            "",
        ]
    )


def _jvm_options(home: Path) -> str:
    """The distribution's ``jvm.options`` with the heap set to :data:`HEAP` and without its
    heap dumps and GC log files (up to 2 GiB of them in a development folder)."""
    kept = []
    for line in (home / "config" / "jvm.options").read_text().splitlines():
        option = line.split(":", 1)[-1] if line[:1].isdigit() else line
        if option.startswith(("-Xms", "-Xmx", "-XX:+HeapDumpOnOutOfMemoryError")):
            continue
        if option.startswith(("-XX:HeapDumpPath", "-XX:ErrorFile", "-Xlog:gc", "-Xloggc")):
            continue
        kept.append(line)
    return "\n".join([f"-Xms{HEAP}", f"-Xmx{HEAP}", *kept, ""])


def _log4j_properties() -> str:
    """Everything to the console (the server's ``server.log``), nothing to files."""
    return "\n".join(
        [
            "status = error",
            "appender.console.type = Console",
            "appender.console.name = console",
            "appender.console.layout.type = PatternLayout",
            "appender.console.layout.pattern = [%d{ISO8601}][%-5p][%-25c{1.}] %marker%m%n",
            "rootLogger.level = info",
            "rootLogger.appenderRef.console.ref = console",
            "",
        ]
    )


def unprivileged_prefix() -> list[str]:
    """The prefix that runs a command in a user namespace as :data:`UNPRIVILEGED_ID` when we
    are root (OpenSearch refuses root), else none."""
    if os.geteuid() != 0:
        return []
    unshare = shutil.which("unshare")
    if unshare is None:
        raise OpenSearchNotInstalled(
            "OpenSearch refuses to run as root, and unshare (util-linux) is missing"
        )
    return [
        unshare, "--user",
        f"--map-user={UNPRIVILEGED_ID}", f"--map-group={UNPRIVILEGED_ID}", "--",
    ]  # fmt: skip


def opensearch_command(java: str, port: int, work_dir: Path, transport_port: int) -> list[str]:
    """The command that runs a one-node OpenSearch in ``work_dir`` on ``port`` (HTTP) and
    ``transport_port`` with ``java``: the JVM itself, as ``bin/opensearch`` would exec it
    (the distribution's own ``JvmOptionsParser`` turns ``jvm.options`` into the JVM's
    options), so that the process started is the server's from its first moment.

    Writes ``config/`` there (``opensearch.yml``, ``jvm.options``, ``log4j2.properties``);
    the data of an earlier start (``data/``) is kept.
    """
    home = opensearch_home()
    config = work_dir / "config"
    config.mkdir(parents=True, exist_ok=True)
    (work_dir / "logs").mkdir(exist_ok=True)
    tmp = work_dir / "tmp"
    tmp.mkdir(exist_ok=True)
    (config / "opensearch.yml").write_text(node_settings(port, transport_port, work_dir))
    (config / "jvm.options").write_text(_jvm_options(home))
    (config / "log4j2.properties").write_text(_log4j_properties())
    classpath = f"{home / 'lib'}/*"
    parser = subprocess.run(
        [java, "-cp", classpath, "org.opensearch.tools.launchers.JvmOptionsParser", str(config)],
        env={**os.environ, "OPENSEARCH_TMPDIR": str(tmp)},
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    if parser.returncode != 0:
        raise OpenSearchNotInstalled(
            f"OpenSearch's JvmOptionsParser failed on {config / 'jvm.options'}:\n"
            f"{parser.stdout[-1000:]}{parser.stderr[-2000:]}"
        )
    return [
        *unprivileged_prefix(), java, "-Xshare:auto",
        *parser.stdout.split(),
        f"-Dopensearch.path.home={home}",
        f"-Dopensearch.path.conf={config}",
        "-Dopensearch.distribution.type=zip",
        "-Dopensearch.bundled_jdk=false",
        "-cp", classpath,
        "org.opensearch.bootstrap.OpenSearch",
    ]  # fmt: skip


__all__ = [
    "CLUSTER_NAME",
    "OPENSEARCH_VERSION",
    "OpenSearchNotInstalled",
    "java_executable",
    "node_settings",
    "opensearch_command",
    "opensearch_home",
]
