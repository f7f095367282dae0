"""The reading: the input contract of topic ``readings``, and its validation.

Pure: bytes in, an immutable :class:`Reading` or a :class:`Rejected` error out. The worker
parses a fetch's common records in one batch (tables.partition_state.apply_records) and calls
:func:`parse_reading` for each record that leaves, so it is the definition of what a valid
reading is (README.md, "The contract", lists its rules); it avoids per-record allocations it
does not need (validated names are remembered; tags are checked only when present).

Every rule depends on the record alone (its key, value and timestamp), so a replay of the
same records decides the same way.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Final, NamedTuple

import orjson

from models.outputs import AGGREGATES

NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
TAG_KEY_PATTERN: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_TAGS: Final = 16
MAX_TAG_VALUE_CHARS: Final = 256
MAX_ABS_VALUE: Final = 1e290
"""Values beyond this are rejected, so that no window's sum can overflow to infinity, which no
output can hold, however many readings it adds: the float nearest infinity is a step of
2**971 below the next power of two, so adding at most 1e290 (under half a step, 2**970 ~
9.98e291) to any finite float rounds to a finite float."""

DEAD_LETTER_REASONS: Final = (
    "invalid_json",
    "too_large",
    "invalid_reading",
    "too_many_tag_values",
    "late",
    "unknown_device",
)
"""Every reason a record of the readings topic is dead-lettered for (README.md, "The
contract"): the values of a dead letter's ``reason``."""

RESERVED_TAG_KEYS: Final = frozenset({"device", "window", "time", *AGGREGATES})
"""``device`` and ``window`` are Pulse's own tags; ``time`` and the field names would make
InfluxDB queries ambiguous. Keys starting with ``_`` are InfluxDB's own and rejected too."""

MAX_EVENT_TIME_US: Final = 9_223_372_036_854_775
"""The last microsecond InfluxDB can store (int64 nanoseconds, year 2262)."""

_TS_RANGE: Final = "'ts' is outside 1970-01-01 .. 2262-04-11 (InfluxDB's range)"
_MEMBER_TOKENS: Final = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]:]', re.DOTALL)
"""The strings and the structural characters of a JSON text (to find a repeated member)."""
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)


class Reading(NamedTuple):
    """A validated reading. ``t_us`` is the event time in integer microseconds since the epoch."""

    device: str
    metric: str
    value: float
    t_us: int
    tags: dict[str, str] | None


class Rejected(Exception):
    """A record that is not a valid reading. ``reason`` is one of the dead-letter reasons."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


VALID_NAMES: Final[dict[str, str]] = {}
"""Names seen valid before, each mapped to the first str object that carried it, which every
reading of that name then shares: the state's keys hold one copy of each name, with its hash
computed once, instead of one per window. parse_reading and PartitionState.apply_records
look names up here. Bounded, so that a flood of distinct
bad-but-valid names cannot grow it."""
_VALID_NAMES_MAX: Final = 200_000


def _check_name(field: str, name: object) -> str:
    if name.__class__ is str:
        known = VALID_NAMES.get(name)
        if known is not None:
            return known
    if name is None:
        raise Rejected("invalid_reading", f"'{field}' is missing")
    if not isinstance(name, str):
        raise Rejected("invalid_reading", f"'{field}' must be a string, got {_kind(name)}")
    if NAME_PATTERN.match(name) is None or name.endswith("\n"):
        raise Rejected(
            "invalid_reading",
            f"'{field}' must match [A-Za-z0-9_.-]{{1,128}}, got {_clip(name)!r}",
        )
    if len(VALID_NAMES) >= _VALID_NAMES_MAX:
        VALID_NAMES.clear()
    VALID_NAMES[name] = name
    return name


def parse_reading(
    key: bytes | None,
    value: bytes | None,
    record_ts_ms: int | None,
    max_bytes: int,
    max_future_us: int,
) -> Reading:
    """Validate one record of topic ``readings``.

    ``record_ts_ms`` is the Kafka record timestamp (None or negative: the record has none):
    the event time of a reading without ``ts``, and the bound of one with it, which may be at
    most ``max_future_us`` after it (``PULSE_MAX_FUTURE``): a reading stamped later would
    move its partition's watermark ahead of the records still to come, making them late.
    Raises :class:`Rejected` with reason ``too_large``, ``invalid_json`` or ``invalid_reading``.
    """
    if value is None:
        raise Rejected("invalid_json", "the record has no value (a tombstone)")
    if len(value) > max_bytes:
        raise Rejected(
            "too_large", f"the value is {len(value)} bytes, more than the limit of {max_bytes}"
        )
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise Rejected("invalid_json", f"not valid JSON: {exc}") from None
    if _may_repeat_a_member(value, doc):
        repeated = _repeated_member(value)
        if repeated is not None:
            raise Rejected(
                "invalid_json",
                f"an object repeats the member name {_clip(repeated)!r}: JSON parsers differ "
                "on which one counts",
            )
    if doc.__class__ is not dict:
        raise Rejected("invalid_reading", f"the value must be a JSON object, got {_kind(doc)}")

    device = _check_name("device", doc.get("device"))
    metric = _check_name("metric", doc.get("metric"))
    if key is None:
        raise Rejected("invalid_reading", "the record has no key: the key must be the device id")
    if key != device.encode():
        raise Rejected(
            "invalid_reading",
            f"the record key {_clip(key.decode('utf-8', 'replace'))!r} is not the device id "
            f"{device!r}: Pulse keeps each device in one partition",
        )

    number = doc.get("value")
    if number.__class__ is not float:
        if number.__class__ is not int:
            raise Rejected("invalid_reading", f"'value' must be a number, got {_kind(number)}")
        number = float(number)
    if not -MAX_ABS_VALUE <= number <= MAX_ABS_VALUE:
        raise Rejected("invalid_reading", f"'value' {number!r} is beyond +-{MAX_ABS_VALUE:g}")

    ts = doc.get("ts")
    no_timestamp = record_ts_ms is None or record_ts_ms < 0
    if ts is None:
        if no_timestamp:
            raise Rejected("invalid_reading", "no 'ts' and the record has no timestamp")
        assert record_ts_ms is not None
        t_us = record_ts_ms * 1000
    else:
        t_us = _event_time_us(ts)
    if not 0 <= t_us <= MAX_EVENT_TIME_US:
        raise Rejected("invalid_reading", _TS_RANGE)
    if ts is not None:
        if no_timestamp:
            raise Rejected(
                "invalid_reading",
                "the record has no timestamp, so its 'ts' cannot be held to PULSE_MAX_FUTURE",
            )
        assert record_ts_ms is not None
        ahead = t_us - record_ts_ms * 1000
        if ahead > max_future_us:
            raise Rejected(
                "invalid_reading",
                f"'ts' {_iso(t_us)} is {_duration(ahead)} ahead of its record's timestamp "
                f"{_iso(record_ts_ms * 1000)}: more than PULSE_MAX_FUTURE "
                f"({_duration(max_future_us)})",
            )

    tags = doc.get("tags")
    if tags is not None:
        tags = _check_tags(tags)
    return Reading(device, metric, number, t_us, tags)


def _event_time_us(ts: object) -> int:
    if ts.__class__ is float or ts.__class__ is int:
        if not math.isfinite(ts):
            raise Rejected("invalid_reading", "'ts' must be finite")
        t_us = ts * 1_000_000
        if t_us.__class__ is float and not math.isfinite(t_us):  # beyond 1.8e302 seconds
            raise Rejected("invalid_reading", _TS_RANGE)
        # Round, not truncate: 1795315444.3 is stored as 1795315444.2999999523 and means .3.
        return round(t_us)
    if isinstance(ts, str):
        try:
            moment = datetime.fromisoformat(ts)
        except ValueError:
            raise Rejected(
                "invalid_reading", f"'ts' {_clip(ts)!r} is not an ISO-8601 time"
            ) from None
        if moment.tzinfo is None:
            raise Rejected(
                "invalid_reading",
                f"'ts' {_clip(ts)!r} has no time zone: add Z or an offset such as +02:00",
            )
        return (moment - _EPOCH) // _ONE_US
    raise Rejected(
        "invalid_reading",
        f"'ts' must be epoch seconds or an ISO-8601 string, got {_kind(ts)}",
    )


def _check_tags(tags: object) -> dict[str, str] | None:
    if tags.__class__ is not dict:
        raise Rejected("invalid_reading", f"'tags' must be an object, got {_kind(tags)}")
    assert isinstance(tags, dict)
    if len(tags) > MAX_TAGS:
        raise Rejected("invalid_reading", f"'tags' has {len(tags)} entries, at most {MAX_TAGS}")
    for tag_key, tag_value in tags.items():
        if TAG_KEY_PATTERN.match(tag_key) is None or tag_key.endswith("\n"):
            raise Rejected(
                "invalid_reading",
                f"tag key {_clip(tag_key)!r} must match [A-Za-z0-9_.-]{{1,64}}",
            )
        if tag_key in RESERVED_TAG_KEYS or tag_key.startswith("_"):
            raise Rejected("invalid_reading", f"tag key {tag_key!r} is reserved")
        if not isinstance(tag_value, str):
            raise Rejected(
                "invalid_reading", f"tag {tag_key!r} must be a string, got {_kind(tag_value)}"
            )
        if len(tag_value) > MAX_TAG_VALUE_CHARS:
            raise Rejected(
                "invalid_reading",
                f"tag {tag_key!r} is {len(tag_value)} characters, at most {MAX_TAG_VALUE_CHARS}",
            )
        if any(ch < " " or ch == "\x7f" for ch in tag_value):
            raise Rejected("invalid_reading", f"tag {tag_key!r} contains a control character")
    return tags or None


def _may_repeat_a_member(text: bytes, doc: object) -> bool:
    """False when no object of ``text`` (valid JSON, parsed as ``doc``) repeats a member
    name, found by counting ':'. Each member of the text has one outside its strings, and
    ``doc`` (or its JSON as orjson writes it, one member per name) has each name once: so a
    text with as many ':' as ``doc`` and its tags have members repeats none, and a text
    without escapes (whose strings are then their decoded values byte for byte) repeats none
    when it has as many ':' as orjson's JSON of ``doc``. Anything else may."""
    colons = text.count(b":")
    if doc.__class__ is dict:
        assert isinstance(doc, dict)
        tags = doc.get("tags")
        if colons == len(doc) + (len(tags) if tags.__class__ is dict else 0):
            return False
    if b"\\" in text:
        return True
    try:
        return colons != orjson.dumps(doc).count(b":")
    except orjson.JSONEncodeError:  # nested deeper than orjson writes
        return True


def _repeated_member(text: bytes) -> str | None:
    """The first member name an object of ``text`` (valid JSON) repeats, names compared as
    decoded (``"\\u0061"`` is ``"a"``); None if there is none."""
    objects: list[set[str] | None] = []  # per open object its names so far, None for an array
    name = b""
    for match in _MEMBER_TOKENS.finditer(text):
        token = match.group()
        first = token[0]
        if first == 0x22:  # '"'
            name = token
        elif first == 0x7B:  # '{'
            objects.append(set())
        elif first == 0x5B:  # '['
            objects.append(None)
        elif first == 0x3A:  # ':' after a member name
            names = objects[-1]
            assert names is not None
            decoded = orjson.loads(name) if b"\\" in name else name[1:-1].decode()
            if decoded in names:
                return str(decoded)
            names.add(decoded)
        else:
            objects.pop()
    return None


def _iso(t_us: int) -> str:
    """Epoch microseconds (from 0 to MAX_EVENT_TIME_US) as ISO-8601 in UTC."""
    return (_EPOCH + timedelta(microseconds=t_us)).isoformat()


def _duration(us: int) -> str:
    """Microseconds as seconds, exactly: ``"2.5 s"``."""
    whole, part = divmod(us, 1_000_000)
    return f"{whole}.{part:06d}".rstrip("0").rstrip(".") + " s"


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
