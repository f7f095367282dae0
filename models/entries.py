"""A reading as a gateway appends it to a Redis stream, and the record of topic ``readings``
that ``pulse bridge`` makes of it.

Pure: an entry's id and fields in, an :class:`EntryRecord` or a :class:`RejectedEntry` out.
Every decision is :func:`models.reading.parse_reading`'s (the worker's parser), made on the
record the bridge would produce, with the entry's time (its id) as the record's timestamp:
so the bridge rejects what the worker would reject for the record alone, and the worker
accepts what the bridge produced (its own rules that depend on a partition's other records,
``late`` and ``too_many_tag_values``, and the registry's, are still the worker's).

An entry is one of two forms (README.md, "Gateways: Redis Streams"):

* **fields**: ``device``, ``metric``, ``value`` (a JSON number), optionally ``ts`` (a JSON
  number of epoch seconds, or ISO-8601 text with a zone) and ``tag.{key}`` fields (one per
  tag); other fields are ignored, a field repeated is ``invalid_reading``;
* **json**: one field ``json`` holding the reading's JSON object as topic ``readings`` takes
  it (other fields are then ignored).

An entry without ``ts`` (absent, or null in the JSON form) has the entry's time as its event
time, written into the record's ``ts`` so that it stays the event time whatever timestamp
the broker gives the record (the readings topic takes the broker's time).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final, NamedTuple

import orjson

from models.reading import MAX_EVENT_TIME_US, Reading, Rejected, parse_reading

JSON_FIELD: Final = b"json"
TAG_FIELD_PREFIX: Final = b"tag."
_READING_FIELDS: Final = frozenset({b"device", b"metric", b"value", b"ts"})
_JSON_NUMBER: Final = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")
_ENTRY_ID: Final = re.compile(rb"([0-9]{1,20})-([0-9]{1,20})\Z")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class EntryRecord(NamedTuple):
    """The record of topic ``readings`` an entry becomes: key (the device), value (JSON) and
    timestamp (the entry's time, epoch milliseconds)."""

    key: bytes
    value: bytes
    timestamp_ms: int


class RejectedEntry(Exception):
    """An entry that is no valid reading: ``reason`` (a dead-letter reason of
    :data:`models.reading.DEAD_LETTER_REASONS`), ``detail``, and what the dead letter keeps of
    it: ``key`` (its device field when it has one) and ``value`` (the JSON form's text, or the
    record the fields make)."""

    def __init__(self, reason: str, detail: str, key: bytes | None, value: bytes | None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.key = key
        self.value = value


def entry_time_ms(entry_id: bytes) -> int:
    """The time part of a stream entry id (``1796323010059-0``): when Redis appended it, in
    epoch milliseconds (or what the gateway chose, with an explicit id)."""
    found = _ENTRY_ID.match(entry_id)
    if found is None:
        raise ValueError(f"not a stream entry id: {entry_id!r}")
    return int(found.group(1))


def entry_order(entry_id: bytes | str) -> tuple[int, int]:
    """An entry id as the pair Redis orders ids by."""
    raw = entry_id.encode() if isinstance(entry_id, str) else entry_id
    found = _ENTRY_ID.match(raw)
    if found is None:
        raise ValueError(f"not a stream entry id: {entry_id!r}")
    return int(found.group(1)), int(found.group(2))


def entry_record(
    entry_id: bytes, fields: list[bytes], max_bytes: int, max_future_us: int
) -> EntryRecord:
    """The record of entry ``entry_id`` whose fields and values are ``fields`` (flat: field,
    value, field, value..., as XREADGROUP returns them).

    Raises :class:`RejectedEntry` when it is no valid reading; ``max_bytes`` and
    ``max_future_us`` are ``PULSE_MAX_MESSAGE_BYTES`` and ``PULSE_MAX_FUTURE``.
    """
    timestamp_ms = entry_time_ms(entry_id)
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == JSON_FIELD:
            return _json_record(fields[i + 1], timestamp_ms, max_bytes, max_future_us)
    try:
        return _fields_record(fields, timestamp_ms, max_bytes, max_future_us)
    except Rejected as exc:
        key = None
        for i in range(0, len(fields) - 1, 2):
            if fields[i] == b"device":
                key = fields[i + 1]
                break
        raise RejectedEntry(exc.reason, exc.detail, key, _fields_json(fields)) from None


def _json_record(text: bytes, timestamp_ms: int, max_bytes: int, max_future_us: int) -> EntryRecord:
    key, has_ts = _peek(text, max_bytes)
    try:
        reading = parse_reading(key, text, timestamp_ms, max_bytes, max_future_us)
    except Rejected as exc:
        raise RejectedEntry(exc.reason, exc.detail, key, text) from None
    assert key is not None
    if has_ts:
        return EntryRecord(key, text, timestamp_ms)
    # No ts: the entry's time, written into the record (the reading's canonical JSON).
    record = reading_json(reading)
    try:
        parse_reading(key, record, timestamp_ms, max_bytes, max_future_us)
    except Rejected as exc:  # only a record near the size limit, which the ts made larger
        raise RejectedEntry(exc.reason, f"{exc.detail} (with its ts added)", key, text) from None
    return EntryRecord(key, record, timestamp_ms)


def _peek(text: bytes, max_bytes: int) -> tuple[bytes | None, bool]:
    """The device of a JSON reading as the record key must hold it (None: none to find, and
    parse_reading then says what is wrong), and whether it has a ts that is not null."""
    if len(text) > max_bytes:
        return None, False
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None, False
    if not isinstance(doc, dict):
        return None, False
    device = doc.get("device")
    return (device.encode() if isinstance(device, str) else None), doc.get("ts") is not None


def _fields_record(
    fields: list[bytes], timestamp_ms: int, max_bytes: int, max_future_us: int
) -> EntryRecord:
    """The fields form; raises :class:`Rejected` (entry_record adds what the dead letter
    keeps)."""
    found: dict[bytes, bytes] = {}
    for i in range(0, len(fields) - 1, 2):
        name = fields[i]
        if name in _READING_FIELDS or name.startswith(TAG_FIELD_PREFIX):
            if name in found:
                raise Rejected("invalid_reading", f"the entry repeats the field {_text(name)!r}")
            found[name] = fields[i + 1]
    key = found.get(b"device")
    parts = []
    for name in (b"device", b"metric"):
        text = found.get(name)
        if text is not None:
            parts.append(b'"' + name + b'":' + orjson.dumps(_decoded(name, text)))
    number = found.get(b"value")
    if number is not None:
        if _JSON_NUMBER.match(number) is None:
            raise Rejected(
                "invalid_reading",
                f"'value' must be a number (JSON's form, e.g. 21.5), got {_text(number)!r}",
            )
        parts.append(b'"value":' + number)
    ts = found.get(b"ts")
    if ts is None:
        parts.append(b'"ts":' + ts_text(timestamp_ms * 1000))
    elif _JSON_NUMBER.match(ts) is not None:
        parts.append(b'"ts":' + ts)
    else:
        parts.append(b'"ts":' + orjson.dumps(_decoded(b"ts", ts)))
    tags = {
        _decoded(name, name)[len(TAG_FIELD_PREFIX) :]: _decoded(name, value)
        for name, value in found.items()
        if name.startswith(TAG_FIELD_PREFIX)
    }
    if tags:
        parts.append(b'"tags":' + orjson.dumps(tags))
    record = b"{" + b",".join(parts) + b"}"
    parse_reading(key, record, timestamp_ms, max_bytes, max_future_us)
    assert key is not None
    return EntryRecord(key, record, timestamp_ms)


def reading_json(reading: Reading) -> bytes:
    """A reading as the compact JSON of topic ``readings``: device, metric, value, ts (epoch
    seconds, or ISO-8601 where a float cannot say the microsecond exactly) and tags."""
    text = (
        b'{"device":'
        + orjson.dumps(reading.device)
        + b',"metric":'
        + orjson.dumps(reading.metric)
        + b',"value":'
        + orjson.dumps(reading.value)
        + b',"ts":'
        + ts_text(reading.t_us)
    )
    if reading.tags:
        text += b',"tags":' + orjson.dumps(reading.tags)
    return text + b"}"


def ts_text(t_us: int) -> bytes:
    """The JSON of ``ts`` for the event time ``t_us`` (0 to MAX_EVENT_TIME_US) that
    parse_reading reads back as exactly ``t_us``: epoch seconds with six decimals when the
    float they make does (every time before about the year 2255), else ISO-8601 in UTC."""
    seconds, micros = divmod(t_us, 1_000_000)
    text = f"{seconds}.{micros:06d}"
    if round(float(text) * 1_000_000) == t_us or not 0 <= t_us <= MAX_EVENT_TIME_US:
        return text.encode()  # (beyond the range: parse_reading says so)
    moment = _EPOCH + timedelta(microseconds=t_us)
    return orjson.dumps(moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def _decoded(name: bytes, raw: bytes) -> str:
    """A field's value (or, ``raw`` being ``name``, its name) as text: not UTF-8 is
    ``invalid_reading``."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        what = "field name" if raw is name else f"field {_text(name)!r}"
        raise Rejected("invalid_reading", f"the {what} is not UTF-8") from None


def _fields_json(fields: list[bytes]) -> bytes:
    """The entry's fields as a JSON object (the dead letter's value): text as UTF-8 with
    replacement characters, a repeated field's last value."""
    return orjson.dumps(
        {
            fields[i].decode("utf-8", "replace"): fields[i + 1].decode("utf-8", "replace")
            for i in range(0, len(fields) - 1, 2)
        }
    )


def _text(raw: bytes, limit: int = 80) -> str:
    text = raw.decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + "..."


_NAMES_MAX: Final = 100_000
_TAGS_MAX: Final = 10_000


def common_record(
    entry_id: bytes,
    fields: list[bytes],
    names: dict[bytes, bytes],
    tags_seen: dict[tuple[bytes, ...], bytes],
    max_bytes: int,
    max_future_us: int,
) -> EntryRecord | None:
    """The record of an entry of the commonest kind, exactly as :func:`entry_record` makes
    it, or None for any other entry: the fields form, device and metric among ``names``
    (values seen valid, with their JSON), value and ts in JSON's number form (ts absent: the
    entry's time), tags (if any) among ``tags_seen``, no field repeated, no ``json`` field.
    pulse/bridge/_encode.c converts the same entries the same way."""
    n = len(fields)
    if n & 1:
        return None
    device = metric = value = ts = None
    tags: list[bytes] | None = None
    for i in range(0, n, 2):
        name = fields[i]
        if name == b"device":
            if device is not None:
                return None
            device = fields[i + 1]
        elif name == b"metric":
            if metric is not None:
                return None
            metric = fields[i + 1]
        elif name == b"value":
            if value is not None:
                return None
            value = fields[i + 1]
        elif name == b"ts":
            if ts is not None:
                return None
            ts = fields[i + 1]
        elif name[:4] == b"tag.":
            if tags is None:
                tags = [name, fields[i + 1]]
            else:
                tags += (name, fields[i + 1])
        elif name == b"json":
            return None
    if device is None or metric is None or value is None:
        return None
    device_json = names.get(device)
    metric_json = names.get(metric)
    if device_json is None or metric_json is None or _JSON_NUMBER.match(value) is None:
        return None
    number = float(value)
    if not -1e290 <= number <= 1e290:
        return None
    dash = entry_id.find(b"-")
    if dash < 1 or dash > 20:
        return None
    timestamp_ms = int(entry_id[:dash])
    if ts is None:
        if timestamp_ms * 1000 > MAX_EVENT_TIME_US:
            return None
        ts = ts_text(timestamp_ms * 1000)
    else:
        if len(ts) > 40 or _JSON_NUMBER.match(ts) is None:
            return None
        if b"." in ts or b"e" in ts or b"E" in ts:
            t_us = round(float(ts) * 1_000_000)
        elif len(ts) <= 18:
            t_us = int(ts) * 1_000_000
        else:
            return None
        if not 0 <= t_us <= MAX_EVENT_TIME_US or t_us - timestamp_ms * 1000 > (max_future_us):
            return None
    if tags is None:
        record = b'{"device":%b,"metric":%b,"value":%b,"ts":%b}' % (
            device_json,
            metric_json,
            value,
            ts,
        )
    else:
        tags_json = tags_seen.get(tuple(tags))
        if tags_json is None:
            return None
        record = b'{"device":%b,"metric":%b,"value":%b,"ts":%b,"tags":%b}' % (
            device_json,
            metric_json,
            value,
            ts,
            tags_json,
        )
    if len(record) > max_bytes:
        return None
    return EntryRecord(device, record, timestamp_ms)


class EntryReader:
    """:func:`entry_record` with a fast path for the commonest entry: the fields form with a
    device and a metric seen valid before, a value and a ts in JSON's number form, tags seen
    valid before. It makes the same record, byte for byte, as :func:`entry_record` (which it
    calls for anything else, and learns names and tags from); tests/models/test_entries.py
    holds the two equal."""

    def __init__(self, max_bytes: int, max_future_us: int) -> None:
        self.max_bytes = max_bytes
        self.max_future_us = max_future_us
        self._names: dict[bytes, bytes] = {}
        """A device or metric field's value seen valid -> its JSON string."""
        self._tags: dict[tuple[bytes, ...], bytes] = {}
        """The tag fields and values of an entry seen valid, in order -> the tags' JSON."""

    def record(self, entry_id: bytes, fields: list[bytes]) -> EntryRecord:
        """As :func:`entry_record`: the record, or :class:`RejectedEntry`."""
        made = self._common(entry_id, fields)
        if made is not None:
            return made
        made = entry_record(entry_id, fields, self.max_bytes, self.max_future_us)
        self._learn(fields)
        return made

    def _common(self, entry_id: bytes, fields: list[bytes]) -> EntryRecord | None:
        return common_record(
            entry_id, fields, self._names, self._tags, self.max_bytes, self.max_future_us
        )

    @property
    def names(self) -> dict[bytes, bytes]:
        """A device or metric field's value seen valid -> its JSON string."""
        return self._names

    @property
    def tags(self) -> dict[tuple[bytes, ...], bytes]:
        """The tag fields and values (in order) of an entry seen valid -> the tags' JSON."""
        return self._tags

    def _learn(self, fields: list[bytes]) -> None:
        """After :func:`entry_record` made a record of these fields (the fields form): its
        names and tags are valid."""
        names = self._names
        if len(names) > _NAMES_MAX:
            names.clear()
        if len(self._tags) > _TAGS_MAX:
            self._tags.clear()
        tags: list[bytes] = []
        for i in range(0, len(fields) - 1, 2):
            name = fields[i]
            if name == b"json":
                return
            if name in (b"device", b"metric"):
                names[fields[i + 1]] = orjson.dumps(fields[i + 1].decode())
            elif name[:4] == b"tag.":
                tags += (name, fields[i + 1])
        if tags:
            self._tags[tuple(tags)] = orjson.dumps(
                {
                    tags[i][len(TAG_FIELD_PREFIX) :].decode(): tags[i + 1].decode()
                    for i in range(0, len(tags), 2)
                }
            )
