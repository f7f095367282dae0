"""Health and metrics of every Pulse process: ``/health/live``, ``/health/ready`` (and
``/health``, its alias), ``/metrics``.

``live`` answers 200 while the process runs and its event loop turns; ``ready`` answers 200
when the process can serve (a worker: its partitions assigned and recovered; ``pulse api``:
Redis answers) and 503 with the reason otherwise. Both list each dependency with its state
(Redis ``ok`` or ``unavailable``; the registry's PostgreSQL likewise where the process
serves the registry; a worker's sinks as in pulse/sinks/_base.py), so a
dependency away shows without making ``live`` fail, which would only get the process
restarted.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pulse.api._context import CONTEXT, ApiContext
from pulse.api._errors import json_response

PING_TIMEOUT = 1.0
"""Seconds Redis gets to answer a health check's PING."""


async def _dependencies(context: ApiContext) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if context.checks_redis:
        try:
            await asyncio.wait_for(context.redis.ping(), PING_TIMEOUT)
            found["redis"] = {"state": "ok"}
        except Exception as exc:
            found["redis"] = {"state": "unavailable", "reason": type(exc).__name__}
    if context.device_registry is not None:
        found["registry"] = context.device_registry.health.document()
    return found


async def _document(context: ApiContext) -> tuple[bool, dict[str, Any]]:
    readiness = await context.readiness()
    dependencies = await _dependencies(context)
    ready, reason = readiness.ready, readiness.reason
    redis = dependencies.get("redis", {"state": "ok"})
    if ready and context.serves_from_redis and redis["state"] != "ok":
        ready, reason = False, "Redis is unavailable"
    document = {"ready": ready, "reason": reason, **readiness.detail}
    document["dependencies"] = dependencies
    return ready, document


async def live(request: web.Request) -> web.Response:
    _, document = await _document(request.app[CONTEXT])
    document["live"] = True
    return json_response(document)


async def ready(request: web.Request) -> web.Response:
    is_ready, document = await _document(request.app[CONTEXT])
    return json_response(document, 200 if is_ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[CONTEXT].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


ROUTES = [
    web.get("/health/live", live),
    web.get("/health/ready", ready),
    web.get("/health", ready),
    web.get("/metrics", metrics),
]

_HEALTH = {
    "type": "object",
    "required": ["ready", "reason", "dependencies"],
    "properties": {
        "ready": {"type": "boolean"},
        "reason": {"type": "string"},
        "dependencies": {"type": "object"},
    },
}


def _health_path(summary: str, codes: tuple[str, ...]) -> dict[str, Any]:
    response = {
        "description": "The process's health",
        "content": {"application/json": {"schema": _HEALTH}},
    }
    return {"get": {"summary": summary, "responses": dict.fromkeys(codes, response)}}


PATHS = {
    "/health/live": _health_path("200 while the process runs", ("200",)),
    "/health/ready": _health_path("200 when the process can serve, else 503", ("200", "503")),
    "/health": _health_path("Alias of /health/ready", ("200", "503")),
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "responses": {
                "200": {"description": "Text format", "content": {"text/plain": {"schema": {}}}}
            },
        }
    },
}
