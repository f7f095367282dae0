"""A minimal Redis connection for pipelined bulk writes: hiredis packs and parses.

redis-py packs every argument and parses every reply of a pipeline in Python, one at a time;
the Redis sink sends tens of thousands of commands per flush. Here commands are packed by
``hiredis.pack_command`` (or by the caller, for the hot hash writes) and all replies parsed by
one ``hiredis.Reader``, a fraction of the cost. Reads (CLI, HTTP API) keep using redis-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url

from pulse.settings import REDACTED


def pack(*args: Any) -> bytes:
    """One command in RESP, any argument types (hiredis formats numbers)."""
    return hiredis.pack_command(args)


class RedisReplyError(Exception):
    """Redis answered commands with errors (a bug, a misconfigured server, or NOSCRIPT: a
    server that lost its scripts). ``errors``: each error reply's text, in order."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(f"{len(errors)} commands failed, first: {errors[0]}")
        self.errors = errors


class RedisRefused(ConnectionError):
    """Redis refused a new connection's credentials (AUTH, or a command sent on every
    connection, for lack of permission): a problem of the server or of the credentials, which
    a caller retries like a connection that failed, never a reason to stop."""


_REFUSALS = ("NOAUTH", "WRONGPASS", "NOPERM", "ERR AUTH", "ERR invalid password")
"""How Redis's error replies begin when it refuses a client's credentials or permissions."""


class RespPipeline:
    """One connection to the server of a ``redis://``, ``rediss://`` or ``unix://`` URL.

    ``on_connect``: packed commands sent first on every connection (after AUTH and SELECT),
    such as loading the scripts the caller runs. ``password``: instead of the URL's (one read
    from a file). ``tls``: the TLS context of a ``rediss://`` URL (Pulse's is
    :func:`pulse.redis_clients.tls_context`; without one, the system's CAs verify the
    server).
    """

    def __init__(
        self,
        url: str,
        timeout: float = 30.0,
        on_connect: Sequence[bytes] = (),
        *,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.options: dict[str, Any] = dict(parse_url(url))
        if password:
            self.options["password"] = password
        self.tls = tls
        self.timeout = timeout
        self.on_connect = list(on_connect)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.connections = 0
        """Connections made so far: a new one may reach a restarted server that lost keys."""

    async def _connect(self) -> None:
        options = self.options
        if "path" in options:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_unix_connection(options["path"]), self.timeout
            )
        else:
            tls = None
            if options.get("connection_class") is SSLConnection:  # rediss://
                tls = self.tls or ssl.create_default_context()
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(
                    options.get("host", "localhost"), options.get("port", 6379), ssl=tls
                ),
                self.timeout,
            )
        self.connections += 1
        setup: list[tuple[Any, ...]] = []
        if options.get("password"):
            username = options.get("username")
            setup.append(
                ("AUTH", username, options["password"])
                if username
                else ("AUTH", options["password"])
            )
        if options.get("db"):
            setup.append(("SELECT", options["db"]))
        if setup or self.on_connect:
            try:
                await self._round_trip([pack(*command) for command in setup] + self.on_connect)
            except RedisReplyError as exc:
                await self.close()  # the next call connects again, with its setup
                refusals = [e for e in exc.errors if e.startswith(_REFUSALS)]
                if refusals:
                    said = refusals[0]  # Redis's words, scrubbed of the password all the same
                    if options.get("password"):
                        said = said.replace(options["password"], REDACTED)
                    raise RedisRefused(
                        f"Redis refused the connection: {said} (check the user and "
                        "password: PULSE_REDIS_URL, PULSE_REDIS_PASSWORD_FILE)"
                    ) from None
                raise
            except BaseException:
                await self.close()
                raise

    async def execute(self, commands: list[bytes]) -> list[Any]:
        """Send every packed command (:func:`pack`), then read every reply; return the
        replies in order, or raise if any reply is an error.

        A connection error closes the connection (the next call reconnects) and propagates,
        so a caller can retry: the sink's commands are idempotent.
        """
        if self._writer is None:
            await self._connect()
        try:
            return await self._round_trip(commands)
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            await self.close()
            raise

    async def _round_trip(self, commands: list[bytes]) -> list[Any]:
        assert self._reader is not None and self._writer is not None
        self._writer.writelines(commands)
        await asyncio.wait_for(self._writer.drain(), self.timeout)
        parser = hiredis.Reader()
        replies: list[Any] = []
        wanted = len(commands)
        errors = []
        while len(replies) < wanted:
            data = await asyncio.wait_for(self._reader.read(1 << 16), self.timeout)
            if not data:
                raise ConnectionResetError("Redis closed the connection")
            parser.feed(data)
            reply = parser.gets()
            while reply is not False:
                if isinstance(reply, hiredis.ReplyError):
                    errors.append(str(reply))
                replies.append(reply)
                reply = parser.gets()
        if errors:
            raise RedisReplyError(errors)
        return replies

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
