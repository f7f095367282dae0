"""The documents Pulse indexes, made from the records of its durable topics.

Three kinds, each from its topic, each document with an id that a replay of the worker (the
same record again, later in the topic) or of the indexer (records again from its last
commit) reproduces exactly, and a ``time`` (epoch milliseconds, the event time) that picks
its daily index (:mod:`pulse.search.indices`), so that the same id always lands in the same
index and a repeat overwrites itself:

* ``dead-letters`` (topic ``readings-dlq``, models/outputs.py's ``DeadLetter.document``):
  id ``{topic}:{partition}:{offset}`` of the rejected record, the one the letter carries
  (not its own offset in the dead-letter topic); a letter of a bridge that names a Redis
  stream and its entry instead (``stream``, ``entry_id``: models.outputs.EntryDeadLetter)
  has id ``{stream}:{entry_id}``. Time:
  the rejected record's Kafka timestamp (``timestamp``, the broker's append time on the
  readings topic Pulse creates). A letter written before the worker recorded it has none:
  the dead-letter record's own timestamp stands in (a worker's replay then writes another,
  so such a letter may be indexed twice across midnight). Fields: reason, detail, topic,
  partition, offset, key, the device, metric and site when the rejected value names them
  (or the key is a device name), and the value's first :data:`VALUE_EXCERPT_CHARS`
  characters (``value_truncated`` when cut, here or by the worker; ``value_encoding``
  ``base64`` when the value was not UTF-8).
* ``alerts`` (topic ``alerts``, ``AlertTransition.json``): id the transition's own (a hash
  of rule, device, window and start); time its ``end``; the record's members as they are.
* ``windows`` (topic ``aggregates``, only the windows of ``PULSE_SEARCH_WINDOWS``): id
  ``{device}:{metric}:{window}:{start}``, start in epoch microseconds; time its ``start``;
  the record's members as they are (aggregates, ``start`` and ``end`` in epoch seconds,
  ``tags``). The document is the record's own JSON with ``id`` and ``time`` put first, not
  parsed and written again.

A value that is no record of its topic raises ValueError saying why: the indexer
dead-letters it as ``unreadable``.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Collection
from typing import Any, NamedTuple

import orjson

from models.outputs import AGGREGATES
from models.reading import NAME_PATTERN
from pulse.sinks.alerts import alert_record

KINDS = ("alerts", "dead-letters", "windows")
"""The kinds of document, each an alias of daily indices."""
VALUE_EXCERPT_CHARS = 1024
"""Characters of a dead letter's value the document keeps."""
MS_PER_DAY = 86_400_000
MAX_TIME_MS = 9_223_372_036_854
"""2262-04-11, the latest time Pulse accepts (InfluxDB's)."""


class Document(NamedTuple):
    """One document: its ``kind`` (:data:`KINDS`), ``id``, event ``time`` (epoch ms) and its
    JSON ``source`` (a tuple: made once per record, it must cost little)."""

    kind: str
    id: str
    time: int
    source: bytes

    @property
    def day(self) -> int:
        """Days since 1970-01-01 (UTC) of its event time: its daily index."""
        return self.time // MS_PER_DAY


def micros(seconds: int | float) -> int:
    """Epoch seconds as the worker writes them (an integer when whole, else the float
    nearest to the microseconds divided by a million) back to those microseconds: the whole
    number whose quotient is that float (any other number to the nearest microsecond)."""
    if type(seconds) is int:
        return seconds * 1_000_000
    guess = round(seconds * 1_000_000)
    for t_us in (guess, guess - 1, guess + 1):
        if t_us / 1_000_000 == seconds:
            return t_us
    return guess


def _name(value: Any) -> str | None:
    return value if isinstance(value, str) and NAME_PATTERN.match(value) else None


def _text(value: Any, most: int = 256) -> str | None:
    if (
        isinstance(value, str)
        and 0 < len(value) <= most
        and not any(ord(c) < 32 or ord(c) == 127 for c in value)
    ):
        return value
    return None


def _whole(value: Any) -> bool:
    return type(value) is int and value >= 0


def _named_in(value: Any) -> tuple[str | None, str | None, str | None]:
    """(device, metric, site) a rejected record's value names, as far as it does."""
    if not isinstance(value, str) or not value.startswith("{"):
        return None, None, None
    try:
        reading = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None, None, None
    if not isinstance(reading, dict):
        return None, None, None
    tags = reading.get("tags")
    site = _text(tags.get("site")) if isinstance(tags, dict) else None
    return _name(reading.get("device")), _name(reading.get("metric")), site


def dead_letter_document(value: bytes | None, record_time_ms: int) -> Document:
    """The document of a ``readings-dlq`` record (see the module's docstring);
    ``record_time_ms``: the dead-letter record's own timestamp, for a letter without the
    rejected record's."""
    try:
        letter = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not a dead letter (not JSON: {exc})") from None
    if not isinstance(letter, dict):
        raise ValueError("not a dead letter (not a JSON object)")
    reason, detail = letter.get("reason"), letter.get("detail")
    if not _name(reason) or not isinstance(detail, str):
        raise ValueError("not a dead letter: no reason and detail")
    stream, entry = letter.get("stream"), letter.get("entry_id")
    topic, partition, offset = letter.get("topic"), letter.get("partition"), letter.get("offset")
    if isinstance(stream, str) and stream and isinstance(entry, str) and entry:
        doc_id = f"{stream}:{entry}"
    elif _name(topic) and _whole(partition) and _whole(offset):
        doc_id = f"{topic}:{partition}:{offset}"
    else:
        raise ValueError(
            "not a dead letter: no topic, partition and offset (nor stream and entry_id)"
        )
    if len(doc_id.encode()) > 512:
        raise ValueError("not a dead letter: its id would be longer than 512 bytes")
    timestamp = letter.get("timestamp")
    time = timestamp if isinstance(timestamp, int) and _whole(timestamp) else record_time_ms
    if not 0 <= time <= MAX_TIME_MS:
        raise ValueError(f"not a dead letter: time {time} out of range")
    key, raw = letter.get("key"), letter.get("value")
    encoding = letter.get("value_encoding")
    device = metric = site = None
    if encoding is None:
        device, metric, site = _named_in(raw)
    device = device or _name(key)
    doc: dict[str, Any] = {
        "id": doc_id,
        "time": time,
        "reason": reason,
        "detail": detail,
        "topic": topic if isinstance(topic, str) else None,
        "partition": partition if _whole(partition) else None,
        "offset": offset if _whole(offset) else None,
        "stream": stream if isinstance(stream, str) else None,
        "entry_id": entry if isinstance(entry, str) else None,
        "key": key if isinstance(key, str) else None,
        "device": device,
        "metric": metric,
        "site": site,
        "value": None,
        "value_encoding": encoding if isinstance(encoding, str) else None,
        "value_truncated": letter.get("value_truncated") is True,
        "value_size": letter.get("value_size") if _whole(letter.get("value_size")) else None,
    }
    if isinstance(raw, str):
        doc["value"] = raw[:VALUE_EXCERPT_CHARS]
        if len(raw) > VALUE_EXCERPT_CHARS:
            doc["value_truncated"] = True
            if doc["value_size"] is None:
                doc["value_size"] = _size(raw, encoding)
    return Document("dead-letters", doc_id, time, orjson.dumps(doc))


def alert_document(value: bytes | None) -> Document:
    """The document of an ``alerts`` record: the transition as the topic holds it, with its
    ``time`` (its end in epoch ms) first."""
    record = alert_record(value)  # checks every member (pulse/sinks/alerts.py)
    time = record.end_us // 1000
    body = record.json
    if b"\n" in body or b"\r" in body:  # it would end the document's line in a bulk body
        body = orjson.dumps(orjson.loads(body))
    source = b'{"time":%d,' % time + body.lstrip()[1:]
    return Document("alerts", record.id, time, source)


_WINDOW_HEAD = re.compile(
    rb'\{"device":"([A-Za-z0-9_.-]{1,128})","metric":"([A-Za-z0-9_.-]{1,128})",'
    rb'"window":"([A-Za-z0-9/]{1,64})","start":([0-9]{1,12}(?:\.[0-9]{1,9})?),"end":'
)
"""The head of the compact record the worker writes (pulse/sinks/kafka.py,
``closed_window_json``): its names and start read without parsing the whole record."""


def window_document(value: bytes | None, windows: Collection[str]) -> Document | None:
    """The document of an ``aggregates`` record of one of ``windows`` (labels), else None:
    the record with ``id`` and ``time`` (its start in epoch ms) put first.

    The compact records the worker writes are read by their head (:data:`_WINDOW_HEAD`) and
    otherwise taken as they are (OpenSearch checks each field against the mapping: a
    record it refuses goes to the output dead-letter topic); any other text is parsed and
    checked."""
    raw = value or b""
    # A line break would end the document's line in the bulk body: such a record is parsed
    # (and written again without one), never passed on.
    head = _WINDOW_HEAD.match(raw) if b"\n" not in raw and b"\r" not in raw else None
    if head is not None:
        window = head.group(3).decode()
        if window not in windows:
            return None
        start = head.group(4)
        start_us = micros(float(start) if b"." in start else int(start))
        device, metric = head.group(1).decode(), head.group(2).decode()
        body = raw
    else:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not an aggregates record (not JSON: {exc})") from None
        if not isinstance(doc, dict):
            raise ValueError("not an aggregates record (not a JSON object)")
        names = [_name(doc.get(name)) for name in ("device", "metric")]
        window = doc.get("window")
        if not all(names) or not isinstance(window, str):
            raise ValueError("not an aggregates record: no device, metric and window")
        if window not in windows:
            return None
        for name in ("start", "end", *AGGREGATES):
            number = doc.get(name)
            if (
                isinstance(number, bool)
                or not isinstance(number, (int, float))
                or not math.isfinite(number)
            ):
                raise ValueError(f"not an aggregates record: {name} is not a number")
        if not isinstance(doc.get("tags"), dict):
            raise ValueError("not an aggregates record: tags is not an object")
        device, metric = names[0] or "", names[1] or ""
        start_us = micros(doc["start"])
        body = orjson.dumps({key: item for key, item in doc.items() if key not in ("id", "time")})
    time = start_us // 1000
    if not 0 <= time <= MAX_TIME_MS:
        raise ValueError(f"not an aggregates record: start {start_us} us out of range")
    doc_id = f"{device}:{metric}:{window}:{start_us}"
    source = b'{"id":"%s","time":%d,' % (doc_id.encode(), time) + body[1:]
    return Document("windows", doc_id, time, source)


def _size(value: str, encoding: Any) -> int | None:
    """Bytes of the rejected value a letter holds whole (base64 decoded)."""
    if encoding is None:
        return len(value.encode())
    try:
        return len(base64.b64decode(value, validate=True))
    except ValueError:
        return None
