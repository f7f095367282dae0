"""The live state of devices from Redis: ``/api/devices``, ``/api/devices/{device}``,
``/api/top/{window}/{metric}``, ``/api/dead-letters``; and the worker's old paths
(``/state/{device}``, ``/top/{window}/{metric}``), which redirect to them."""

from __future__ import annotations

import re

from aiohttp import web

from pulse import live_state
from pulse.api import _params
from pulse.api._context import CONTEXT
from pulse.api._errors import ApiError, json_response

MAX_PAGE = 1000
"""Devices per page of ``/api/devices`` at most."""


def _cursor(text: str | None) -> tuple[float, str] | None:
    """``{score}:{device}`` (the last device of the previous page) -> (score, device)."""
    if not text:
        return None
    if _CURSOR.match(text) is None:
        raise ApiError(400, "cursor: not a cursor this API gave", "cursor")
    score, _, device = text.partition(":")
    return float(score), device


async def devices(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    query = request.query
    prefix = query.get("prefix", "")
    if prefix:
        _params.device_name(prefix, "prefix")
    page, position = await live_state.devices_page(
        context.redis,
        context.settings,
        prefix,
        _cursor(query.get("cursor")),
        _params.limit(query.get("limit"), "limit", 100, MAX_PAGE),
    )
    cursor = None if position is None else f"{position[0]!r}:{position[1]}"
    return json_response({"devices": page, "next_cursor": cursor})


async def device(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    name = _params.device_name(request.match_info["device"])
    state = await live_state.device_state(
        context.redis, context.settings, name, context.known_metrics
    )
    if not state["latest"]:
        raise ApiError(404, f"device {name!r}: no live state (never seen, or expired)", "device")
    return json_response(state)


async def top(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    window = _params.window_label(context.settings, request.match_info["window"], status=404)
    metric = _params.metric_name(request.match_info["metric"])
    n = _params.limit(request.query.get("n"), "n", 10, MAX_PAGE)
    order = _params.choice(request.query.get("order"), "order", ("desc", "asc"))
    rows = await live_state.top_devices(
        context.redis, context.settings, window, metric, n, descending=order == "desc"
    )
    if rows is None:
        raise ApiError(404, f"metric {metric!r}: no closed {window} window yet", "metric")
    return json_response(
        {
            "window": window,
            "metric": metric,
            "order": order,
            "devices": [{"device": d, "mean": mean} for d, mean in rows],
        }
    )


async def dead_letters(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    return json_response(await live_state.dead_letters(context.redis, context.settings))


async def old_state(request: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect(f"/api/devices/{request.match_info['device']}")


async def old_top(request: web.Request) -> web.Response:
    window, metric = request.match_info["window"], request.match_info["metric"]
    raise web.HTTPPermanentRedirect(f"/api/top/{window}/{metric}")


ROUTES = [
    web.get("/api/devices", devices),
    web.get("/api/devices/{device}", device),
    web.get("/api/top/{window:.+}/{metric:[^/]+}", top),
    web.get("/api/dead-letters", dead_letters),
    web.get("/state/{device}", old_state),
    web.get("/top/{window:.+}/{metric:[^/]+}", old_top),
]

_NAME = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,128}$"}
_CURSOR_PATTERN = "^(-?[0-9]{1,20}(\\.[0-9]{1,20})?(e[-+]?[0-9]{1,3})?:[A-Za-z0-9_.-]{1,128})?$"
_CURSOR = re.compile(_CURSOR_PATTERN)
_WINDOW_LABEL = {
    "type": "string",
    "pattern": "^[0-9]{1,9}(ms|s|m|h|d)(/[0-9]{1,9}(ms|s|m|h|d))?$",
    "description": "A configured tumbling or hopping window (PULSE_WINDOWS), e.g. 10s, 5m/1m",
}
_NUMBER = {"type": "number"}
_WINDOW = {
    "type": "object",
    "properties": {
        name: ({"type": "integer"} if name == "count" else _NUMBER)
        for name in (
            "count", "sum", "min", "max", "mean", "first", "last", "p50", "p95", "p99",
            "start", "end",
        )
    },
    "required": ["count", "start", "end"],
}  # fmt: skip
_LATEST = {
    "type": "object",
    "additionalProperties": {
        "type": "object",
        "properties": {"value": _NUMBER, "ts": {"type": ["number", "null"]}},
        "required": ["value", "ts"],
    },
}
_BY_WINDOW = {
    "type": "object",
    "additionalProperties": {"type": "object", "additionalProperties": _WINDOW},
}
_ERRORS = {code: {"$ref": "#/components/responses/Error"} for code in ("400", "401", "404", "503")}

PATHS = {
    "/api/devices": {
        "get": {
            "summary": "Known devices, most recently seen first, with their latest values",
            "parameters": [
                {
                    "name": "prefix",
                    "in": "query",
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{0,128}$"},
                },
                {
                    "name": "cursor",
                    "in": "query",
                    "schema": {"type": "string", "pattern": _CURSOR_PATTERN},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                },
            ],
            "responses": {
                "200": {
                    "description": "A page of devices",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["devices", "next_cursor"],
                                "properties": {
                                    "devices": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["device", "last_seen", "latest"],
                                            "properties": {
                                                "device": _NAME,
                                                "last_seen": _NUMBER,
                                                "latest": _LATEST,
                                            },
                                        },
                                    },
                                    "next_cursor": {"type": ["string", "null"]},
                                },
                            }
                        }
                    },
                },
                **_ERRORS,
            },
        }
    },
    "/api/devices/{device}": {
        "get": {
            "summary": "A device's latest values, open, last closed and sliding windows",
            "parameters": [{"name": "device", "in": "path", "required": True, "schema": _NAME}],
            "responses": {
                "200": {
                    "description": "The device's live state",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["device", "latest", "open", "closed", "sliding"],
                                "properties": {
                                    "device": _NAME,
                                    "latest": _LATEST,
                                    "open": _BY_WINDOW,
                                    "closed": _BY_WINDOW,
                                    "sliding": _BY_WINDOW,
                                },
                            }
                        }
                    },
                },
                **_ERRORS,
            },
        }
    },
    "/api/top/{window}/{metric}": {
        "get": {
            "summary": "Devices ranked by the mean of their last closed window",
            "parameters": [
                {"name": "window", "in": "path", "required": True, "schema": _WINDOW_LABEL},
                {"name": "metric", "in": "path", "required": True, "schema": _NAME},
                {
                    "name": "n",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                },
                {"name": "order", "in": "query", "schema": {"enum": ["desc", "asc"]}},
            ],
            "responses": {
                "200": {
                    "description": "The board",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["window", "metric", "order", "devices"],
                                "properties": {
                                    "window": {"type": "string"},
                                    "metric": _NAME,
                                    "order": {"enum": ["desc", "asc"]},
                                    "devices": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["device", "mean"],
                                            "properties": {"device": _NAME, "mean": _NUMBER},
                                        },
                                    },
                                },
                            }
                        }
                    },
                },
                **_ERRORS,
            },
        }
    },
    "/api/dead-letters": {
        "get": {
            "summary": "Dead letters by reason, and the latest ones",
            "responses": {
                "200": {
                    "description": "Counts and recent records",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["by_reason", "recent"],
                                "properties": {
                                    "by_reason": {
                                        "type": "object",
                                        "additionalProperties": {"type": "integer"},
                                    },
                                    "recent": {"type": "array"},
                                },
                            }
                        }
                    },
                },
                **_ERRORS,
            },
        }
    },
}
