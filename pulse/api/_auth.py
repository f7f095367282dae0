"""The API's token (``PULSE_API_TOKEN``): when set, every ``/api`` request but the sign-in and
the OpenAPI document carries it, as ``Authorization: Bearer TOKEN`` or as the session cookie.

The live page's EventSource cannot send headers, so the page signs in once (``POST
/api/session`` with ``{"token": ...}``) and the answer sets :data:`COOKIE`: an HMAC of the
token (never the token itself), HttpOnly and SameSite=Strict. Any process holding the same
token verifies it, so several ``pulse api`` behind a load balancer share sessions, and a new
token ends every session of the old one. Health, metrics and the page itself stay open.
"""

from __future__ import annotations

import hashlib
import hmac

import orjson
from aiohttp import web

from pulse.api._context import CONTEXT
from pulse.api._errors import ApiError, Handler

COOKIE = "pulse_session"
OPEN_PATHS = frozenset({"/api/session", "/api/openapi.json"})


def session_value(token: str) -> str:
    """The session cookie's value for ``token``."""
    return hmac.new(token.encode(), b"pulse-session-1", hashlib.sha256).hexdigest()


def _authorised(request: web.Request, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer ") and hmac.compare_digest(
        header.removeprefix("Bearer ").encode(), token.encode()
    ):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), session_value(token).encode())


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[CONTEXT].settings.api_token
    if (
        token
        and request.path.startswith("/api/")
        and request.path not in OPEN_PATHS
        and not _authorised(request, token)
    ):
        raise ApiError(401, "a token is needed: Authorization: Bearer TOKEN, or sign in")
    return await handler(request)


async def sign_in(request: web.Request) -> web.Response:
    """``POST /api/session`` ``{"token": ...}``: 204 with the session cookie, 401 otherwise."""
    token = request.app[CONTEXT].settings.api_token
    try:
        given = orjson.loads(await request.read())["token"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise ApiError(400, 'the body must be JSON {"token": "..."}', "token") from None
    if not isinstance(given, str):
        raise ApiError(400, "token: must be a string", "token")
    if token and not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(401, "wrong token", "token")
    response = web.Response(status=204)
    if token:
        response.set_cookie(
            COOKIE, session_value(token), httponly=True, samesite="Strict", path="/"
        )
    return response


async def sign_out(request: web.Request) -> web.Response:
    """``DELETE /api/session``: the cookie removed."""
    response = web.Response(status=204)
    response.del_cookie(COOKIE, path="/")
    return response


ROUTES = [web.post("/api/session", sign_in), web.delete("/api/session", sign_out)]

PATHS = {
    "/api/session": {
        "post": {
            "summary": "Sign in with the API token; sets the session cookie",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["token"],
                            "properties": {"token": {"type": "string"}},
                        }
                    }
                },
            },
            "responses": {
                "204": {"description": "Signed in (no token configured: nothing to do)"},
                "400": {"$ref": "#/components/responses/Error"},
                "401": {"$ref": "#/components/responses/Error"},
            },
        },
        "delete": {
            "summary": "Sign out: the session cookie removed",
            "responses": {"204": {"description": "Signed out"}},
        },
    }
}
