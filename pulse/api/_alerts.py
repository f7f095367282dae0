"""``GET /api/alerts``: the alerts firing now, from Redis (``P:alerts:active``, written by the
alerts writer from the ``alerts`` topic: pulse/sinks/alerts.py).

Each alert is its firing transition as the topic holds it (id, rule, device, site, labels,
metric, window, start, end, aggregate, value, threshold, state, severity, silenced), the
most recent first. Silenced alerts are left out unless ``?all=true``; ``?device=``,
``?site=`` and ``?severity=`` keep only those of that device, site or severity.
``pulse alerts`` prints the same answer (:func:`alerts_answer`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from pulse import live_state
from pulse.api import _params
from pulse.api._context import CONTEXT
from pulse.api._errors import json_response
from pulse.redis_clients import RedisClient
from pulse.settings import Settings


def alerts_query(query: Mapping[str, str]) -> dict[str, Any]:
    """The validated parameters of ``/api/alerts`` (and ``pulse alerts``) from their texts:
    the keywords of :func:`pulse.live_state.active_alerts`. Raises ApiError (400) naming a
    bad one."""
    return {
        "include_silenced": _params.flag(query.get("all"), "all"),
        "device": _params.device_name(query["device"]) if "device" in query else None,
        "site": _params.site_name(query["site"]) if "site" in query else None,
        "severity": _params.severity_name(query["severity"]) if "severity" in query else None,
    }


async def alerts_answer(
    settings: Settings, client: RedisClient, query: Mapping[str, str]
) -> dict[str, Any]:
    """``{"alerts": [...]}`` for the parameters ``query`` (texts, as in the URL)."""
    wanted = alerts_query(query)
    return {"alerts": await live_state.active_alerts(client, settings, **wanted)}


async def alerts(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    return json_response(await alerts_answer(context.settings, context.redis, request.query))


ROUTES = [web.get("/api/alerts", alerts)]

_NAME = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,128}$"}
_NUMBER = {"type": "number"}
_ALERT = {
    "type": "object",
    "required": [
        "id", "rule", "device", "site", "labels", "metric", "window", "start", "end",
        "aggregate", "value", "threshold", "state", "severity", "silenced",
    ],
    "properties": {
        "id": {"type": "string"},
        "rule": _NAME,
        "device": _NAME,
        "site": {"type": ["string", "null"]},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "metric": _NAME,
        "window": {"type": ["string", "null"], "description": "null: an absence rule"},
        "start": _NUMBER,
        "end": _NUMBER,
        "aggregate": {"type": ["string", "null"]},
        "value": {"type": ["number", "null"]},
        "threshold": _NUMBER,
        "state": {"enum": ["firing"]},
        "severity": _NAME,
        "silenced": {"type": "boolean"},
    },
}  # fmt: skip

PATHS = {
    "/api/alerts": {
        "get": {
            "summary": "The alerts firing now, the most recent first (each its firing transition)",
            "parameters": [
                {
                    "name": "all",
                    "in": "query",
                    "schema": {"enum": ["true", "false"]},
                    "description": "true: silenced alerts too",
                },
                {"name": "device", "in": "query", "schema": _NAME},
                {"name": "site", "in": "query", "schema": _NAME},
                {"name": "severity", "in": "query", "schema": _NAME},
            ],
            "responses": {
                "200": {
                    "description": "The active alerts",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["alerts"],
                                "properties": {"alerts": {"type": "array", "items": _ALERT}},
                            }
                        }
                    },
                },
                **{
                    code: {"$ref": "#/components/responses/Error"} for code in ("400", "401", "503")
                },
            },
        }
    }
}
