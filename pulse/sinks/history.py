"""Closed windows into Redis history and the event stream, from the ``aggregates`` topic.

Keys (``P`` is ``PULSE_REDIS_PREFIX``):

* ``P:history:{window}:{device}:{metric}`` sorted set: the series' last
  ``PULSE_HISTORY_LENGTH`` closed windows, each member the window as readers answer it (a
  JSON object of :data:`WINDOW_FIELDS`, in that order: the ``/api/history`` reader writes
  the members into its answer without parsing them), scored by the window start in epoch
  seconds; TTL ``PULSE_STATE_TTL``, set again by every write.
* ``P:events`` stream, capped at about :data:`EVENTS_MAXLEN` entries (approximate trimming):
  one entry per closed window that a history write changed, field ``window`` = its
  ``aggregates`` record (the JSON as the topic holds it).
  Readers resume after an entry id (``/api/live``'s ``Last-Event-ID``).

Exactness. The writer (agents/history_writer.py) reads the topic with its own consumer
group and commits only what this sink wrote, so a crash or rebalance makes it write some
records again; the topic itself may repeat a window with identical content, and a zombie's
early idle close may put the same window there with fewer readings before the full one.
:data:`HISTORY_SCRIPT` therefore keys each series' history by window start: a window whose
start is held already replaces the member only if its count is higher (a window's readings
are a prefix of its readings in offset order, so an equal count is the same content); the
set is trimmed by rank to the newest ``PULSE_HISTORY_LENGTH``; and an event is added only
for a window that is in the set after its write and was not before. So a replay rewrites
nothing and adds no event, and a window older than the newest ``length`` adds none either.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import ssl
from collections.abc import Sequence
from typing import NamedTuple

import orjson
from redis.crc import key_slot

from models.outputs import AGGREGATES, WINDOW_FIELDS
from models.reading import NAME_PATTERN
from pulse.sinks._base import FlushBatch
from pulse.sinks._event_stream import EVENTS_MAXLEN, EventStreamSink
from pulse.sinks.dead_letters import OutputDeadLetters
from pulse.sinks.kafka import aggregate_records
from pulse.sinks.redis import RedisKeys
from tables import _native
from tables.windows import WindowSpecError, parse_window_spec

log = logging.getLogger(__name__)

WINDOWS_PER_CALL = 50
"""Windows written per call of :data:`HISTORY_SCRIPT`: a call keeps Redis busy for well
under a millisecond, so that readers are not held up behind it."""

HISTORY_SCRIPT = """\
-- Pulse's history writes (pulse/sinks/history.py). KEYS[1]: the event stream (on a Redis
-- Cluster, where it is in another slot, the first history key instead: the caller adds the
-- events); KEYS[2..]: history sorted sets. ARGV: length, TTL in seconds, the stream's
-- MAXLEN, "1" when KEYS[1] is the stream, then per window (in order) the index of its key
-- in KEYS, its start (the score), its count, its member and its event. A window whose
-- start is held replaces the member only with a higher count; the set keeps the newest
-- `length` by rank; an event is added for each window that the write put in the set (the
-- stream gets the TTL too). Returns the number of events added, or on a cluster the events
-- to add.
local length, ttl, maxlen = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local added = 0
local to_add = {}
local stream = ARGV[4] == "1" and KEYS[1] or nil
local written = {}
for a = 5, #ARGV, 5 do
  local key = KEYS[tonumber(ARGV[a])]
  local start, count, json, event = ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3], ARGV[a + 4]
  local held = redis.call("ZRANGEBYSCORE", key, start, start)
  local write = true
  for _, member in ipairs(held) do
    if member == json then
      write = false
    else
      local ok, old = pcall(cjson.decode, member)
      local old_count = ok and type(old) == "table" and tonumber(old["count"])
      if old_count and old_count >= count then write = false end
    end
  end
  if write then
    for _, member in ipairs(held) do redis.call("ZREM", key, member) end
    redis.call("ZADD", key, start, json)
    local size = redis.call("ZCARD", key)
    if size > length then redis.call("ZREMRANGEBYRANK", key, 0, size - length - 1) end
    if redis.call("ZSCORE", key, json) then
      if stream then
        redis.call("XADD", stream, "MAXLEN", "~", maxlen, "*", "window", event)
      else
        to_add[#to_add + 1] = event
      end
      added = added + 1
    end
  end
  written[key] = true
end
for key in pairs(written) do redis.call("EXPIRE", key, ttl) end
if not stream then return to_add end
if added > 0 then redis.call("EXPIRE", stream, ttl) end
return added
"""
HISTORY_SHA = hashlib.sha1(HISTORY_SCRIPT.encode()).hexdigest()


class HistoryEntry(NamedTuple):
    """One closed window as the history sink writes it (a tuple: one is built for every
    window the writer reads, and a frozen dataclass took about 1 us longer to build)."""

    key: str
    """Its series' history key."""
    start: float
    """The window start, epoch seconds (the member's score)."""
    readings: int
    """Its count of readings (with the start, its version)."""
    member: bytes
    """The window as readers answer it: :data:`WINDOW_FIELDS` as a JSON object."""
    event: bytes
    """The ``aggregates`` record as the topic holds it."""


_FIELDS = ("device", "metric", "window", "start", "end", *AGGREGATES, "tags")
_REQUIRED = frozenset(_FIELDS)
_NUMBERS = ("start", "end", *AGGREGATES[1:])
_NUMBER_TYPES = (int, float)
SERIES_KEYS_CACHED = 1 << 16
"""History keys remembered with their names checked (:func:`_series_key`): about the
series of the last minutes (an entry is a few hundred bytes), so that a window of a known
series costs no name checks again."""


@functools.lru_cache(maxsize=SERIES_KEYS_CACHED)
def _series_key(prefix: str, window: str, device: str, metric: str) -> str:
    """The history key of a series, after checking its names; ValueError saying why."""
    for name in (device, metric):
        if NAME_PATTERN.match(name) is None:
            raise ValueError(f"not an aggregates record: device or metric {name!r} is no name")
    if window.startswith("sliding:") or ":" in window:
        raise ValueError(f"not an aggregates record: window {window!r} is no label")
    try:
        parse_window_spec(window)
    except (WindowSpecError, ValueError):
        raise ValueError(
            f"not an aggregates record: window {window!r} is no window label"
        ) from None
    return RedisKeys(prefix).history(window, device, metric)


_compact_series: dict[str, dict[bytes, str]] = {}
"""Per key prefix, the series read so far in records of the form closed_window_json writes:
a record's text before ``,"start":`` (``{"device":"d","metric":"m","window":"10s"``) to its
history key, at most :data:`SERIES_KEYS_CACHED` (forgotten together when full). A record of
such a series with no tags is cut into its entry in C (tables._native.aggregates_entry,
about a tenth of parsing it), its names checked already."""


def history_entry(keys: RedisKeys, value: bytes | None) -> HistoryEntry:
    """The history entry of an ``aggregates`` record (pulse/sinks/kafka.py,
    closed_window_json); ValueError saying why for a value that is not one. Device and
    metric must be names of the reading contract and the window a window label (they make
    the key), start and end finite numbers, count a whole number of at least 1 and the other
    aggregates numbers.

    A record in the shape closed_window_json writes, of a series read before, is cut into
    its entry without parsing (tables._native.aggregates_entry): its member holds the
    numbers' texts as the record has them (valid JSON numbers without an exponent; a record
    with one takes the parsing path). For the records Pulse writes those are the texts that
    parsing and writing them again gives: ``repr`` and orjson write a float alike when it
    needs no exponent. Another writer's texts of the same numbers (``21.50``) are kept as
    they are, the same values."""
    series = _compact_series.get(keys.prefix)
    if series is None:
        series = _compact_series.setdefault(keys.prefix, {})
    if type(value) is bytes:
        entry = _native.aggregates_entry(value, series, HistoryEntry)
        if entry is not None:
            return entry
    entry, names = _parsed_entry(keys, value)
    # The series' text in the form closed_window_json writes: its names as they are (a
    # name holds no character JSON escapes).
    text = b'{"device":"%s","metric":"%s","window":"%s"' % names
    if type(value) is bytes and value.startswith(text + b',"start":'):
        if len(series) >= SERIES_KEYS_CACHED:
            series.clear()
        series[text] = entry.key
    return entry


def _parsed_entry(keys: RedisKeys, value: bytes | None) -> tuple[HistoryEntry, tuple[bytes, ...]]:
    """:func:`history_entry` by parsing ``value``, and its device, metric and window."""
    try:
        doc = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not an aggregates record (not JSON: {exc})") from None
    if not isinstance(doc, dict):
        raise ValueError("not an aggregates record (not a JSON object)")
    if not _REQUIRED.issubset(doc):
        missing = [n for n in _FIELDS if n not in doc]
        raise ValueError(f"not an aggregates record: no {', '.join(missing)}")
    device, metric, window = doc["device"], doc["metric"], doc["window"]
    for name in (device, metric):
        if type(name) is not str:
            raise ValueError(f"not an aggregates record: device or metric {name!r} is no name")
    if type(window) is not str:
        raise ValueError(f"not an aggregates record: window {window!r} is no label")
    key = _series_key(keys.prefix, window, device, metric)
    count = doc["count"]
    if type(count) is not int or count < 1:
        raise ValueError("not an aggregates record: count is not a whole number of at least 1")
    # orjson parses no number that is not finite (it refuses one too large for a double), so
    # a number's type is all there is to check.
    for name in _NUMBERS:
        if type(doc[name]) not in _NUMBER_TYPES:
            raise ValueError(f"not an aggregates record: {name} is not a number")
    if type(doc["tags"]) is not dict:
        raise ValueError("not an aggregates record: tags is not an object")
    entry = HistoryEntry(
        key,
        float(doc["start"]),
        count,
        orjson.dumps({name: doc[name] for name in WINDOW_FIELDS}),
        value or b"",
    )
    return entry, (device.encode(), metric.encode(), window.encode())


class HistorySink(EventStreamSink[HistoryEntry]):
    """Closed windows to ``P:history:*`` and ``P:events`` (see the module doc), through one
    connection of its own; Redis away, refusing or busy is waited out (retry_forever, state
    in :attr:`health`). Written by agents/history_writer.py from the ``aggregates`` topic."""

    name = "history"
    script = HISTORY_SCRIPT
    event_kind = "window"

    def __init__(
        self,
        url: str,
        prefix: str,
        length: int,
        ttl_seconds: int,
        *,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        dead_letters: OutputDeadLetters | None = None,
        events_maxlen: int = EVENTS_MAXLEN,
    ) -> None:
        super().__init__(
            url, prefix, ttl_seconds, password=password, tls=tls, dead_letters=dead_letters,
            events_maxlen=events_maxlen,
        )  # fmt: skip
        self.length = length

    def read_record(self, value: bytes | None) -> HistoryEntry:
        return history_entry(self.keys, value)

    async def write(self, batch: FlushBatch) -> None:
        entries = [history_entry(self.keys, value) for _, value in aggregate_records(batch.closed)]
        await self.write_records(entries, [window.device.encode() for window in batch.closed])

    async def write_records(
        self, entries: Sequence[HistoryEntry], keys: Sequence[bytes | None]
    ) -> None:
        await self.write_calls(self.calls(entries))

    def calls(self, entries: Sequence[HistoryEntry]) -> list[bytes]:
        """The packed calls of :data:`HISTORY_SCRIPT` that write ``entries`` in order, at most
        :data:`WINDOWS_PER_CALL` windows each."""
        out = []
        groups: list[Sequence[HistoryEntry]] = [entries]
        if self.cluster:  # a script call's keys in one slot: the windows grouped by slot
            by_slot: dict[int, list[HistoryEntry]] = {}
            for entry in entries:
                by_slot.setdefault(key_slot(entry.key.encode()), []).append(entry)
            groups = list(by_slot.values())
        for group in groups:
            out += self._calls(group)
        return out

    def _calls(self, entries: Sequence[HistoryEntry]) -> list[bytes]:
        # In C (tables/_native.history_calls): building and packing the calls in Python
        # cost about 1.2 us per window, a twentieth of the benchmark worker's CPU.
        return _native.history_calls(
            entries if isinstance(entries, (list, tuple)) else list(entries),
            WINDOWS_PER_CALL,
            HISTORY_SHA,
            None if self.cluster else self.keys.events,
            (self.length, self.ttl, self.events_maxlen, 0 if self.cluster else 1),
        )
