"""Alert transitions from the ``alerts`` topic into Redis: the active alerts and the event stream.

A record of ``alerts`` (key: the device) is an alert starting to fire or resolving, as
models/alerts.py's ``AlertTransition.json`` writes it; :func:`alert_record` reads and checks
one (a value that is not such a record is ``unreadable``: the writer dead-letters it).

Keys (``P`` is ``PULSE_REDIS_PREFIX``):

* ``P:alerts:active`` hash: the alerts firing now, one field per alert,
  ``{rule}:{device}:{metric}:{window}`` (``window`` empty for an absence rule), holding its
  firing transition's JSON as the topic holds it; its resolution removes the field. No TTL:
  an alert may fire for longer than any TTL without a new transition, and it must not
  vanish from the list meanwhile; the hash holds at most one field per (rule, device, metric,
  window), so the registry bounds it.
* ``{P:alerts:active}:v`` hash, in the same Redis Cluster slot: per alert the version of the
  last transition applied (its start and end, in microseconds), also after a resolution (a
  tombstone); TTL ``PULSE_STATE_TTL``, set again by every write.
* ``P:events`` stream (pulse/sinks/history.py's, which ``/api/live`` serves): one entry per
  transition applied, field ``alert`` = its JSON (the closed windows' entries have field
  ``window``).

Exactness. The alerts writer (agents/alerts_writer.py) reads the topic with its own consumer
group and commits only what this sink wrote, so a crash or rebalance makes it write some
records again, and a writer that lost its partitions may still write an old fetch after
its successor wrote newer ones; the topic itself repeats a transition with identical content
after a worker's crash (the worker replays from its changelog). So each alert's
transitions are fenced by their times, one :data:`ALERTS_SCRIPT` call per up to
:data:`TRANSITIONS_PER_CALL` transitions: a transition is applied (the active field set or
removed, an event added) only when its ``(start, end)`` is later than the version held, in
that order. The transitions of one alert come in that order: a window rule's on the closed
windows of one series (starts increasing); an absence rule's firing at ``(last reading,
last reading + duration)``, its resolution at ``(the next reading, the same)``, which may
come before the firing's end but not before its start, and the next firing at or after that
reading. So a repeat or an older transition changes nothing and adds no event: the active
set and the stream hold each transition once.

The limits: a version compares an alert's transitions in time only. An absence rule disabled
while it fires resolves at the watermark; enabled again, its next firing may start at a
reading older than that watermark, and is then refused as older (the alert shows again at
its next transition). The versions' TTL is refreshed by every write of any alert; should it
lapse (no transition for ``PULSE_STATE_TTL``), a firing alert's version is read from its
JSON in the active hash, and a resolved one's is gone: a writer replaying transitions older
than a day (a new consumer group) then adds their events again and sets and removes their
alerts again in order, ending where they were.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.crc import key_slot

from models.outputs import AGGREGATES
from models.reading import NAME_PATTERN
from pulse.sinks._base import FlushBatch
from pulse.sinks._event_stream import EventStreamSink
from pulse.sinks._resp import pack
from pulse.sinks.redis import RedisKeys
from tables.windows import WindowSpecError, parse_window_spec

TRANSITIONS_PER_CALL = 50
"""Transitions applied per call of :data:`ALERTS_SCRIPT` (a call holds Redis well under a
millisecond)."""
ALERT_KEYS = (
    "id", "rule", "device", "site", "labels", "metric", "window", "start", "end",
    "aggregate", "value", "threshold", "state", "severity", "silenced",
)  # fmt: skip
"""The members of an ``alerts`` record (models/alerts.py, ``AlertTransition.json``)."""
MAX_TIME_S = 9_223_372_036
"""The latest time a transition may have (2262-04-11, InfluxDB's nanosecond range)."""

ALERTS_SCRIPT = """\
-- Pulse's active alerts (pulse/sinks/alerts.py). KEYS[1]: the active hash, KEYS[2]: its
-- versions, KEYS[3]: the event stream (absent on a Redis Cluster, where it is in another slot:
-- the caller adds the events). ARGV: TTL in seconds, the stream's MAXLEN, then per transition
-- (in order) its alert's field, its state, its version (start and end in microseconds, each
-- 20 digits: they compare as text) and its JSON. A transition whose version is not later
-- than the alert's is ignored; else the alert's version becomes its version, a firing one
-- sets the field, a resolved one removes it, and an event is added (or, on a cluster,
-- returned). A missing version is read from the firing alert's JSON, if the hash holds one.
-- Returns the number of events added, or on a cluster the JSON of the events to add.
local ttl, maxlen = ARGV[1], ARGV[2]
local stream = KEYS[3]
local added = 0
local to_add = {}
local function digits(seconds)
  return string.format("%020.0f", math.floor(tonumber(seconds) * 1000000 + 0.5))
end
for a = 3, #ARGV, 4 do
  local field, state, version, json = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local held = redis.call("HGET", KEYS[2], field)
  if not held then
    local firing = redis.call("HGET", KEYS[1], field)
    if firing then
      local ok, doc = pcall(cjson.decode, firing)
      if ok and type(doc) == "table" and tonumber(doc["start"]) and tonumber(doc["end"]) then
        held = digits(doc["start"]) .. digits(doc["end"])
      end
    end
  end
  if not held or version > held then
    redis.call("HSET", KEYS[2], field, version)
    if state == "firing" then
      redis.call("HSET", KEYS[1], field, json)
    else
      redis.call("HDEL", KEYS[1], field)
    end
    if stream then
      redis.call("XADD", stream, "MAXLEN", "~", maxlen, "*", "alert", json)
    else
      to_add[#to_add + 1] = json
    end
    added = added + 1
  end
end
redis.call("EXPIRE", KEYS[2], ttl)
if not stream then return to_add end
if added > 0 then redis.call("EXPIRE", stream, ttl) end
return added
"""
ALERTS_SHA = hashlib.sha1(ALERTS_SCRIPT.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One record of the ``alerts`` topic, read and checked (:func:`alert_record`)."""

    id: str
    rule: str
    device: str
    site: str | None
    metric: str
    window: str | None
    start_us: int
    end_us: int
    aggregate: str | None
    value: float | None
    threshold: float
    state: str
    severity: str
    silenced: bool
    json: bytes
    """The record's value as the topic holds it: the active field's and the event's."""

    @property
    def alert(self) -> str:
        """The alert's field in ``P:alerts:active``: ``{rule}:{device}:{metric}:{window}``."""
        return alert_field(self.rule, self.device, self.metric, self.window)

    @property
    def version(self) -> str:
        """Its version: start and end in microseconds, 20 digits each (ordered as text)."""
        return f"{self.start_us:020d}{self.end_us:020d}"


def alert_field(rule: str, device: str, metric: str, window: str | None) -> str:
    """An alert's field in ``P:alerts:active`` (names hold no ``:``)."""
    return f"{rule}:{device}:{metric}:{window or ''}"


def _us(seconds: int | float) -> int:
    """Epoch seconds as written by ``AlertTransition.json`` (an integer when whole, else the
    float nearest to the microseconds divided by a million) back to those microseconds: the
    whole number of microseconds whose quotient is that float (exact until 2242, where
    floats of seconds still tell microseconds apart); another number of seconds to the
    nearest microsecond."""
    if type(seconds) is int:
        return seconds * 1_000_000
    guess = round(seconds * 1_000_000)
    for t_us in (guess, guess - 1, guess + 1):
        if t_us / 1_000_000 == seconds:
            return t_us
    return guess


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and NAME_PATTERN.match(value) is not None


def _is_text(value: Any) -> bool:
    """A label or site text that line protocol and Redis take as it is: 1-256 characters
    without control characters."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= 256
        and not any(ord(c) < 32 or ord(c) == 127 for c in value)
    )


def alert_record(value: bytes | None) -> AlertRecord:
    """The record of an ``alerts`` value; ValueError saying why for a value that is not one.

    Every member of ``AlertTransition.json`` must be there: rule, device, metric and severity
    names of the reading contract; site null or a text (1-256 characters without control
    characters); labels an object of texts; window null (an absence rule) or a window label,
    aggregate null with it or one of the ten, value a number with a window (null without);
    start and end numbers from 1970 to 2262 with start <= end; threshold a number; state
    ``firing`` or ``resolved``; silenced true or false; id a non-empty text.
    """
    try:
        doc = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not an alert transition (not JSON: {exc})") from None
    if not isinstance(doc, dict):
        raise ValueError("not an alert transition (not a JSON object)")
    missing = [name for name in ALERT_KEYS if name not in doc]
    if missing:
        raise ValueError(f"not an alert transition: no {', '.join(missing)}")
    for name in ("rule", "device", "metric", "severity"):
        if not _is_name(doc[name]):
            raise ValueError(f"not an alert transition: {name} {doc[name]!r} is no name")
    if not (isinstance(doc["id"], str) and 0 < len(doc["id"]) <= 128 and _is_text(doc["id"])):
        raise ValueError("not an alert transition: id is not a text")
    site = doc["site"]
    if site is not None and not _is_text(site):
        raise ValueError("not an alert transition: site is neither null nor a text")
    labels = doc["labels"]
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ValueError("not an alert transition: labels is not an object of texts")
    window, aggregate, number = doc["window"], doc["aggregate"], doc["value"]
    if window is None:
        if aggregate is not None or number is not None:
            raise ValueError("not an alert transition: an aggregate or value without a window")
    else:
        if not isinstance(window, str) or window.startswith("sliding:") or ":" in window:
            raise ValueError(f"not an alert transition: window {window!r} is no label")
        try:
            parse_window_spec(window)
        except (WindowSpecError, ValueError):
            raise ValueError(f"not an alert transition: window {window!r} is no label") from None
        if aggregate not in AGGREGATES:
            raise ValueError(f"not an alert transition: aggregate {aggregate!r} is not one")
        if not _is_number(number):
            raise ValueError("not an alert transition: value is not a number")
    for name in ("start", "end", "threshold"):
        if not _is_number(doc[name]):
            raise ValueError(f"not an alert transition: {name} is not a number")
    start, end = doc["start"], doc["end"]
    if not 0 <= start <= end <= MAX_TIME_S:
        raise ValueError("not an alert transition: start and end not in order from 1970 to 2262")
    if doc["state"] not in ("firing", "resolved"):
        raise ValueError(f"not an alert transition: state {doc['state']!r} is not one")
    if type(doc["silenced"]) is not bool:
        raise ValueError("not an alert transition: silenced is not true or false")
    return AlertRecord(
        id=doc["id"],
        rule=doc["rule"],
        device=doc["device"],
        site=site,
        metric=doc["metric"],
        window=window,
        start_us=_us(start),
        end_us=_us(end),
        aggregate=aggregate,
        value=None if number is None else float(number),
        threshold=float(doc["threshold"]),
        state=doc["state"],
        severity=doc["severity"],
        silenced=doc["silenced"],
        json=value or b"",
    )


class AlertsSink(EventStreamSink[AlertRecord]):
    """Alert transitions to ``P:alerts:active`` and ``P:events`` (see the module doc), through
    one connection of its own; Redis away, refusing or busy is waited out (retry_forever,
    state in :attr:`health`). Written by agents/alerts_writer.py from the ``alerts`` topic."""

    name = "alerts"
    script = ALERTS_SCRIPT
    event_kind = "alert"

    def read_record(self, value: bytes | None) -> AlertRecord:
        return alert_record(value)

    async def write(self, batch: FlushBatch) -> None:
        """Nothing: this sink is written from the alerts topic, never by a flush."""

    async def write_records(
        self, records: Sequence[AlertRecord], keys: Sequence[bytes | None]
    ) -> None:
        await self.write_calls(self.calls(records))

    def calls(self, records: Sequence[AlertRecord]) -> list[bytes]:
        """The packed calls of :data:`ALERTS_SCRIPT` that apply ``records`` in order, at most
        :data:`TRANSITIONS_PER_CALL` each. On a cluster the slot of the active hash is
        checked once: every call's keys are in it."""
        active = self.keys.alerts_active
        versions = RedisKeys.versions(active)
        assert key_slot(active.encode()) == key_slot(versions.encode())
        keys = [active, versions] if self.cluster else [active, versions, self.keys.events]
        out = []
        for begin in range(0, len(records), TRANSITIONS_PER_CALL):
            args: list[bytes | str | int] = []
            for record in records[begin : begin + TRANSITIONS_PER_CALL]:
                args += [record.alert, record.state, record.version, record.json]
            out.append(
                pack("EVALSHA", ALERTS_SHA, len(keys), *keys, self.ttl, self.events_maxlen, *args)
            )
        return out
