"""The OpenAPI 3.1 document of the API (``GET /api/openapi.json``): the path items each route
module declares beside its routes (``PATHS``), joined, so a route and its description change
together."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiohttp import web

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "parameter"],
    "properties": {"error": {"type": "string"}, "parameter": {"type": ["string", "null"]}},
}


def document(paths: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    joined: dict[str, Any] = {}
    for part in paths:
        joined.update(part)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Pulse", "version": "1"},
        "paths": joined,
        "components": {
            "responses": {
                "Error": {
                    "description": "An error: its message, and the parameter at fault if any",
                    "content": {"application/json": {"schema": ERROR_SCHEMA}},
                }
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "pulse_session"},
            },
        },
    }


def route(paths: Iterable[Mapping[str, Any]]) -> web.RouteDef:
    body = orjson.dumps(document(paths))

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    return web.get("/api/openapi.json", openapi)
