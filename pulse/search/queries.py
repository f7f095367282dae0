"""The questions the search API and ``pulse search`` ask OpenSearch, and their answers.

Pure: request bodies from validated parameters, answers from OpenSearch's responses; the
HTTP side is pulse/api/_search.py. Every query names the kind's alias
(pulse/search/indices.py), never a daily index.

* :func:`search_body`: documents of a kind, newest first (``time`` descending, ties by
  ``id``), filtered by terms and a time range ``[since, until)``, with full text ``q``
  (``simple_query_string``: never a syntax error) over the kind's :data:`TEXT_FIELDS`;
  paged with ``search_after`` (:func:`cursor_text` and :func:`cursor_of`: the last
  document's sort values, opaque to clients).
* :func:`stats_body`: per interval of ``time`` (``date_histogram`` with a fixed interval,
  intervals without documents included), the documents per term of ``by`` (the top
  ``size``, and the count of the others); for windows also the mean of an aggregate per
  term (``avg``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

TEXT_FIELDS: dict[str, tuple[str, ...]] = {
    "dead-letters": ("detail", "value"),
    "alerts": ("rule", "device", "site", "metric", "severity", "state"),
    "windows": ("device", "metric", "window"),
}
"""The fields ``q`` searches, per kind: a dead letter's detail and value as text, the
others' names as whole words."""

FILTERS: dict[str, dict[str, str]] = {
    "dead-letters": {"device": "device", "site": "site", "metric": "metric", "reason": "reason"},
    "alerts": {
        "device": "device", "site": "site", "metric": "metric", "rule": "rule",
        "severity": "severity", "state": "state",
    },
    "windows": {"device": "device", "site": "tags.site", "metric": "metric", "window": "window"},
}  # fmt: skip
"""Per kind, each filter parameter and the field it matches exactly."""

TERMS: dict[str, dict[str, str]] = FILTERS
"""Per kind, what ``by`` may name (the same fields as the filters)."""

SHARD_SIZE = 1000
"""Terms each daily index reports per interval: the counts are exact while an interval has
at most this many distinct terms in each daily index (``error_bound`` says otherwise)."""


@dataclass(frozen=True)
class Filters:
    """What selects documents: exact ``terms`` (field -> value), full text ``q``, and the
    time range ``[since, until)`` in epoch seconds (None: open)."""

    terms: Mapping[str, str] = field(default_factory=dict)
    q: str | None = None
    since: float | None = None
    until: float | None = None


def _query(kind: str, filters: Filters) -> dict[str, Any]:
    clauses: list[dict[str, Any]] = [
        {"term": {name: value}} for name, value in sorted(filters.terms.items())
    ]
    if filters.since is not None or filters.until is not None:
        bounds: dict[str, Any] = {"format": "epoch_millis"}
        if filters.since is not None:
            bounds["gte"] = int(filters.since * 1000)
        if filters.until is not None:
            bounds["lt"] = int(filters.until * 1000)
        clauses.append({"range": {"time": bounds}})
    query: dict[str, Any] = {"bool": {"filter": clauses}}
    if filters.q:
        query["bool"]["must"] = [
            {
                "simple_query_string": {
                    "query": filters.q,
                    "fields": list(TEXT_FIELDS[kind]),
                    "default_operator": "and",
                }
            }
        ]
    return query


def search_body(
    kind: str, filters: Filters, limit: int, after: list[Any] | None = None
) -> dict[str, Any]:
    """The body of ``GET /{alias}/_search`` for a page of ``limit`` documents."""
    body: dict[str, Any] = {
        "size": limit,
        "query": _query(kind, filters),
        "sort": [{"time": "desc"}, {"id": "desc"}],
        "track_total_hits": 100_000,
    }
    if after is not None:
        body["search_after"] = after
    return body


CURSOR_PATTERN = r"^[0-9]{1,15}:[^\n\r\u2028\u2029]{1,512}$"
"""A cursor: the last document's time (epoch ms) and id, ``{time}:{id}``."""


def cursor_text(sort: list[Any]) -> str:
    """The cursor of the page after the document of ``sort`` (its sort values)."""
    return f"{sort[0]}:{sort[1]}"


def cursor_of(text: str) -> list[Any]:
    """The sort values a cursor holds; ValueError for a text that is no cursor."""
    if re.fullmatch(CURSOR_PATTERN, text) is None:  # no line terminator, in either reading
        raise ValueError("not a cursor of this API")
    time, _, doc_id = text.partition(":")
    return [int(time), doc_id]


def search_answer(kind: str, response: Mapping[str, Any], limit: int) -> dict[str, Any]:
    """``{"kind", "total", "total_exact", "documents", "cursor"}``: the documents' sources
    newest first, and the cursor of the next page (None after the last)."""
    hits = response.get("hits", {})
    found = hits.get("hits", [])
    total = hits.get("total", {"value": 0, "relation": "eq"})
    cursor = cursor_text(found[-1]["sort"]) if len(found) == limit else None
    return {
        "kind": kind,
        "total": total.get("value", 0),
        "total_exact": total.get("relation") == "eq",
        "documents": [hit["_source"] for hit in found],
        "cursor": cursor,
    }


def stats_body(
    kind: str,
    filters: Filters,
    by: str,
    interval_s: int,
    size: int,
    aggregate: str | None = None,
) -> dict[str, Any]:
    """The body of the aggregation: per ``interval_s`` of ``time`` from ``since`` to
    ``until`` (both set), the top ``size`` terms of ``by`` and, for windows, the mean of
    ``aggregate``."""
    assert filters.since is not None and filters.until is not None
    terms: dict[str, Any] = {
        "terms": {
            "field": TERMS[kind][by],
            "size": size,
            "shard_size": max(SHARD_SIZE, size),
            "order": [{"_count": "desc"}, {"_key": "asc"}],
        }
    }
    if aggregate is not None:
        terms["aggs"] = {"value": {"avg": {"field": aggregate}}}
    return {
        "size": 0,
        "track_total_hits": True,
        "query": _query(kind, filters),
        "aggs": {
            "intervals": {
                "date_histogram": {
                    "field": "time",
                    "fixed_interval": f"{interval_s}s",
                    "min_doc_count": 0,
                    "extended_bounds": {
                        "min": int(filters.since * 1000),
                        "max": int(filters.until * 1000) - 1,
                    },
                },
                "aggs": {"terms": terms},
            }
        },
    }


def stats_answer(
    kind: str,
    by: str,
    interval_s: int,
    filters: Filters,
    response: Mapping[str, Any],
    aggregate: str | None = None,
) -> dict[str, Any]:
    """``{"kind", "by", "interval", "since", "until", "aggregate", "total", "intervals"}``:
    each interval's ``start`` (epoch seconds), ``count``, ``terms`` (``key``, ``count`` and
    for windows ``value``, the mean of the aggregate, null for none), ``other`` (documents
    of the terms left out) and ``error_bound`` (0: every count exact)."""
    intervals = []
    buckets = response.get("aggregations", {}).get("intervals", {}).get("buckets", [])
    for bucket in buckets:
        inner = bucket["terms"]
        terms = []
        for term in inner["buckets"]:
            entry: dict[str, Any] = {"key": str(term["key"]), "count": term["doc_count"]}
            if aggregate is not None:
                entry["value"] = term["value"]["value"]
            terms.append(entry)
        intervals.append(
            {
                "start": bucket["key"] / 1000,
                "count": bucket["doc_count"],
                "terms": terms,
                "other": inner.get("sum_other_doc_count", 0),
                "error_bound": inner.get("doc_count_error_upper_bound", 0),
            }
        )
    total = response.get("hits", {}).get("total", {}).get("value", 0)
    return {
        "kind": kind,
        "by": by,
        "interval": interval_s,
        "since": filters.since,
        "until": filters.until,
        "aggregate": aggregate,
        "total": total,
        "intervals": intervals,
    }
