"""How every Redis client of Pulse connects: one set of options from the ``PULSE_REDIS_*`` settings.

- :func:`tls_context`: the TLS context of a ``rediss://`` URL (:func:`pulse.tls.client_context`
  with the ``PULSE_REDIS_SSL_*`` files: the server's certificate and host name verified, the
  client certificate presented);
- :func:`resp_options`: the password and TLS context of the Redis sink's own connection
  (:class:`pulse.sinks._resp.RespPipeline`);
- :func:`redis_client`: redis-py's client with the same password and TLS context (``pulse
  state``, the HTTP API, the dead-letter monitor);
- :func:`check_connection`: one connection made as those do before the worker starts, so that
  a wrong CA, a missing client certificate or a wrong password stops start-up with one message
  that says so.

The password is the one in ``PULSE_REDIS_URL`` or the content of ``PULSE_REDIS_PASSWORD_FILE``
(:attr:`Settings.redis_password`). No message built here holds it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection, parse_url

from pulse import tls
from pulse.settings import Settings
from pulse.sinks._resp import RedisRefused, RedisReplyError, RespPipeline, pack

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 15.0
"""Seconds :func:`check_connection` gives Redis to connect, shake hands and answer."""


class RedisConnectError(RuntimeError):
    """Redis refused Pulse's TLS settings or credentials; the message names the problem (e.g.
    ``TLS certificate verify failed``, ``WRONGPASS``) and no secret."""


def uses_tls(settings: Settings) -> bool:
    return settings.redis_url.startswith("rediss://")


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of a ``rediss://`` URL (None for the others); a file that does not load
    raises :class:`pulse.settings.SettingsError` naming its variable."""
    if not uses_tls(settings):
        return None
    return tls.client_context(_tls_files(settings))


def _tls_files(settings: Settings) -> tls.TLSFiles:
    return tls.TLSFiles(
        settings.redis_ssl_cafile,
        settings.redis_ssl_certfile,
        settings.redis_ssl_keyfile,
        "PULSE_REDIS_SSL_CAFILE",
        "PULSE_REDIS_SSL_CERTFILE",
        "PULSE_REDIS_SSL_KEYFILE",
    )


def resp_options(settings: Settings) -> dict[str, Any]:
    """The keywords of the sink's :class:`RespPipeline` besides the URL: ``password`` (None:
    the URL's, if any) and ``tls``. Each call builds a new TLS context."""
    return {"password": settings.redis_password or None, "tls": tls_context(settings)}


class _TLSConnection(SSLConnection):
    """redis-py's TLS connection on Pulse's TLS context (:func:`tls_context`), so that redis-py
    verifies the server exactly as the sink's own connection does."""

    def __init__(self, *, tls_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ssl_context.context = tls_context  # what RedisSSLContext.get() hands out


CLIENT_CONNECTIONS = 64
"""Connections a redis-py client opens at most; a request that finds them all busy waits
for one (up to :data:`CLIENT_WAIT` seconds) rather than failing at once."""
CLIENT_WAIT = 5.0
"""Seconds a request waits for a free connection, or for Redis to connect or answer, before
it fails (the API answers 503)."""


def redis_client(settings: Settings) -> aioredis.Redis:
    """A redis-py client of ``PULSE_REDIS_URL`` with the password and TLS context of
    :func:`resp_options`; ``aclose()`` closes its connections."""
    options: dict[str, Any] = dict(parse_url(settings.redis_url))
    options.setdefault("socket_connect_timeout", CLIENT_WAIT)
    options.setdefault("socket_timeout", CLIENT_WAIT)
    if settings.redis_password:
        options["password"] = settings.redis_password
    context = tls_context(settings)
    if context is not None:
        options["connection_class"] = _TLSConnection
        options["tls_context"] = context
    pool = aioredis.BlockingConnectionPool(
        max_connections=CLIENT_CONNECTIONS, timeout=CLIENT_WAIT, **options
    )
    return aioredis.Redis.from_pool(pool)


def address(settings: Settings) -> str:
    """Where Redis is, for messages: ``host:port`` or the socket's path."""
    options = parse_url(settings.redis_url)
    if "path" in options:
        return str(options["path"])
    return f"{options.get('host', 'localhost')}:{options.get('port', 6379)}"


def describe(settings: Settings) -> str:
    """How the clients connect, for messages: TLS or not, the user, where the password comes
    from, the CA and client certificate files."""
    options = parse_url(settings.redis_url)
    parts = ["TLS" if uses_tls(settings) else "no TLS"]
    if options.get("username"):
        parts.append(f"as user {options['username']!r}")
    if settings.redis_password_file:
        parts.append(f"password file {settings.redis_password_file!r}")
    elif settings.redis_password:
        parts.append("password in PULSE_REDIS_URL")
    if uses_tls(settings):
        cafile = settings.redis_ssl_cafile
        parts.append(f"CA file {cafile!r}" if cafile else "the system's CAs")
        if settings.redis_ssl_certfile:
            parts.append(f"client certificate {settings.redis_ssl_certfile!r}")
    return ", ".join(parts)


async def check_connection(settings: Settings, timeout: float = CHECK_TIMEOUT) -> None:
    """Connect as every client does (TLS handshake, AUTH, SELECT) and PING; does nothing for a
    ``redis://`` URL without a password (nothing to refuse).

    Raises :class:`RedisConnectError` when Redis failed the TLS handshake, refused the
    credentials or the database, or dropped the connection (a client certificate required,
    or a port that does not speak TLS), within ``timeout`` seconds. A Redis that cannot be
    reached at all (refused, no answer) is only logged: the sink waits for it, as without
    security.
    """
    if not (uses_tls(settings) or settings.redis_password):
        return
    connection = RespPipeline(settings.redis_url, timeout, **resp_options(settings))
    try:
        await connection.execute([pack("PING")])
    except (OSError, asyncio.IncompleteReadError, RedisReplyError) as exc:
        reason, refused = _explain(exc, settings, timeout)
        where = settings.redact(f"{address(settings)}: {reason}")
        if not refused:
            log.warning("could not reach Redis at %s", where)
            return
        raise RedisConnectError(
            f"cannot connect to Redis ({describe(settings)}): {where}"
        ) from None
    finally:
        await connection.close()


def _explain(exc: BaseException, settings: Settings, timeout: float) -> tuple[str, bool]:
    """What went wrong, in words, and whether Redis refused Pulse (rather than being away)."""
    handshake = tls.handshake_failure(exc, "server", _tls_files(settings))
    if handshake is not None:
        return handshake, True
    if isinstance(exc, RedisRefused):
        return str(exc).removeprefix("Redis refused the connection: "), True
    if isinstance(exc, RedisReplyError):
        if exc.errors[0].startswith("NOAUTH"):
            return (
                f"{exc.errors[0]} (Redis wants a password: set it in PULSE_REDIS_URL or "
                "PULSE_REDIS_PASSWORD_FILE)",
                True,
            )
        return f"Redis answered with an error: {exc.errors[0]}", True
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s", False
    if isinstance(exc, ConnectionResetError | BrokenPipeError | asyncio.IncompleteReadError):
        # It accepted the connection, then dropped it: a retry would fare no better.
        hint = (
            "whether it requires a client certificate (PULSE_REDIS_SSL_CERTFILE), and that "
            "this port speaks TLS"
            if uses_tls(settings)
            else "whether this port speaks TLS (then use a rediss:// URL)"
        )
        return (
            "Redis closed the connection during the TLS handshake or the first command: "
            f"check {hint}",
            True,
        )
    # Refused, unreachable, no such host or socket: Redis is away, which the sink waits out.
    return f"{type(exc).__name__}: {exc}", False
