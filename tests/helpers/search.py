"""What the search indices must hold, computed from the topics' records without Pulse's code
(pulse/search), and the indices read back whole from a real OpenSearch.

The contract (docs/search.md): one document per id, in the daily index of its event time
(UTC day), behind the alias ``{prefix}-{kind}``:

* a dead letter: id ``{topic}:{partition}:{offset}`` of the rejected record; time the
  letter's ``timestamp`` (else its own record's); reason, detail, topic, partition, offset,
  key, device/metric/site named by a UTF-8 JSON value (device else the key when it is a
  name), the value's first 1,024 characters;
* an alert transition: id its ``id``; time its ``end`` in ms; the record's members;
* a window: id ``{device}:{metric}:{window}:{start_us}``; time its start in ms; the record's
  members.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import re
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from opensearchpy import AsyncOpenSearch

NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
EXCERPT = 1024

Expected = dict[tuple[str, str], dict[str, Any]]
"""(index, id) -> the document's source."""


def day_index(prefix: str, kind: str, time_ms: int) -> str:
    day = datetime.datetime.fromtimestamp(time_ms / 1000, datetime.UTC)
    return f"{prefix}-{kind}-{day:%Y.%m.%d}"


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and NAME.fullmatch(value) is not None


def _site(value: Any) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= 256 and value.isprintable():
        return value
    return None


def dead_letter(prefix: str, value: bytes | None, record_timestamp: int) -> tuple[str, str, dict]:
    """(index, id, source) of a dead-letter record."""
    letter = json.loads(value or b"")
    if letter.get("stream"):  # the bridge's letter of a stream entry
        doc_id = f"{letter['stream']}:{letter['entry_id']}"
    else:
        doc_id = f"{letter['topic']}:{letter['partition']}:{letter['offset']}"
    time = letter.get("timestamp", record_timestamp)
    device = metric = site = None
    raw = letter["value"]
    if "value_encoding" not in letter and isinstance(raw, str):
        try:
            reading = json.loads(raw)
        except ValueError:
            reading = None
        if isinstance(reading, dict):
            device = reading.get("device") if _is_name(reading.get("device")) else None
            metric = reading.get("metric") if _is_name(reading.get("metric")) else None
            tags = reading.get("tags")
            site = _site(tags.get("site")) if isinstance(tags, dict) else None
    if device is None and _is_name(letter["key"]):
        device = letter["key"]
    truncated = letter.get("value_truncated", False)
    size = letter.get("value_size")
    excerpt = raw
    if isinstance(raw, str) and len(raw) > EXCERPT:
        excerpt = raw[:EXCERPT]
        truncated = True
        if size is None:
            encoded = letter.get("value_encoding") == "base64"
            size = len(base64.b64decode(raw)) if encoded else len(raw.encode())
    source = {
        "id": doc_id,
        "time": time,
        "reason": letter["reason"],
        "detail": letter["detail"],
        "topic": letter["topic"],
        "partition": letter["partition"],
        "offset": letter["offset"],
        "stream": letter.get("stream"),
        "entry_id": letter.get("entry_id"),
        "key": letter["key"],
        "device": device,
        "metric": metric,
        "site": site,
        "value": excerpt,
        "value_encoding": letter.get("value_encoding"),
        "value_truncated": truncated,
        "value_size": size,
    }
    return day_index(prefix, "dead-letters", time), doc_id, source


def _micros(seconds: Any) -> int:
    """Epoch seconds as written (integer, or the float of microseconds / 1e6) to microseconds,
    by decimal arithmetic on the text."""
    return int((Decimal(repr(seconds)) * 1_000_000).to_integral_value())


def alert(prefix: str, value: bytes | None) -> tuple[str, str, dict]:
    doc = json.loads(value or b"")
    time = _micros(doc["end"]) // 1000
    return day_index(prefix, "alerts", time), doc["id"], {"time": time, **doc}


def window(prefix: str, value: bytes | None) -> tuple[str, str, dict]:
    doc = json.loads(value or b"")
    start_us = _micros(doc["start"])
    doc_id = f"{doc['device']}:{doc['metric']}:{doc['window']}:{start_us}"
    time = start_us // 1000
    return day_index(prefix, "windows", time), doc_id, {"id": doc_id, "time": time, **doc}


def expected(entries: Iterable[tuple[str, str, dict]]) -> Expected:
    """The index's content after every entry was written: the last per (index, id)."""
    out: Expected = {}
    for index, doc_id, source in entries:
        out[(index, doc_id)] = source
    return out


async def read_alias(url: str, alias: str) -> Expected:
    """Every document behind ``alias`` (refreshed first), by (index, id)."""
    client = AsyncOpenSearch(hosts=[url], timeout=60)
    try:
        if not await client.indices.exists_alias(name=alias):
            return {}
        await client.indices.refresh(index=alias)
        found: Expected = {}
        after: list[Any] | None = None
        while True:
            body: dict[str, Any] = {
                "size": 5000,
                "sort": [{"_index": "asc"}, {"id": "asc"}],
                "query": {"match_all": {}},
            }
            if after is not None:
                body["search_after"] = after
            page = await client.search(index=alias, body=body)
            hits = page["hits"]["hits"]
            if not hits:
                return found
            for hit in hits:
                assert (hit["_index"], hit["_id"]) not in found
                found[(hit["_index"], hit["_id"])] = hit["_source"]
            after = hits[-1]["sort"]
    finally:
        await client.close()


def read(url: str, alias: str) -> Expected:
    return asyncio.run(read_alias(url, alias))
