"""A Redis Cluster of local redis-server processes, for the tests and benchmarks of Pulse on a
cluster: :func:`start_redis_cluster`.

Each node runs without persistence on loopback, on a free port (and a free cluster bus port),
with ``cluster-enabled yes`` and a short ``cluster-node-timeout``, so that a master killed
with SIGKILL is failed over to its replica within a few seconds. ``redis-cli --cluster
create`` joins them (``--cluster-replicas``), and :func:`start_redis_cluster` returns once
every slot is served and every node agrees on the layout.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from pulse.local.stack import (
    LOOPBACK,
    START_TIMEOUT,
    ServerNotInstalled,
    StackError,
    _dies_with_parent,
    free_port,
)

NODE_TIMEOUT_MS = 1000
"""``cluster-node-timeout``: a master unreachable this long is failing; its replica is
promoted about one to two such timeouts later."""


@dataclass
class ClusterNode:
    """One redis-server of the cluster."""

    port: int
    bus_port: int
    work_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, executable: str) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        command = [
            executable,
            "--port", str(self.port),
            "--cluster-port", str(self.bus_port),
            "--bind", LOOPBACK,
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.work_dir / "nodes.conf"),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--save", "",
            "--appendonly", "no",
            # A replica syncs at once (not after the default 5 s), so that the cluster is
            # ready to fail over as soon as it is created.
            "--repl-diskless-sync-delay", "0",
            "--dir", str(self.work_dir),
            "--daemonize", "no",
            "--logfile", "",
            "--unixsocket", "",
            "--tls-port", "0",
        ]  # fmt: skip
        with (self.work_dir / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                _dies_with_parent(command),
                cwd=self.work_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                close_fds=True,
            )

    def kill(self) -> None:
        """SIGKILL: the node dies at once, with whatever it had not replicated."""
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.work_dir / "server.log").read_text(errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class RedisCluster:
    """The running cluster: its nodes and the URL Pulse takes (``redis+cluster://``)."""

    nodes: list[ClusterNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``redis+cluster://HOST:PORT,...`` of every node (PULSE_REDIS_URL's cluster form)."""
        return "redis+cluster://" + ",".join(node.address for node in self.nodes)

    def client(self) -> redis.RedisCluster:
        """A synchronous redis-py cluster client (for tests and checks)."""
        return redis.RedisCluster(host=LOOPBACK, port=self.live_nodes()[0].port)

    def live_nodes(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.alive()]

    def masters(self) -> list[ClusterNode]:
        """The live nodes that are masters now, as the first live node sees the cluster."""
        by_address = {node.address: node for node in self.nodes}
        with redis.Redis(host=LOOPBACK, port=self.live_nodes()[0].port) as client:
            text = client.execute_command("CLUSTER", "NODES").decode()
        masters = []
        for line in text.splitlines():
            parts = line.split()
            address, flags = parts[1].split("@")[0], parts[2].split(",")
            if "master" in flags and "fail" not in flags and address in by_address:
                node = by_address[address]
                if node.alive():
                    masters.append(node)
        return masters

    def master_of(self, key: str) -> ClusterNode:
        """The node serving ``key``'s slot now."""
        with redis.Redis(host=LOOPBACK, port=self.live_nodes()[0].port) as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    port = int(master[1])
                    return next(node for node in self.nodes if node.port == port)
        raise StackError(f"no node serves slot {slot}")

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every live node says ``cluster_state:ok`` with all 16,384 slots served, and
        they agree that live nodes master every slot (after a master was killed: until its
        replica took over)."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            try:
                layouts = set()
                for node in self.live_nodes():
                    with redis.Redis(host=LOOPBACK, port=node.port) as client:
                        info = client.execute_command("CLUSTER", "INFO").decode()
                        if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
                            raise StackError(f"{node.address}: {info.splitlines()[:3]}")
                        slots = client.execute_command("CLUSTER", "SLOTS")
                        layouts.add(tuple(sorted((s, e, int(m[1])) for s, e, m, *_ in slots)))
                live = {node.port for node in self.live_nodes()}
                if len(layouts) == 1 and {m for _, _, m in next(iter(layouts))} <= live:
                    return
                last = f"nodes disagree on the layout: {layouts}"
            except (redis.RedisError, StackError) as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise StackError(f"the Redis Cluster is not healthy after {timeout:g} s: {last}")
            time.sleep(0.1)

    def wait_replicas_synced(self, timeout: float = 30.0) -> None:
        """Until every live replica's link to its master is up: a master killed before its
        replica synced once is not failed over."""
        deadline = time.monotonic() + timeout
        for node in self.live_nodes():
            with redis.Redis(host=LOOPBACK, port=node.port) as client:
                while True:
                    info = client.info("replication")
                    if info["role"] == "master" or info.get("master_link_status") == "up":
                        break
                    if time.monotonic() > deadline:
                        raise StackError(f"replica {node.address} not synced:\n{node.log_tail()}")
                    time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_redis_cluster(
    work_dir: Path, masters: int = 3, replicas: int = 1, timeout: float = START_TIMEOUT
) -> RedisCluster:
    """Start ``masters * (1 + replicas)`` nodes under ``work_dir`` and join them into one
    cluster (each master with ``replicas`` replicas); returns once it is healthy. Raises
    :class:`ServerNotInstalled` without redis-server or redis-cli, :class:`StackError` with
    the nodes' logs when it does not come up."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        raise ServerNotInstalled("redis-server and redis-cli are needed; run scripts/setup")
    used: set[int] = set()
    cluster = RedisCluster()
    for index in range(masters * (1 + replicas)):
        port, bus_port = _free_port(used), _free_port(used)
        node = ClusterNode(port, bus_port, Path(work_dir) / f"node-{index}")
        cluster.nodes.append(node)
        node.start(server)
    try:
        deadline = time.monotonic() + timeout
        for node in cluster.nodes:
            while not _answers(node.port):
                if not node.alive() or time.monotonic() > deadline:
                    raise StackError(f"node {node.address} did not start:\n{node.log_tail()}")
                time.sleep(0.05)
        addresses = [node.address for node in cluster.nodes]
        options = ["--cluster-replicas", str(replicas), "--cluster-yes"]
        created = subprocess.run(
            [cli, "--cluster", "create", *addresses, *options],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if created.returncode != 0:
            raise StackError(
                f"redis-cli --cluster create failed:\n{created.stdout}{created.stderr}"
            )
        cluster.wait_healthy(timeout)
        cluster.wait_replicas_synced(timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _free_port(used: set[int]) -> int:
    while True:
        port = free_port()
        if port not in used:
            used.add(port)
            return port


def _answers(port: int) -> bool:
    with contextlib.suppress(redis.RedisError), redis.Redis(host=LOOPBACK, port=port) as c:
        return bool(c.ping())
    return False
