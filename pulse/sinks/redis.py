"""Live state in Redis: latest values, open and last closed windows, top devices; every write
fenced by the version of the state it reflects.

Key layout (``P`` is ``PULSE_REDIS_PREFIX``; every key gets a TTL of ``PULSE_STATE_TTL``):

* ``P:device:{device}`` hash: ``{metric}`` = latest value, ``{metric}:ts`` = its event time,
  ``{metric}:v`` = its version (metric names hold no ``:``, so these never collide).
* ``P:devices`` sorted set: every device, scored by its latest event time in seconds (``ZADD
  GT``: a score only grows, so a late write cannot move a device back); devices last seen
  more than the TTL before the newest event time written are trimmed, about once a minute
  (by event time, so a replay of old readings keeps its devices).
* ``P:open:{window}:{device}:{metric}`` hash: the newest open window (its partial
  aggregates) and its version ``v``; removed when it closes and no newer window is open.
* ``P:closed:{window}:{device}:{metric}`` hash: the most recent closed window, and ``v``.
* ``P:top:{window}:{metric}`` sorted set: device scored by its latest closed window's mean.
* ``P:sliding:{size}:{device}:{metric}`` hash: a sliding window (``start`` exclusive, ``end``
  inclusive: the key's latest event time), and ``v``; ``{size}`` as written after
  ``sliding:`` in ``PULSE_WINDOWS``.

A window's hash holds two fields: ``window``, its :data:`WINDOW_FIELDS` (``count sum min max
mean first last p50 p95 p99 start end``) as text joined by single spaces, and ``v``. One
field rather than twelve because an open window is rewritten on nearly every reading of its
series, and Redis's cost of a fenced write grows with its fields (bench/README.md, issue 19).
* ``{KEY}:v`` hash (the braces make it a Redis Cluster hash tag: it lives in KEY's slot),
  only where KEY cannot hold its versions: beside a top key, each member's version under the
  device (a member carries no fields); beside an open window's key once it is removed, its
  tombstone under ``v``. Scans of ``P:*`` do not match it.

Readers (pulse/live_state.py) leave the version fields out: ``v`` of a window's hash, and
``{metric}:v`` of a device's; :func:`read_window` reads a window's hash.

Fencing. A worker that lost its partitions but does not know it yet (a zombie: paused,
stalled, cut off) may still write what it drained before. Every write therefore carries the
version of the state it reflects and applies only if that version is not older than the one
stored with the key, field or member; the check runs inside Redis (:data:`FENCE_SCRIPT`, by
EVALSHA, each call fencing many keys, each key on its own). Processing is deterministic in
offset order, so a state with more input applied is newer, and an equal version means
identical content. The versions, each compared in order:

* closed window and its top member: (window start, count); a window's readings are a
  prefix of its readings in offset order, so the same count means the same content, and a
  higher one a later close (a zombie's idle close can close a window early);
* open window: (window start, count), the count growing with every reading; its removal:
  (start of the window that closed, +infinity), kept as a tombstone in ``{KEY}:v``;
* sliding window: (end = the key's latest event time, count): the end only grows, and the
  count grows while it stays;
* a device's value: (its event time, the partition's input offset at the drain); a device's
  readings are in one partition (keyed by device).

A window's or a metric's version lives in its own hash, so its write is one read of the
stored version and one HSET of the fields with the new version (a version in a key of its
own cost a read and two writes, which Redis spends more on). Where the hash holds no version
(the key is absent, or was written before versions moved into keys), the script reads
``{KEY}:v``: so the tombstone of a removed open window is consulted exactly when the window's
key does not exist, and a write that would bring it back is compared with it; the common
write of an existing key never touches ``{KEY}:v``. A removal deletes the key (its ``v``
with it) and writes the tombstone; a write newer than the tombstone creates the key again
and leaves the tombstone to expire (only read while the key is absent, and the key holds a
version at least as new).

So a late write can neither regress a value nor bring back a removed open window. Versions
and removal tombstones live as long as keys do (``PULSE_STATE_TTL``, at least the session
timeout): a write later than that after a key's last write (or removal) meets no version and
applies, as on a fresh server.

Writing. Each key is written once per flush with its latest content, never once per reading.
The builders of tables/_native make one write per key (its kind, its arguments, whether to
set its TTLs); :func:`fenced_calls` packs consecutive writes into EVALSHA calls of up to
:data:`KEYS_PER_CALL` keys, so that the fixed cost of a script call in Redis is paid once for
many keys; a flush sends the calls pipelined, one round trip per
:data:`COMMANDS_PER_ROUND_TRIP` calls. Within a call each key is checked and written on its
own, exactly as by a call of its own: an older write of one key refuses nothing of another.
A call answers how many of its keys' writes it refused entirely; the sink counts them. A
Redis Cluster runs a script on keys of one slot only: for a ``redis+cluster://`` URL the
writes are grouped by slot first and sent through redis-py's cluster client
(pulse/sinks/_cluster.py), which routes each call to its slot's master.

A key's TTL (and a top key's versions') is set whenever a write creates the key or one of
its fields, and else when the sink asks: when it first writes a key (for an open window: when
a new window starts in it), again once half a TTL has passed, and on every write of a closed,
top or sliding key; a tombstone's whenever a removal writes it. So no key is ever left
without a TTL. The script is loaded (SCRIPT LOAD) on every connection and again when Redis
answers NOSCRIPT (a server that lost its scripts without a reconnection).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import time
from collections.abc import Sequence
from typing import Any

from redis.crc import key_slot

from models.outputs import WINDOW_FIELDS, AggregateText
from pulse.settings import redis_is_cluster
from pulse.sinks._base import FlushBatch, Sink
from pulse.sinks._cluster import ClusterPipeline
from pulse.sinks._resp import RedisRefused, RedisReplyError, RespPipeline, pack
from pulse.sinks._retry import RefusedByTarget, RetryLater, retry_forever
from pulse.sinks._text import aggregate_text, seconds_text
from tables import _native
from tables._native import Write

log = logging.getLogger(__name__)

KEYS_PER_CALL = 50
"""Keys fenced per call of :data:`FENCE_SCRIPT` at most (see :func:`fenced_calls`). Many per
call spread the fixed cost of a script call over them (beyond about ten keys per call, the
cost per key stops falling: bench/redis_writes.py); few enough that a call keeps Redis busy
for under a millisecond, so that readers are not held up behind it."""

COMMANDS_PER_ROUND_TRIP = 20_000 // KEYS_PER_CALL
"""Calls per pipelined round trip: about 20,000 keys."""

DEVICE_INDEX_TRIM_INTERVAL = 60.0
"""Seconds between two trims of ``P:devices`` (devices not seen for a TTL leave it)."""

DEVICE_TTL_MEMORY = 60.0
"""Seconds the sink remembers that it set a device key's TTL (at most half the TTL): a device
written again within them needs no TTL write. Longer than a flush by far, so a device that
reports every few seconds gets its TTL set once a minute or two, against a write per flush;
short enough that devices that stopped reporting (a flood of new device names) are
forgotten, and the sink's memory stays bounded by the devices of the last minutes."""

FENCE_SCRIPT = """\
-- Pulse's fenced writes, of many keys in one call (pulse/sinks/redis.py). KEYS: per key
-- written, the key and the hash {key}:v beside it (in the same cluster slot): a top key's
-- versions, an open window's tombstone. ARGV[1]: the TTL in seconds. Then per key, in the
-- order of KEYS: its kind of write, "1" to set its TTL (also set whenever the write creates
-- the key or a field), n, and its n arguments, by kind:
--   w  a window's hash: version, then field, value, ... (no field named v); the version is
--      the hash's field v. No field: remove the key and keep the version in {key}:v (a
--      tombstone, with the TTL);
--   f  a device's hash: per metric version, metric, value, metric:ts, time; the version is
--      the hash's field metric:v;
--   z  a sorted set: per member version, score, member; the versions in {key}:v, by member.
-- A key that holds no version of a window or a metric (the key does not exist, or was
-- written while versions were kept beside keys) is compared with {key}:v's, if any: so a
-- removed window's tombstone is read only while its key is absent. A version is decimal
-- integers joined by ":" ("inf" above every integer), compared in order. A write (or a
-- metric's, a member's) applies unless its version is older than the one stored. Returns
-- how many keys' writes were refused entirely (nothing applied). A malformed call (an
-- unknown kind, arguments that do not add up) is an error reply and writes nothing.
local ttl = ARGV[1]

-- -1, 0 or 1 as integer a is below, equal to or above integer b (exact at any size).
local function compare(a, b)
  if a == b then return 0 end
  if a == "inf" then return 1 end
  if b == "inf" then return -1 end
  if #a < 16 and #b < 16 then -- at most 15 digits: exact in a Lua number, one comparison
    local x, y = tonumber(a), tonumber(b)
    if x == y then return 0 end
    return x < y and -1 or 1
  end
  local negative = a:sub(1, 1) == "-"
  if negative ~= (b:sub(1, 1) == "-") then return negative and -1 or 1 end
  local sign = 1
  if negative then a, b, sign = a:sub(2), b:sub(2), -1 end
  if #a ~= #b then return #a < #b and -sign or sign end
  for i = 1, #a, 15 do -- 15 digits are exact in a Lua number
    local x, y = tonumber(a:sub(i, i + 14)), tonumber(b:sub(i, i + 14))
    if x ~= y then return x < y and -sign or sign end
  end
  return 0
end

-- Whether version new is older than version old (false when there is none).
local function older(new, old)
  if not old or new == old then return false end
  local i, j = 1, 1
  while true do
    local new_end, old_end = new:find(":", i, true), old:find(":", j, true)
    local order = compare(new:sub(i, (new_end or 0) - 1), old:sub(j, (old_end or 0) - 1))
    if order ~= 0 then return order < 0 end
    if not new_end or not old_end then return old_end ~= nil end
    i, j = new_end + 1, old_end + 1
  end
end

-- The command cmd on key with the items of list, at most about 4,000 at a time (Lua's
-- unpack holds at most 8,000 values), each time a whole number of groups of size group:
-- the sum of the integer replies, or the array replies joined.
local function batched(cmd, key, list, group)
  local per_call, total, joined = 4000 - 4000 % group, 0, {}
  for from = 1, #list, per_call do
    local reply = redis.call(cmd, key, unpack(list, from, math.min(from + per_call - 1, #list)))
    if type(reply) == "table" then
      for _, item in ipairs(reply) do joined[#joined + 1] = item end
    else
      total = total + reply
    end
  end
  return cmd == "HMGET" and joined or total
end

-- The layout first, so that a malformed call writes nothing. A kind's n arguments: how many
-- come first (a window's version), then groups of how many.
local shapes = {w = {1, 2}, f = {0, 5}, z = {0, 3}}
if #KEYS % 2 ~= 0 then return redis.error_reply("fenced writes: an odd number of keys") end
local a = 2
for k = 1, #KEYS, 2 do
  local kind, n = ARGV[a], tonumber(ARGV[a + 2])
  local shape = shapes[kind]
  if not shape then return redis.error_reply("unknown kind of write: " .. tostring(kind)) end
  if not n or n < shape[1] or (n - shape[1]) % shape[2] ~= 0 then
    return redis.error_reply("fenced writes: bad argument count for " .. KEYS[k])
  end
  a = a + 3 + n
end
if a ~= #ARGV + 1 then
  return redis.error_reply("fenced writes: " .. #ARGV .. " arguments, not " .. (a - 1))
end

local refused = 0
a = 2
for k = 1, #KEYS, 2 do
  local key, beside = KEYS[k], KEYS[k + 1]
  local kind, refresh = ARGV[a], ARGV[a + 1] == "1"
  local first, last = a + 3, a + 2 + tonumber(ARGV[a + 2]) -- this key's arguments
  a = last + 1
  local applied, created = 0, false
  if kind == "w" then
    local version = ARGV[first]
    -- Its v; a key without one (absent: removed, expired, never written) may have left a
    -- tombstone beside it.
    local stored = redis.call("HGET", key, "v") or redis.call("HGET", beside, "v")
    if not older(version, stored) then
      applied = 1
      if first == last then -- no field: the key's removal, its version kept as a tombstone
        redis.call("DEL", key)
        redis.call("HSET", beside, "v", version)
        redis.call("EXPIRE", beside, ttl)
        refresh = false -- no key left to set a TTL on
      else
        created = redis.call("HSET", key, "v", version, unpack(ARGV, first + 1, last)) > 0
      end
    end
  elseif kind == "f" then -- per metric (version, metric, value, metric:ts, time): the
    -- stored versions (fields metric:v) in one HMGET, then one HSET of what applies.
    local names = {}
    for i = first, last, 5 do names[#names + 1] = ARGV[i + 1] .. ":v" end
    local stored = batched("HMGET", key, names, 1)
    -- A metric without one (new to the key, or written while versions were kept beside
    -- keys): the version beside the key, if any.
    local missing, metrics = {}, {}
    for j = 1, #names do
      if not stored[j] then
        missing[#missing + 1] = j
        metrics[#metrics + 1] = ARGV[first + (j - 1) * 5 + 1]
      end
    end
    if #missing > 0 then
      local kept = batched("HMGET", beside, metrics, 1)
      for m = 1, #missing do stored[missing[m]] = kept[m] end
    end
    local newest, items = {}, {}
    for j = 1, #names do
      local i, name = first + (j - 1) * 5, names[j]
      local old = newest[name] or stored[j] -- named twice: the later against the earlier
      if not older(ARGV[i], old) then
        newest[name] = ARGV[i]
        for m = i + 1, i + 4 do items[#items + 1] = ARGV[m] end
        items[#items + 1] = name
        items[#items + 1] = ARGV[i]
        applied = applied + 1
      end
    end
    if applied > 0 then created = batched("HSET", key, items, 6) > 0 end
  else -- "z": per member (version, score, member), the versions in the hash beside the key:
    -- the stored ones in one HMGET, then one write of what applies to each of the two keys.
    local names = {}
    for i = first, last, 3 do names[#names + 1] = ARGV[i + 2] end
    local stored = batched("HMGET", beside, names, 1)
    local newest, version_items, items = {}, {}, {}
    for j = 1, #names do
      local i, name = first + (j - 1) * 3, names[j]
      local old = newest[name] or stored[j] -- named twice: the later against the earlier
      if not older(ARGV[i], old) then
        newest[name] = ARGV[i]
        version_items[#version_items + 1] = name
        version_items[#version_items + 1] = ARGV[i]
        items[#items + 1] = ARGV[i + 1]
        items[#items + 1] = name
        applied = applied + 1
      end
    end
    if applied > 0 then
      created = batched("HSET", beside, version_items, 2) > 0
      created = batched("ZADD", key, items, 2) > 0 or created
      if refresh or created then redis.call("EXPIRE", beside, ttl) end
    end
  end
  if applied == 0 then
    refused = refused + 1
  elseif refresh or created then
    redis.call("EXPIRE", key, ttl)
  end
end
return refused
"""
"""The Lua script every Redis write runs (EVALSHA): see the module's docstring."""

FENCE_SHA = hashlib.sha1(FENCE_SCRIPT.encode()).hexdigest()
"""The SHA1 of :data:`FENCE_SCRIPT`, by which EVALSHA names it."""


class RedisKeys:
    """Names of the keys Pulse writes, under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @property
    def device_prefix(self) -> str:
        return f"{self.prefix}:device:"

    def device(self, device: str) -> str:
        return f"{self.device_prefix}{device}"

    @property
    def devices(self) -> str:
        """The sorted set of devices by latest event time."""
        return f"{self.prefix}:devices"

    @property
    def open_prefix(self) -> str:
        return f"{self.prefix}:open:"

    def open(self, window: str, device: str, metric: str) -> str:
        return f"{self.open_prefix}{window}:{device}:{metric}"

    @property
    def closed_prefix(self) -> str:
        return f"{self.prefix}:closed:"

    def closed(self, window: str, device: str, metric: str) -> str:
        return f"{self.closed_prefix}{window}:{device}:{metric}"

    @property
    def top_prefix(self) -> str:
        return f"{self.prefix}:top:"

    def top(self, window: str, metric: str) -> str:
        return f"{self.top_prefix}{window}:{metric}"

    def sliding(self, window: str, device: str, metric: str) -> str:
        size = window.removeprefix("sliding:")
        return f"{self.prefix}:sliding:{size}:{device}:{metric}"

    def history(self, window: str, device: str, metric: str) -> str:
        """The sorted set of a series' last closed windows (pulse/sinks/history.py)."""
        return f"{self.prefix}:history:{window}:{device}:{metric}"

    @property
    def events(self) -> str:
        """The stream of closed windows (pulse/sinks/history.py) and alert transitions
        (pulse/sinks/alerts.py)."""
        return f"{self.prefix}:events"

    @property
    def alerts_active(self) -> str:
        """The hash of the alerts firing now (pulse/sinks/alerts.py)."""
        return f"{self.prefix}:alerts:active"

    @staticmethod
    def versions(key: str) -> str:
        """The hash of the versions of ``key``, in its Redis Cluster slot."""
        return f"{{{key}}}:v"


WINDOW_FIELD = "window"
"""The field of an open, closed or sliding window's hash that holds its :data:`WINDOW_FIELDS`
joined by single spaces (see the module doc)."""


def window_hset(key: str, text: AggregateText, start_us: int, end_us: int, version: str) -> Write:
    """The fenced write (tables/_native: window_write) of a window's hash ``key``: ``count ..
    p99 start end`` from the shared aggregate text, at ``version``, with the TTLs set."""
    values = (*text, seconds_text(start_us), seconds_text(end_us))
    return _native.window_write(key, version, (WINDOW_FIELD,), (" ".join(values),))


def read_window(stored: dict[Any, Any]) -> dict[str, str] | None:
    """A window's hash as read from Redis (str or bytes names and values), as ``{field: text}``
    for :data:`WINDOW_FIELDS`, without its version; None for no window (an absent key, or a
    tombstone's hash)."""
    packed = stored.get(WINDOW_FIELD, stored.get(WINDOW_FIELD.encode()))
    if packed is None:
        return None
    text = packed.decode() if isinstance(packed, bytes) else str(packed)
    values = text.split(" ")
    if len(values) != len(WINDOW_FIELDS):
        raise ValueError(f"a window's hash holds {len(values)} values, not {len(WINDOW_FIELDS)}")
    return dict(zip(WINDOW_FIELDS, values, strict=True))


def _bulk(part: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(part), part)


_EVALSHA = _bulk(b"EVALSHA") + _bulk(FENCE_SHA.encode())


def write_slot(write: Write) -> int:
    """The Redis Cluster slot of a write's key (its ``{KEY}:v`` is in the same one)."""
    return key_slot(write[0].split(b"\r\n", 2)[1])


def fenced_calls(
    writes: Sequence[Write], ttl: int, keys_per_call: int, by_slot: bool = False
) -> list[bytes]:
    """The calls of :data:`FENCE_SCRIPT` that make ``writes`` (per-key writes of
    tables/_native: keys, args, argc): consecutive writes packed at most ``keys_per_call``
    keys per call, each call in RESP as hiredis.pack_command packs ``EVALSHA FENCE_SHA 2K
    key1 {key1}:v ... keyK {keyK}:v ttl write1 ... writeK``.

    ``by_slot`` (a Redis Cluster, which runs a script only on keys of one slot): the writes
    are first grouped by the slot of their key, each group in the order of ``writes``, and
    a call holds keys of one slot only. Each key is fenced on its own, so only the order of
    a key's own writes matters, and that is kept.
    """
    if keys_per_call < 1:
        raise ValueError("keys_per_call must be at least 1")
    if by_slot:
        groups: dict[int, list[Write]] = {}
        for write in writes:
            groups.setdefault(write_slot(write), []).append(write)
        return [
            call for group in groups.values() for call in fenced_calls(group, ttl, keys_per_call)
        ]
    ttl_part = _bulk(b"%d" % ttl)
    calls = []
    for begin in range(0, len(writes), keys_per_call):
        chunk = writes[begin : begin + keys_per_call]
        key_count = b"%d" % (2 * len(chunk))
        argc = 4 + 2 * len(chunk) + sum([write[2] for write in chunk])
        parts = [b"*%d\r\n" % argc, _EVALSHA, _bulk(key_count)]
        parts += [write[0] for write in chunk]
        parts.append(ttl_part)
        parts += [write[1] for write in chunk]
        calls.append(b"".join(parts))
    return calls


async def execute_scripted(
    connection: RespPipeline | ClusterPipeline, chunk: list[bytes], load_script: bytes, script: str
) -> list[Any]:
    """Send a chunk of script calls (EVALSHA), return the replies; when the server has lost
    the script (restarted behind a proxy, failed over, flushed) load it (``load_script``:
    the packed SCRIPT LOAD of ``script``; on a cluster, on every master) and send the chunk
    again, so the calls must be idempotent. Redis's
    error replies and refusals come out as the exceptions of pulse/sinks/_retry.py
    (:func:`server_refusal`), for retry_forever."""
    try:
        try:
            return await connection.execute(chunk)
        except RedisReplyError as exc:
            if not is_noscript(exc):
                raise
            if isinstance(connection, ClusterPipeline):
                await connection.load_script(script)
            else:
                await connection.execute([load_script])
            return await connection.execute(chunk)
    except RedisReplyError as exc:
        raise server_refusal(exc) from None
    except RedisRefused as exc:  # credentials or ACL on connecting: the operator's problem
        raise RefusedByTarget(str(exc)) from None


def is_noscript(error: RedisReplyError) -> bool:
    """Whether every error of a pipeline was NOSCRIPT: the server has lost the script."""
    return bool(error.errors) and all(e.startswith("NOSCRIPT") for e in error.errors)


BUSY_REPLIES = (
    "LOADING", "BUSY", "OOM", "READONLY", "MISCONF", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN"
)  # fmt: skip
"""Error replies of a server that cannot write now (loading its data, out of memory, a
replica, a failed save, a cluster failing over): backpressure, waited out."""
REFUSED_REPLIES = ("NOAUTH", "WRONGPASS", "NOPERM")
"""Error replies refusing the client (credentials, ACL): an operator's problem."""


def server_refusal(error: RedisReplyError) -> Exception:
    """The exception of pulse/sinks/_retry.py for Redis's error replies: backpressure or a
    refusal of the client; any other error (a bug in a write) as it is. The writes are
    idempotent (fenced by version), so the chunk may be sent again whole."""
    first = error.errors[0]
    if first.startswith(REFUSED_REPLIES):
        return RefusedByTarget(f"Redis: {first}")
    if first.startswith(BUSY_REPLIES):
        return RetryLater(f"Redis: {first}")
    return error


MAX_RETRY_DELAY = 1.0
"""Longest wait between two tries of a write: a refused connection costs nothing, and Redis
back must get its keys rewritten within a second or two."""


class RedisSink(Sink):
    """Live state to Redis (see the module doc). It mirrors the state: while Redis is away,
    flushes complete without it, and once it answers again every key of the worker's state
    is rewritten (``mirrors_state``; agents/flush.py, MirrorLane)."""

    name = "redis"
    mirrors_state = True

    LATEST = "latest"
    WINDOWS = "windows"

    def __init__(
        self,
        url: str,
        prefix: str,
        ttl_seconds: int,
        *,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        parts: frozenset[str] = frozenset({LATEST, WINDOWS}),
    ) -> None:
        """``password`` and ``tls``: see :class:`RespPipeline` (the worker passes
        :func:`pulse.redis_clients.resp_options`). ``parts``: which keys of a batch this sink
        writes, its latest values (``P:device:*``) and its windows (open, sliding, closed
        and top keys): the worker writes them through two sinks (``redis-latest`` and
        ``redis``), each on its own connection and lane, so that a device's latest value
        never waits behind the window writes of an earlier flush."""
        self.parts = parts
        if parts == {self.LATEST}:
            self.name = "redis-latest"
            self.paces_flushes = True
        elif parts == {self.WINDOWS}:
            self.paces_flushes = False
        self.keys = RedisKeys(prefix)
        self.ttl = ttl_seconds
        self._load_script = pack("SCRIPT", "LOAD", FENCE_SCRIPT)
        self.cluster = redis_is_cluster(url)
        """A Redis Cluster: writes grouped by slot, through redis-py's cluster client."""
        self.connection: RespPipeline | ClusterPipeline = (
            ClusterPipeline(url, password=password, tls=tls)
            if self.cluster
            else RespPipeline(url, on_connect=[self._load_script], password=password, tls=tls)
        )
        # Open-window keys whose TTL was set, with the window start and when: an open key is
        # rewritten on every flush that changes it, but its TTL needs setting only when a new
        # window starts there (or half a TTL later), which halves the work on that path.
        self._open_ttl_set: dict[str, tuple[int, float]] = {}
        # Device keys whose TTL was set, and when: likewise, a device's hash is rewritten on
        # every flush with a new reading of it; entries older than DEVICE_TTL_MEMORY (or half
        # a TTL) are pruned.
        self._device_ttl_set: dict[str, float] = {}
        self._prune_device_ttls_at = 0.0
        self._trim_devices_at = 0.0
        self.refused = 0
        """Writes refused so far, wholly: older than what Redis holds (a worker that lost
        its partitions and wrote late)."""

    @property
    def connections(self) -> int:
        return self.connection.connections

    async def stop(self) -> None:
        await self.connection.close()

    async def write(self, batch: FlushBatch) -> None:
        while True:
            connections = self.connection.connections
            calls = self._commands(batch)
            for begin in range(0, len(calls), COMMANDS_PER_ROUND_TRIP):
                chunk = calls[begin : begin + COMMANDS_PER_ROUND_TRIP]
                replies = await retry_forever(
                    "redis write",
                    lambda chunk=chunk: self._execute(chunk),  # type: ignore[misc]
                    (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError),
                    self.health,
                    max_delay=MAX_RETRY_DELAY,
                )
                refused = sum(replies)  # each call answers how many of its keys it refused
                if refused:
                    self.refused += refused
                    log.info("redis: %d late writes refused (older than what Redis holds)", refused)
            index = self._device_index(batch)
            if index:
                await retry_forever(
                    "redis write",
                    lambda index=index: self._execute(index),  # type: ignore[misc]
                    (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError),
                    self.health,
                    max_delay=MAX_RETRY_DELAY,
                )
            # The first connection ever is no reconnection: nothing was remembered before it.
            if self.connection.connections <= max(connections, 1):
                return
            # Reconnected meanwhile: the server may be a restarted one that lost keys, and
            # with them the TTLs remembered as set. Forget those and write the batch again
            # (its writes are idempotent: an equal version applies the same content).
            self._open_ttl_set.clear()
            self._device_ttl_set.clear()

    async def _execute(self, chunk: list[bytes]) -> list[Any]:
        return await execute_scripted(self.connection, chunk, self._load_script, FENCE_SCRIPT)

    def _device_index(self, batch: FlushBatch) -> list[bytes]:
        """``P:devices`` for the batch's latest values: one ``ZADD GT`` of each device's
        newest event time (after the values themselves, which readers wait for first), its
        TTL, and now and then the trim of devices not seen for a TTL of event time before the
        batch's newest. Not fenced by a version:
        the score is its own, and GT keeps the highest."""
        if self.LATEST not in self.parts or not batch.latest:
            return []
        newest: dict[str, int] = {}
        for entry in batch.latest:
            if entry.t_us > newest.get(entry.device, -1):
                newest[entry.device] = entry.t_us
        items: list[str] = []
        for device, t_us in newest.items():
            items.append(seconds_text(t_us))
            items.append(device)
        key = self.keys.devices
        commands = [pack("ZADD", key, "GT", *items), pack("EXPIRE", key, self.ttl)]
        now = time.monotonic()
        if now >= self._trim_devices_at:
            self._trim_devices_at = now + DEVICE_INDEX_TRIM_INTERVAL
            newest_s = max(newest.values()) / 1e6
            commands.append(pack("ZREMRANGEBYSCORE", key, "-inf", f"({newest_s - self.ttl}"))
        return commands

    def _commands(self, batch: FlushBatch) -> list[bytes]:
        """The batch's fenced calls: every key's write (:meth:`_writes`), packed."""
        return fenced_calls(self._writes(batch), self.ttl, KEYS_PER_CALL, self.cluster)

    def _writes(self, batch: FlushBatch) -> list[Write]:
        """One fenced write per key of the batch: latest values, open views, sliding windows,
        closed windows and their top keys, in that order."""
        keys, ttl = self.keys, self.ttl
        now = time.monotonic()
        ttl_set = self._device_ttl_set
        if now >= self._prune_device_ttls_at:  # forget the TTLs set longer ago
            memory = min(ttl / 2, DEVICE_TTL_MEMORY)
            self._device_ttl_set = ttl_set = {
                device: at for device, at in ttl_set.items() if now - at <= memory
            }
            self._prune_device_ttls_at = now + memory
        # One write per device. A merged batch (a lane that fell behind) may hold several
        # values of a (device, metric): the last is the newest.
        out = (
            _native.latest_writes(batch.latest, keys.device_prefix, ttl_set, now, ttl)
            if self.LATEST in self.parts
            else []
        )
        if self.WINDOWS not in self.parts:
            return out

        # Per open view: its removal when no window is open any more, else its hash (with the
        # TTLs when a new window starts at the key, or half a TTL after the last).
        open_views = {(v.window, v.device, v.metric): v for v in batch.open_views}
        out += _native.open_view_writes(
            open_views.values(), keys.open_prefix, self._open_ttl_set, now, ttl, WINDOW_FIELD
        )

        for view in {(v.window, v.device, v.metric): v for v in batch.sliding}.values():
            assert view.state is not None
            key = keys.sliding(view.window, view.device, view.metric)
            text = aggregate_text(view)
            version = f"{view.end_us}:{text[0]}"
            out.append(window_hset(key, text, view.start_us, view.end_us, version))

        # Closed windows: a merged batch may close several windows of a series, and the one
        # with the latest start is written; each joins its top key.
        out += _native.closed_window_writes(
            batch.closed, keys.closed_prefix, keys.top_prefix, WINDOW_FIELD
        )
        return out
