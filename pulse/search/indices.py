"""Where documents go: daily indices behind one alias per kind, made by index templates.

For prefix ``P`` (``PULSE_SEARCH_PREFIX``) and kind ``K`` (alerts, dead-letters, windows):

* ``P-K-YYYY.MM.DD``: the daily index of the documents whose event time is on that UTC day
  (pulse/search/documents.py). The indexer never creates one: the bulk request that first
  writes to it does, from the template.
* ``P-K``: the alias of every daily index of the kind (the template adds it to each new
  index), which every query names: nothing reads a daily index by name.
* ``P-K``: also the name of the composable index template (``PUT _index_template``) for
  ``P-K-*``: one shard, ``PULSE_SEARCH_REPLICAS`` replicas, and an explicit mapping
  (:data:`MAPPINGS`) with ``dynamic: false``: a member the mapping does not name is kept in
  the document's source but not indexed, so no field is ever added by the data. Tags and
  labels are one ``flat_object`` field each (OpenSearch's; ``flattened`` on
  Elasticsearch): any number of keys in one field of the mapping, each searchable as
  ``tags.KEY``.

Retention: a daily index whose day is ``PULSE_SEARCH_RETENTION_DAYS`` or more days before
today (UTC) is deleted whole (:func:`expired`), and a document that would land in one is
not indexed.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable
from typing import Any

from pulse.search.documents import KINDS

TEMPLATE_PRIORITY = 200
"""The priority of Pulse's templates (two templates of one priority may not overlap)."""

_KEYWORD = {"type": "keyword"}
_DOUBLE = {"type": "double"}
_TIME = {"type": "date", "format": "epoch_millis"}
_TEXT_AND_KEYWORD = {
    "type": "text",
    "fields": {"raw": {"type": "keyword", "ignore_above": 256}},
}

MAPPINGS: dict[str, dict[str, Any]] = {
    "dead-letters": {
        "id": _KEYWORD,
        "time": _TIME,
        "reason": _KEYWORD,
        "detail": _TEXT_AND_KEYWORD,
        "topic": _KEYWORD,
        "partition": {"type": "integer"},
        "offset": {"type": "long"},
        "stream": _KEYWORD,
        "entry_id": _KEYWORD,
        "key": {"type": "keyword", "ignore_above": 256},
        "device": _KEYWORD,
        "metric": _KEYWORD,
        "site": _KEYWORD,
        "value": {"type": "text"},
        "value_encoding": _KEYWORD,
        "value_truncated": {"type": "boolean"},
        "value_size": {"type": "long"},
    },
    "alerts": {
        "id": _KEYWORD,
        "time": _TIME,
        "rule": _KEYWORD,
        "device": _KEYWORD,
        "site": _KEYWORD,
        "labels": {"type": "flat_object"},
        "metric": _KEYWORD,
        "window": _KEYWORD,
        "start": _DOUBLE,
        "end": _DOUBLE,
        "aggregate": _KEYWORD,
        "value": _DOUBLE,
        "threshold": _DOUBLE,
        "state": _KEYWORD,
        "severity": _KEYWORD,
        "silenced": {"type": "boolean"},
    },
    "windows": {
        "id": _KEYWORD,
        "time": _TIME,
        "device": _KEYWORD,
        "metric": _KEYWORD,
        "window": _KEYWORD,
        "start": _DOUBLE,
        "end": _DOUBLE,
        "count": {"type": "long"},
        **{name: _DOUBLE for name in ("sum", "min", "max", "mean", "first", "last")},
        **{name: _DOUBLE for name in ("p50", "p95", "p99")},
        "tags": {"type": "flat_object"},
    },
}
"""Each kind's fields (see the module's docstring); the document builders write these."""

_DAILY = re.compile(r"^(.*)-(alerts|dead-letters|windows)-([0-9]{4})\.([0-9]{2})\.([0-9]{2})$")


def alias(prefix: str, kind: str) -> str:
    """The alias (and template) of a kind: ``P-K``."""
    return f"{prefix}-{kind}"


def day_text(day: int) -> str:
    """``YYYY.MM.DD`` of a day counted from 1970-01-01."""
    return (datetime.date(1970, 1, 1) + datetime.timedelta(days=day)).strftime("%Y.%m.%d")


def index_name(prefix: str, kind: str, day: int) -> str:
    """The daily index of ``kind`` for the UTC day ``day`` (days since 1970-01-01)."""
    return f"{prefix}-{kind}-{day_text(day)}"


def daily_day(name: str, prefix: str, kind: str) -> int | None:
    """The day of a daily index of ``prefix`` and ``kind`` named ``name``, else None."""
    match = _DAILY.match(name)
    if match is None or match.group(1) != prefix or match.group(2) != kind:
        return None
    try:
        date = datetime.date(*(int(part) for part in match.group(3, 4, 5)))
    except ValueError:
        return None
    return (date - datetime.date(1970, 1, 1)).days


def template(
    prefix: str, kind: str, replicas: int, flat_type: str = "flat_object"
) -> dict[str, Any]:
    """The body of ``PUT _index_template/P-K``; ``flat_type``: ``flattened`` for
    Elasticsearch, which has no ``flat_object``."""
    properties = {
        name: ({"type": flat_type} if spec.get("type") == "flat_object" else spec)
        for name, spec in MAPPINGS[kind].items()
    }
    return {
        "index_patterns": [f"{prefix}-{kind}-*"],
        "priority": TEMPLATE_PRIORITY,
        "template": {
            "settings": {"number_of_shards": 1, "number_of_replicas": replicas},
            "mappings": {"dynamic": False, "properties": properties},
            "aliases": {alias(prefix, kind): {}},
        },
        "_meta": {"pulse": f"the {kind} of Pulse (docs/search.md)"},
    }


def first_kept_day(retention_days: int, today: int) -> int:
    """The oldest day kept (days since 1970-01-01) with ``retention_days`` (0: keep all)."""
    return today - retention_days + 1 if retention_days > 0 else -(10**9)


def expired(names: Iterable[str], prefix: str, kind: str, first_kept: int) -> list[str]:
    """The daily indices of ``prefix`` and ``kind`` among ``names`` older than
    ``first_kept`` (a day), oldest first."""
    days = sorted(
        (day, name) for name in names if (day := daily_day(name, prefix, kind)) is not None
    )
    return [name for day, name in days if day < first_kept]


__all__ = [
    "KINDS",
    "MAPPINGS",
    "alias",
    "daily_day",
    "day_text",
    "expired",
    "first_kept_day",
    "index_name",
    "template",
]
