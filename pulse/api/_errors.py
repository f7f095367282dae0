"""Errors of the HTTP API: every one answers JSON ``{"error": message, "parameter": name}``.

:class:`ApiError` is what handlers and the shared validation (:mod:`pulse.api._params`) raise;
:func:`error_middleware` turns it, aiohttp's own HTTP errors (an unknown path, a wrong method),
Redis being away (503) and any bug (500, logged) into that JSON, so that a client never gets
an HTML page or a stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """A request the API cannot answer: ``status`` (400 a bad parameter, 401, 404 an unknown
    device, metric or window, 503 a dependency away), a message for people and the name of
    the parameter at fault, if one is."""

    def __init__(self, status: int, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.parameter = parameter


def json_response(
    document: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """Every JSON answer of the API: ``document`` by orjson (integer keys as text)."""
    return web.Response(
        status=status,
        body=orjson.dumps(document, option=orjson.OPT_NON_STR_KEYS),
        content_type="application/json",
        headers=headers,
    )


def error_response(
    status: int, message: str, parameter: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    return json_response({"error": message, "parameter": parameter}, status, headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.message, exc.parameter, headers)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects pass through
            raise
        kept = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")}
        return error_response(exc.status, exc.reason, None, kept)
    except (RedisConnectionError, RedisTimeoutError) as exc:
        return error_response(503, f"Redis is unavailable: {type(exc).__name__}")
    except Exception:
        log.exception("API: %s %s failed", request.method, request.path)
        return error_response(500, "internal error (logged by the server)")
