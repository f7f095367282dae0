"""``GET /api/search/{kind}`` and ``GET /api/stats/{kind}``: the search indices
(pulse indexer, docs/search.md) asked through OpenSearch (``PULSE_SEARCH_URL``).

``kind``: ``alerts``, ``dead-letters`` or ``windows`` (another is a 404).

Search: ``q`` (full text: a dead letter's detail and value; the names of an alert or a
window), the filters of the kind (``device``, ``site``, ``metric``; dead letters ``reason``;
alerts ``rule``, ``severity``, ``state``; windows ``window``; another is a 400), ``since``
and ``until`` (epoch seconds, ISO-8601 or a duration before now; the event time in
``[since, until)``; empty: absent), ``limit`` (1-500, 50) and ``cursor`` (the ``cursor`` of
the page before: ``{time}:{id}`` of its last document). Newest first; each document as
indexed. The OpenAPI document lists each kind's path with its own filters.

Stats: ``by`` (one of the kind's filters: the term counted), ``interval`` (a duration, 1h;
at most 500 intervals: a longer range is cut to the latest 500), ``since`` (default a day
before ``until``) and ``until`` (default now), ``size`` (terms per interval, 1-100, 10),
the same filters and ``q``, and for windows ``aggregate`` (one of the ten, ``mean``): per
interval the documents per term (and for windows the mean of the aggregate per term).

OpenSearch away answers 503; no index yet answers no documents. ``pulse search`` prints the
same answers (:func:`search_answer`, :func:`stats_answer`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from models.outputs import AGGREGATES
from pulse.api import _params
from pulse.api._context import CONTEXT
from pulse.api._errors import ApiError, json_response
from pulse.api._history import _TIME
from pulse.search import queries
from pulse.search.documents import KINDS
from pulse.search.indices import alias
from pulse.settings import Settings

if TYPE_CHECKING:
    from opensearchpy import AsyncOpenSearch

MAX_LIMIT = 500
MAX_INTERVALS = 500
MAX_SIZE = 100
MAX_Q_CHARS = 256
MAX_TIME_S = 9_223_372_036.0
"""The latest event time Pulse has (2262-04-11, InfluxDB's last nanosecond)."""


class ClientHolder:
    """The application's OpenSearch client, made on first use, closed at its cleanup."""

    def __init__(self) -> None:
        self.client: AsyncOpenSearch | None = None


CLIENT: web.AppKey[ClientHolder] = web.AppKey("pulse_search_client", ClientHolder)


def _kind(text: str) -> str:
    if text not in KINDS:
        raise ApiError(404, f"kind: {text[:40]!r} is not one of {', '.join(KINDS)}", "kind")
    return text


_TIME_SCHEMA: Any = _TIME["schema"]
_TIME_FORMS = [re.compile(form["pattern"]) for form in _TIME_SCHEMA["anyOf"] if "pattern" in form]
"""The forms of a time the OpenAPI document gives (pulse/api/_history.py's): a time in
another form is refused, so that the document and the answers agree."""


def _time(text: str, parameter: str, now: float) -> float:
    if not any(form.match(text) for form in _TIME_FORMS):
        raise ApiError(
            400,
            f"{parameter}: {text[:40]!r} is not a time (epoch seconds with at most 6 decimals, "
            "ISO-8601 to the second or finer, or a duration before now such as 15m, 1h, 2d)",
            parameter,
        )
    return _params.time_bound(text, parameter, now)


def _filters(
    kind: str, query: Mapping[str, str], now: float, since_default: float | None
) -> queries.Filters:
    """The filters of ``query`` for ``kind``: each a name; a filter of another kind is a 400.
    An empty ``since``, ``until``, ``q`` counts as absent."""
    known = queries.FILTERS[kind]
    every = {name for names in queries.FILTERS.values() for name in names}
    terms: dict[str, str] = {}
    for name in sorted(every):
        if name not in query:
            continue
        if name not in known:
            raise ApiError(
                400, f"{name}: not a filter of {kind} (filters: {', '.join(known)})", name
            )
        terms[known[name]] = _params.term_name(query[name], name)
    q = query.get("q") or None
    if q is not None and len(q) > MAX_Q_CHARS:
        raise ApiError(400, f"q: at most {MAX_Q_CHARS} characters", "q")
    if q is not None and not q.strip():
        q = None
    until_text, since_text = query.get("until"), query.get("since")
    until = _time(until_text, "until", now) if until_text else None
    since = _time(since_text, "since", now) if since_text else None
    if since is None and since_default is not None:
        since = (until if until is not None else now) - since_default
    # No event time lies outside the contract's (1970 to 2262): nothing is asked beyond it.
    since = None if since is None else min(max(since, 0.0), MAX_TIME_S)
    until = None if until is None else min(max(until, 0.0), MAX_TIME_S)
    return queries.Filters(terms, q, since, until)


def search_query(
    kind: str, query: Mapping[str, str]
) -> tuple[queries.Filters, int, list[Any] | None]:
    """The validated parameters of ``/api/search/{kind}``: (filters, limit, search_after)."""
    filters = _filters(kind, query, time.time(), None)
    limit = _params.limit(query.get("limit"), "limit", 50, MAX_LIMIT)
    after = None
    if "cursor" in query:
        try:
            after = queries.cursor_of(query["cursor"])
        except ValueError as exc:
            raise ApiError(400, f"cursor: {exc}", "cursor") from None
    return filters, limit, after


def stats_query(kind: str, query: Mapping[str, str]) -> dict[str, Any]:
    """The validated parameters of ``/api/stats/{kind}``: the keywords of
    :func:`pulse.search.queries.stats_body`. At most :data:`MAX_INTERVALS` intervals: a
    longer range is cut to the latest ones (``since`` later)."""
    now = time.time()
    if "by" not in query:
        raise ApiError(400, f"by: required, one of {', '.join(queries.TERMS[kind])}", "by")
    by = _params.choice(query["by"], "by", tuple(queries.TERMS[kind]))
    interval = _params.duration(query.get("interval", "1h"), "interval")
    if interval < 1 or interval != int(interval):
        raise ApiError(400, "interval: a whole number of seconds, at least 1s", "interval")
    filters = _filters(kind, query, now, 86_400.0)
    until = filters.until if filters.until is not None else now
    assert filters.since is not None
    since = max(filters.since, until - MAX_INTERVALS * interval)
    size = _params.limit(query.get("size"), "size", 10, MAX_SIZE)
    aggregate = None
    if kind == "windows":
        aggregate = _params.choice(query.get("aggregate", "mean"), "aggregate", AGGREGATES)
    elif "aggregate" in query:
        raise ApiError(400, "aggregate: only for windows", "aggregate")
    return {
        "filters": queries.Filters(filters.terms, filters.q, since, until),
        "by": by,
        "interval_s": int(interval),
        "size": size,
        "aggregate": aggregate,
    }


async def _ask(
    client: AsyncOpenSearch, index: str, body: dict[str, Any], *, cached: bool = True
) -> Any:
    """``body`` asked of ``index`` (no index yet: no documents); ``cached=False`` keeps the
    answer out of OpenSearch's shard request cache (see :func:`stats_answer`)."""
    from opensearchpy.exceptions import TransportError

    params = {"ignore_unavailable": "true", "allow_no_indices": "true"}
    if not cached:
        params["request_cache"] = "false"
    try:
        return await client.search(index=index, body=body, params=params)
    except TransportError as exc:
        status = exc.status_code if isinstance(exc.status_code, int) else None
        if status == 400:
            raise ApiError(400, f"OpenSearch refused the query: {_why(exc)}") from None
        raise ApiError(503, f"OpenSearch is unavailable: {exc.status_code} {exc.error}") from None


def _why(exc: Any) -> str:
    """OpenSearch's reason for refusing a query: its first root cause, else its error."""
    info = exc.info if isinstance(exc.info, dict) else {}
    error = info.get("error")
    if not isinstance(error, dict):
        return str(exc.error)
    causes = error.get("root_cause")
    cause = causes[0] if isinstance(causes, list) and causes else error.get("caused_by")
    if isinstance(cause, dict):
        return f"{cause.get('type')}: {cause.get('reason')}"
    return str(exc.error)


async def search_answer(
    settings: Settings, client: AsyncOpenSearch, kind: str, query: Mapping[str, str]
) -> dict[str, Any]:
    """The answer of ``/api/search/{kind}`` (and ``pulse search``) to ``query`` (texts)."""
    kind = _kind(kind)
    filters, limit, after = search_query(kind, query)
    body = queries.search_body(kind, filters, limit, after)
    response = await _ask(client, alias(settings.search_prefix, kind), body)
    return queries.search_answer(kind, response, limit)


async def stats_answer(
    settings: Settings, client: AsyncOpenSearch, kind: str, query: Mapping[str, str]
) -> dict[str, Any]:
    """The answer of ``/api/stats/{kind}`` (and ``pulse search --by``) to ``query``."""
    kind = _kind(kind)
    wanted = stats_query(kind, query)
    filters = wanted["filters"]
    if filters.since >= filters.until:  # an empty range: nothing to ask
        return queries.stats_answer(
            kind, wanted["by"], wanted["interval_s"], filters, {}, wanted["aggregate"]
        )
    body = queries.stats_body(
        kind, wanted["filters"], wanted["by"], wanted["interval_s"], wanted["size"],
        wanted["aggregate"],
    )  # fmt: skip
    # Never from the shard request cache: OpenSearch 2.19 cannot read back a cached
    # aggregation on a flat_object field (``tags.site``): "Unknown NamedWriteable
    # [org.opensearch.search.DocValueFormat][flat_object]", a 400 for the same query that
    # was answered the first time. The counts change with every document anyway.
    response = await _ask(client, alias(settings.search_prefix, kind), body, cached=False)
    return queries.stats_answer(
        kind, wanted["by"], wanted["interval_s"], wanted["filters"], response, wanted["aggregate"]
    )


def _client(app: web.Application) -> AsyncOpenSearch:
    holder = app[CLIENT]
    if holder.client is None:
        from pulse.search.client import search_client

        holder.client = search_client(app[CONTEXT].settings, timeout=10.0)
    return holder.client


async def close_client(app: web.Application) -> None:
    """Close the application's OpenSearch client, if it made one."""
    holder = app[CLIENT]
    if holder.client is not None:
        await holder.client.close()
        holder.client = None


async def search(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    client = _client(request.app)
    kind = request.match_info["kind"]
    return json_response(await search_answer(context.settings, client, kind, request.query))


async def stats(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    client = _client(request.app)
    kind = request.match_info["kind"]
    return json_response(await stats_answer(context.settings, client, kind, request.query))


ROUTES = [web.get("/api/search/{kind}", search), web.get("/api/stats/{kind}", stats)]

_NAME = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,128}$"}
_Q = {
    "name": "q",
    "in": "query",
    "schema": {"type": "string", "maxLength": MAX_Q_CHARS},
    "description": "Full text: a dead letter's detail and value, the names of the others",
}
_ERRORS = {code: {"$ref": "#/components/responses/Error"} for code in ("400", "401", "503")}


def _selecting(kind: str) -> list[dict[str, Any]]:
    """The parameters that select a kind's documents: full text, its filters, the range."""
    return [
        _Q,
        *({"name": name, "in": "query", "schema": _NAME} for name in queries.FILTERS[kind]),
        {"name": "since", "in": "query", **_TIME},
        {"name": "until", "in": "query", **_TIME},
    ]


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_PAGE = {
    "type": "object",
    "required": ["kind", "total", "total_exact", "documents", "cursor"],
    "properties": {
        "kind": {"enum": list(KINDS)},
        "total": {"type": "integer"},
        "total_exact": {"type": "boolean"},
        "documents": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "time"],
                "properties": {"id": {"type": "string"}, "time": {"type": "integer"}},
            },
        },
        "cursor": {"type": ["string", "null"], "pattern": queries.CURSOR_PATTERN},
    },
}
_TERM = {
    "type": "object",
    "required": ["key", "count"],
    "properties": {
        "key": {"type": "string"},
        "count": {"type": "integer"},
        "value": {"type": ["number", "null"], "description": "windows: the aggregate's mean"},
    },
}
_STATS = {
    "type": "object",
    "required": ["kind", "by", "interval", "since", "until", "aggregate", "total", "intervals"],
    "properties": {
        "kind": {"enum": list(KINDS)},
        "by": {"type": "string"},
        "interval": {"type": "integer"},
        "since": {"type": "number"},
        "until": {"type": "number"},
        "aggregate": {"type": ["string", "null"]},
        "total": {"type": "integer"},
        "intervals": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["start", "count", "terms", "other", "error_bound"],
                "properties": {
                    "start": {"type": "number"},
                    "count": {"type": "integer"},
                    "terms": {"type": "array", "items": _TERM},
                    "other": {"type": "integer"},
                    "error_bound": {"type": "integer"},
                },
            },
        },
    },
}

PATHS: dict[str, Any] = {}
for _kind_name in KINDS:
    PATHS[f"/api/search/{_kind_name}"] = {
        "get": {
            "summary": f"Indexed {_kind_name}, newest first, a page at a time",
            "parameters": [
                *_selecting(_kind_name),
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                },
                {
                    "name": "cursor",
                    "in": "query",
                    "schema": {"type": "string", "pattern": queries.CURSOR_PATTERN},
                    "description": "The cursor of the page before",
                },
            ],
            "responses": {"200": _json("A page of documents", _PAGE), **_ERRORS},
        }
    }
    _stats_parameters = [
        *_selecting(_kind_name),
        {"name": "by", "in": "query", "required": True,
         "schema": {"enum": list(queries.TERMS[_kind_name])}},
        {"name": "interval", "in": "query",
         "schema": {"type": "string", "pattern": "^[1-9][0-9]{0,5}(s|m|h|d)$"}},
        {"name": "size", "in": "query",
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_SIZE}},
    ]  # fmt: skip
    if _kind_name == "windows":
        _stats_parameters.append(
            {"name": "aggregate", "in": "query", "schema": {"enum": list(AGGREGATES)}}
        )
    PATHS[f"/api/stats/{_kind_name}"] = {
        "get": {
            "summary": f"Indexed {_kind_name} per term and interval"
            + (" (and the mean of an aggregate)" if _kind_name == "windows" else ""),
            "parameters": _stats_parameters,
            "responses": {"200": _json("Counts per interval and term", _STATS), **_ERRORS},
        }
    }
