"""The bridge's Redis side: its keys beside each stream, and the Lua scripts that lease,
read, checkpoint and trim a stream, each fenced by the lease.

Beside a stream ``S`` (all in ``S``'s Redis Cluster slot, by the hash tag):

* ``{S}:lease``: the lease, ``"{token} {owner}"`` with a TTL of ``PULSE_BRIDGE_LEASE``;
  only a bridge holding it reads, checkpoints, trims or releases ``S``;
* ``{S}:bridge``: a hash, ``token`` (the last lease token given: each lease gets the next),
  ``acked`` (every entry up to this id is in Kafka, acknowledged), ``offsets`` (JSON: per
  topic the offset of each partition before which no record of ``S`` after ``acked`` can
  be: where a read-back starts) and ``owner``. No TTL: it is the stream's progress.

The stream's consumer group ``{PULSE_APP_ID}-bridge`` (one consumer, ``bridge``, whoever
holds the lease) delivers the entries; a claim sets its last delivered id back to
``acked`` so the new holder gets again every entry not known to be in Kafka.

And one sorted set of the bridges alive, ``{PULSE_REDIS_PREFIX}:bridge:members`` (member:
the bridge, score: until when, Redis time in ms), by which each takes its share.
"""

from __future__ import annotations

import hashlib
from typing import Any

import hiredis
from redis.commands.core import AsyncScript

from pulse.redis_clients import RedisClient, resp_options
from pulse.settings import Settings, redis_is_cluster
from pulse.sinks._cluster import ClusterPipeline
from pulse.sinks._resp import RedisReplyError, RespPipeline, pack

CONSUMER = "bridge"
"""The consumer name every bridge reads a stream's group with (the lease says who)."""

ACQUIRE = """
-- KEYS[1] lease, KEYS[2] the stream's hash, KEYS[3] stream. ARGV[1] owner, ARGV[2] TTL
-- (ms). The lease with the next token: {token, the stream's length}; nil when someone holds
-- it.
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local token = redis.call('HINCRBY', KEYS[2], 'token', 1)
redis.call('SET', KEYS[1], token .. ' ' .. ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], 'owner', ARGV[1])
return {token, redis.call('XLEN', KEYS[3])}
"""

RENEW = """
-- KEYS[1] lease, KEYS[2] stream. ARGV[1] the lease's value, ARGV[2] TTL (ms).
-- The stream's length, or -1: the lease is not (any more) ARGV[1].
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('XLEN', KEYS[2])
"""

RELEASE = """
-- KEYS[1] lease. ARGV[1] the lease's value. 1 if released, 0 if not held.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

CLAIM = """
-- KEYS[1] lease, KEYS[2] the stream's hash, KEYS[3] stream. ARGV[1] the lease's value,
-- ARGV[2] the group. Sets the group's last delivered id back to the acked one (creating
-- the group there if it has none); returns {acked, offsets} ('' for none), or -1: the
-- lease is not ARGV[1].
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local acked = redis.call('HGET', KEYS[2], 'acked') or '0-0'
local offsets = redis.call('HGET', KEYS[2], 'offsets') or ''
local created = redis.pcall('XGROUP', 'CREATE', KEYS[3], ARGV[2], acked)
if type(created) == 'table' and created.err then
  if string.find(created.err, 'BUSYGROUP') then
    redis.call('XGROUP', 'SETID', KEYS[3], ARGV[2], acked)
  else
    return redis.error_reply(created.err)
  end
end
return {acked, offsets}
"""

READ = """
-- KEYS[1] lease, KEYS[2] stream. ARGV[1] the lease's value, ARGV[2] group, ARGV[3]
-- consumer, ARGV[4] count. XREADGROUP's answer (NOACK; nil: no new entry), or -1: the
-- lease is not ARGV[1].
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
return redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', ARGV[4], 'NOACK',
                  'STREAMS', KEYS[2], '>')
"""

CHECKPOINT = """
-- KEYS[1] lease, KEYS[2] the stream's hash, KEYS[3] stream. ARGV[1] the lease's value,
-- ARGV[2] acked id, ARGV[3] offsets (JSON), ARGV[4] the id to trim below ('' for none).
-- The stream's length after the trim, or -1: the lease is not ARGV[1] (nothing written).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[2], 'acked', ARGV[2], 'offsets', ARGV[3])
if ARGV[4] ~= '' then redis.call('XTRIM', KEYS[3], 'MINID', ARGV[4]) end
return redis.call('XLEN', KEYS[3])
"""

MEMBERS = """
-- KEYS[1] the members. ARGV[1] this bridge, ARGV[2] TTL (ms), ARGV[3] '1' to join, '0'
-- to leave. The bridges alive (this one included when it joins).
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2] * 10)
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return redis.call('ZCARD', KEYS[1])
"""


def lease_key(stream: str) -> str:
    return f"{{{stream}}}:lease"


def state_key(stream: str) -> str:
    return f"{{{stream}}}:bridge"


class Scripts:
    """The scripts, registered on one client (loaded on first use, again after NOSCRIPT)."""

    def __init__(self, client: RedisClient) -> None:
        self.acquire: AsyncScript = client.register_script(ACQUIRE)
        self.renew: AsyncScript = client.register_script(RENEW)
        self.release: AsyncScript = client.register_script(RELEASE)
        self.claim: AsyncScript = client.register_script(CLAIM)
        self.read: AsyncScript = client.register_script(READ)
        self.checkpoint: AsyncScript = client.register_script(CHECKPOINT)
        self.members: AsyncScript = client.register_script(MEMBERS)


def next_id(entry_id: bytes) -> bytes:
    """The smallest entry id after ``entry_id`` (what XTRIM MINID keeps from)."""
    ms, _, seq = entry_id.partition(b"-")
    if int(seq) == 2**64 - 1:
        return str(int(ms) + 1).encode() + b"-0"
    return ms + b"-" + str(int(seq) + 1).encode()


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


READ_CONNECTIONS = 4
"""Connections the reads go over, each with a share of the streams."""


class Wire:
    """The bridge's bulk commands (reads, checkpoints), packed by hiredis and sent on
    connections of their own (pulse/sinks/_resp.py; on a Redis Cluster, its pipeline), their
    replies parsed by hiredis: redis-py would pack and parse each argument and entry in
    Python. ``reads`` serve the reader, ``checkpoints`` the checkpoints (a connection serves one
    caller at a time)."""

    SCRIPTS = (READ, CHECKPOINT)

    def __init__(self, settings: Settings) -> None:
        self.cluster = redis_is_cluster(settings.redis_url)
        self._load = [pack("SCRIPT", "LOAD", script) for script in self.SCRIPTS]
        self.reads = [self._connection(settings) for _ in range(READ_CONNECTIONS)]
        self.checkpoints = self._connection(settings)

    def _connection(self, settings: Settings) -> RespPipeline | ClusterPipeline:
        if self.cluster:
            return ClusterPipeline(settings.redis_url, **resp_options(settings))
        return RespPipeline(settings.redis_url, on_connect=self._load, **resp_options(settings))

    async def execute(
        self, connection: RespPipeline | ClusterPipeline, commands: list[bytes]
    ) -> list[Any]:
        """The replies of ``commands``; loads the scripts again where Redis lost them."""
        try:
            return await connection.execute(commands)
        except RedisReplyError as exc:
            if not any(error.startswith("NOSCRIPT") for error in exc.errors):
                raise
        if isinstance(connection, ClusterPipeline):
            for script in self.SCRIPTS:
                await connection.load_script(script)
        else:
            await connection.execute(self._load)
        return await connection.execute(commands)

    async def close(self) -> None:
        for connection in (*self.reads, self.checkpoints):
            await connection.close()


READ_SHA = sha(READ)
CHECKPOINT_SHA = sha(CHECKPOINT)
MULTI = pack("MULTI")
EXEC = pack("EXEC")


def is_error(reply: Any) -> bool:
    return isinstance(reply, hiredis.ReplyError)
