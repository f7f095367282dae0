"""``GET /api/history/{device}/{metric}``: a series' closed windows in a time range.

Query: ``window`` (a configured tumbling or hopping window's label, default the first; another
is a 404: no such series), ``since`` and ``until`` (epoch seconds, ISO-8601, or a duration
before now such as ``15m``; defaults: ``until`` now, ``since`` as far back as Redis keeps a
series' history, ``PULSE_HISTORY_LENGTH`` windows; ``since`` after ``until`` is an empty
range). The windows whose start is in ``[since, until)``, oldest first, each with its
``source`` (pulse/history: Redis, the store, or the cache of the store); ``store_error`` says
why older windows are missing when the store could not answer (503 when nothing at all could
be answered). ``pulse history`` prints the same answer (:func:`history_answer`).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from pulse.api import _params, openapi
from pulse.api._context import CONTEXT
from pulse.api._errors import ApiError, json_response
from pulse.history import WINDOW_FIELDS, HistoryReader, HistoryStore
from pulse.redis_clients import RedisClient
from pulse.settings import Settings

routes = web.RouteTableDef()

MAX_TIME = 9_223_372_036.0
"""The latest time a window can start (InfluxDB's last nanosecond, in 2262)."""


def default_window(settings: Settings) -> str:
    """The first configured window that is not sliding (sliding windows have no history)."""
    for spec in settings.windows:
        if spec.kind != "sliding":
            return spec.label
    raise ApiError(404, "no window of PULSE_WINDOWS keeps a history (all are sliding)", "window")


async def history_answer(
    settings: Settings,
    client: RedisClient,
    store: HistoryStore | None,
    device: str,
    metric: str,
    window: str | None,
    since: str | None,
    until: str | None,
) -> dict[str, Any]:
    """The answer of ``/api/history`` (and ``pulse history``) to the texts given: each
    checked by pulse/api/_params (:class:`ApiError` naming the bad one), then read
    (pulse/history; the windows from Redis are JSON fragments for orjson to write)."""
    device = _params.device_name(device, "device")
    metric = _params.metric_name(metric, "metric")
    label = (
        _params.window_label(settings, window, "window", status=404)
        if window
        else default_window(settings)
    )
    spec = next(s for s in settings.windows if s.label == label)
    now = time.time()
    end = _params.time_bound(until, "until", now) if until else now
    start = (
        _params.time_bound(since, "since", now)
        if since
        else end - settings.history_length * spec.step_us / 1_000_000
    )
    # No window starts outside the contract's times (1970 to 2262): the store is asked for
    # nothing beyond them.
    start, end = min(max(start, 0.0), MAX_TIME), min(max(end, 0.0), MAX_TIME)
    reader = HistoryReader(client, settings.redis_prefix, store, settings.history_cache_ttl)
    found = await reader.read(device, metric, label, start, end)
    if found.store_error is not None and not found.windows:
        raise ApiError(503, f"the time-series store is unavailable: {found.store_error}")
    return {
        "device": device,
        "metric": metric,
        "window": label,
        "since": start,
        "until": end,
        "windows": found.windows,
        "sources": found.sources,
        "store_error": found.store_error,
    }


@routes.get("/api/history/{device}/{metric}")
async def history(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    query = request.query
    answer = await history_answer(
        context.settings,
        context.redis,
        context.store,
        request.match_info["device"],
        request.match_info["metric"],
        query.get("window"),
        query.get("since"),
        query.get("until"),
    )
    return json_response(answer)


ROUTES = list(routes)

_NUMBER = {"type": "number"}
_WINDOW = {
    "type": "object",
    "required": [*WINDOW_FIELDS, "source"],
    "properties": {
        **{name: _NUMBER for name in WINDOW_FIELDS},
        "count": {"type": "integer"},
        "source": {"enum": ["redis", "store", "cache"]},
    },
}
_TIME = {
    "schema": {
        "anyOf": [
            {"const": ""},  # empty: the default
            {"type": "string", "pattern": r"^[0-9]{1,10}(\.[0-9]{1,6})?$"},
            {"type": "string", "pattern": r"^[0-9]{1,6}(\.[0-9]{1,3})?(s|m|h|d)$"},
            {
                "type": "string",
                "pattern": r"^(19[7-9][0-9]|2[01][0-9]{2})-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
                r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?"
                r"(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])?$",
            },
        ]
    },
    "description": "Epoch seconds, ISO-8601 (no zone: UTC), or a duration before now (90s, 15m, "
    "1h, 2d).",
}
_NAME = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,128}$"}
PATHS: dict[str, Any] = {
    "/api/history/{device}/{metric}": {
        "get": {
            "summary": "A series' closed windows whose start is in [since, until), oldest first",
            "parameters": [
                {"name": "device", "in": "path", "required": True, "schema": _NAME},
                {"name": "metric", "in": "path", "required": True, "schema": _NAME},
                {
                    "name": "window",
                    "in": "query",
                    "schema": {"type": "string"},
                    "description": "A tumbling or hopping window of PULSE_WINDOWS (default: the "
                    "first); another is a 404.",
                },
                {"name": "since", "in": "query", **_TIME},
                {"name": "until", "in": "query", **_TIME},
            ],
            "responses": {
                "200": {
                    "description": "The windows, each with where it came from",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": [
                                    "device",
                                    "metric",
                                    "window",
                                    "since",
                                    "until",
                                    "windows",
                                    "sources",
                                    "store_error",
                                ],
                                "properties": {
                                    "device": {"type": "string"},
                                    "metric": {"type": "string"},
                                    "window": {"type": "string"},
                                    "since": _NUMBER,
                                    "until": _NUMBER,
                                    "windows": {"type": "array", "items": _WINDOW},
                                    "sources": {
                                        "type": "object",
                                        "properties": {
                                            name: {"type": "integer"}
                                            for name in ("redis", "store", "cache")
                                        },
                                    },
                                    "store_error": {"type": ["string", "null"]},
                                },
                            }
                        }
                    },
                },
                **{
                    code: {"$ref": "#/components/responses/Error"} for code in ("400", "401", "404")
                },
                "503": {
                    "description": "Redis away, or the store away and nothing to answer",
                    "content": {"application/json": {"schema": openapi.ERROR_SCHEMA}},
                },
            },
        }
    }
}
