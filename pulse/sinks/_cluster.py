"""Redis Cluster: redis-py's cluster client, made one way for every client of Pulse, and the
Redis sink's pipelined writes through it.

- :func:`cluster_client`: redis-py's async ``RedisCluster`` for a ``redis+cluster://`` or
  ``rediss+cluster://`` URL (:func:`pulse.settings.redis_cluster_nodes`), with the password
  and the TLS context Pulse gives its other Redis clients;
- :class:`ClusterPipeline`: what :class:`pulse.sinks._resp.RespPipeline` is for one server,
  for a cluster: a list of packed commands in, their replies out, the same exceptions.

redis-py keeps the map of slots to nodes, sends each command to the master of its key's
slot (one pipeline per node, in parallel), follows ``MOVED`` (the slot moved: the map is
updated) and ``ASK`` (the slot is migrating: ``ASKING`` then the command, on the target), and
after a connection error or ``CLUSTERDOWN`` reads the layout again from the nodes, which is how
a failed-over master's slots reach its promoted replica. A script call's keys must all be in
one slot (the sink groups them so: pulse/sinks/redis.py, ``fenced_calls``).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from typing import Any

import hiredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.event import (
    AsyncAfterSlotsCacheRefreshEvent,
    AsyncEventListenerInterface,
    EventDispatcher,
)
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    MasterDownError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pulse.settings import redis_cluster_nodes, redis_uses_tls
from pulse.sinks._resp import RedisRefused, RedisReplyError


class _TLSConnection(SSLConnection):
    """redis-py's TLS connection on Pulse's TLS context, so that a cluster's nodes are
    verified exactly as a single server is (pulse/redis_clients.py)."""

    def __init__(self, *, tls_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ssl_context.context = tls_context  # what RedisSSLContext.get() hands out


def cluster_client(
    url: str,
    *,
    password: str | None = None,
    tls: ssl.SSLContext | None = None,
    timeout: float | None = None,
    event_dispatcher: EventDispatcher | None = None,
) -> RedisCluster:
    """redis-py's async cluster client of a ``redis+cluster://`` URL: it discovers the
    cluster from the first of the URL's nodes that answers. ``password``: instead of the
    URL's; ``tls``: the context of a ``rediss+cluster://`` URL (None: the system's CAs);
    ``timeout``: seconds a connection or a reply may take (None: redis-py's default)."""
    nodes = redis_cluster_nodes(url)
    # The URL's user info, decoded as redis-py decodes a single server's.
    userinfo = url.partition("://")[2].split("/", 1)[0].rpartition("@")[0]
    options = parse_url(f"redis://{userinfo}@h:1" if userinfo else "redis://h:1")
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        username=options.get("username"),
        password=password or options.get("password"),
        ssl=redis_uses_tls(url),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        event_dispatcher=event_dispatcher,
    )
    if redis_uses_tls(url):
        # redis-py builds a TLS context per connection from file names; Pulse's own context
        # (one for all its clients) is handed to every node's connections instead: to the
        # options the client makes new nodes with, and to the startup nodes made already.
        context = tls or ssl.create_default_context()
        client.connection_kwargs["connection_class"] = _TLSConnection
        client.connection_kwargs["tls_context"] = context
        for node in client.startup_nodes:
            node.connection_class = _TLSConnection
            node.connection_kwargs["tls_context"] = context
    return client


_ERROR_CODES: tuple[tuple[type[RedisError], str], ...] = (
    (NoScriptError, "NOSCRIPT"),
    (MasterDownError, "MASTERDOWN"),
    (ClusterDownError, "CLUSTERDOWN"),
    (TryAgainError, "TRYAGAIN"),
    (ReadOnlyError, "READONLY"),
    (OutOfMemoryError, "OOM"),
    (NoPermissionError, "NOPERM"),
    (BusyLoadingError, "LOADING"),
)
"""redis-py's exceptions for Redis's error replies, and the code it took off the reply's
text: put back, so that the sink reads a cluster's errors as it reads a server's."""


def _reply_text(error: Exception) -> str:
    for kind, code in _ERROR_CODES:
        if isinstance(error, kind):
            return f"{code} {error}"
    return str(error) if isinstance(error, ResponseError) else f"ERR {error}"


_AWAY = (RedisConnectionError, RedisTimeoutError, RedisClusterException, ClusterError, AskError)
"""What redis-py raises (or answers) while a node is away, or a slot not yet served or still
moving after its retries (``TTL exhausted``: redirections that did not settle): the write
is tried again later."""


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """redis-py's exceptions as :class:`RespPipeline <pulse.sinks._resp.RespPipeline>`'s."""
    try:
        yield
    except (AuthenticationError, AuthorizationError, NoPermissionError) as exc:
        raise RedisRefused(
            f"Redis refused the connection: {_reply_text(exc)} (check the user and "
            "password: PULSE_REDIS_URL, PULSE_REDIS_PASSWORD_FILE)"
        ) from None
    except _AWAY as exc:
        raise ConnectionError(f"Redis Cluster: {exc}") from None
    except ResponseError as exc:  # CLUSTERDOWN, ...
        raise RedisReplyError([_reply_text(exc)]) from None


class _Refreshes(AsyncEventListenerInterface):
    def __init__(self, pipeline: ClusterPipeline) -> None:
        self.pipeline = pipeline

    async def listen(self, event: object) -> None:
        self.pipeline.connections += 1


class ClusterPipeline:
    """The sink's writes to a Redis Cluster (see the module doc): :meth:`execute` as
    :meth:`RespPipeline.execute <pulse.sinks._resp.RespPipeline.execute>` does it, and
    :attr:`connections` counting the client's readings of the cluster's layout.

    A reading of the layout happens at the first write, after ``MOVED`` (a slot that moved)
    and after any connection error or ``CLUSTERDOWN`` (a node that died, restarted or was
    failed over): a master may then be a replica promoted without the last writes, or a
    node restarted empty. So, as a new connection to a single server does, a new reading
    tells the sink's lane to rewrite every live key (agents/flush.py, MirrorLane). A slot
    moved by resharding takes its keys along, and rewriting them then is only extra work.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 30.0,
        *,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        dispatcher = EventDispatcher()
        dispatcher.register_listeners({AsyncAfterSlotsCacheRefreshEvent: [_Refreshes(self)]})
        self.client = cluster_client(
            url, password=password, tls=tls, timeout=timeout, event_dispatcher=dispatcher
        )
        self.connections = 0
        """Readings of the cluster's layout so far (the first at the first write)."""

    async def execute(self, commands: list[bytes]) -> list[Any]:
        """Send every packed command (RESP, as :func:`pulse.sinks._resp.pack` packs) to the
        master of its keys' slot, pipelined per node; return the replies in order.

        Raises :class:`RedisReplyError` with the error replies' texts (``NOSCRIPT ...``,
        ``CLUSTERDOWN ...``) when any command failed, :class:`RedisRefused` when the
        cluster refused the credentials, and ``ConnectionError`` (an ``OSError``) when a
        node could not be reached after redis-py's own retries: the caller retries, the
        writes being idempotent.
        """
        reader = hiredis.Reader()
        reader.feed(b"".join(commands))
        parsed = []
        for _ in commands:
            name, *args = reader.gets()
            parsed.append((name.decode(), *args))  # redis-py routes by the name as str
        return await self._run(parsed)

    async def load_script(self, script: str) -> None:
        """``SCRIPT LOAD`` on every master (redis-py sends it to each, not in a pipeline);
        raises as :meth:`execute` does."""
        with _translated():
            await self.client.script_load(script)

    async def _run(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        with _translated():
            replies = await pipe.execute(raise_on_error=False)
        failed = [reply for reply in replies if isinstance(reply, Exception)]
        away = [reply for reply in failed if isinstance(reply, _AWAY)]
        if away:  # a command redis-py sent again on its own (after MOVED or ASK) met this
            raise ConnectionError(f"Redis Cluster: {away[0]}")
        if failed:
            raise RedisReplyError([_reply_text(reply) for reply in failed])
        return list(replies)

    async def close(self) -> None:
        await self.client.aclose()
