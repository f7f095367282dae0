"""What the Redis sinks that add events to ``P:events`` share (HistorySink, AlertsSink): one
connection of their own with their Lua script loaded, and the writing of packed script calls
that reply with the events to add."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Any, Generic

from pulse.settings import redis_is_cluster
from pulse.sinks._base import Item, RecordSink
from pulse.sinks._cluster import ClusterPipeline
from pulse.sinks._resp import RespPipeline, pack
from pulse.sinks._retry import retry_forever
from pulse.sinks.dead_letters import OutputDeadLetters
from pulse.sinks.redis import MAX_RETRY_DELAY, RedisKeys, execute_scripted

EVENTS_MAXLEN = 10_000
"""About how many entries ``P:events`` keeps (MAXLEN ~: Redis trims whole nodes, so a few
more): a client that reconnects with ``Last-Event-ID`` gets what it missed while the stream
still holds it."""
CALLS_PER_ROUND_TRIP = 400
"""Script calls pipelined in one round trip."""
RETRIED = (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError)


class EventStreamSink(RecordSink[Item], Generic[Item]):
    """A sink whose script (``script``) writes its keys and, on one server, appends to
    ``P:events`` the events of what it changed, replying with their count; on a Redis
    Cluster (the stream in another slot) it replies with the events' JSON, appended after the
    writes that decide them: a crash between the two loses those events (the replay finds
    its writes held), so at most once there, exactly once on one server. Redis away,
    refusing or busy is waited out (retry_forever, state in :attr:`health`)."""

    script: str
    event_kind: str
    """The field of each event in ``P:events`` (``window``, ``alert``)."""

    def __init__(
        self,
        url: str,
        prefix: str,
        ttl_seconds: int,
        *,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        dead_letters: OutputDeadLetters | None = None,
        events_maxlen: int = EVENTS_MAXLEN,
    ) -> None:
        self.keys = RedisKeys(prefix)
        self.ttl = ttl_seconds
        self.events_maxlen = events_maxlen
        self.dead_letters = dead_letters
        self._load_script = pack("SCRIPT", "LOAD", self.script)
        self.cluster = redis_is_cluster(url)
        self.connection: RespPipeline | ClusterPipeline = (
            ClusterPipeline(url, password=password, tls=tls)
            if self.cluster
            else RespPipeline(url, on_connect=[self._load_script], password=password, tls=tls)
        )
        self.events_added = 0
        """Events added to the stream so far."""

    @property
    def connections(self) -> int:
        return self.connection.connections

    async def stop(self) -> None:
        await self.connection.close()

    async def _run(self, what: str, commands: list[bytes]) -> Any:
        return await retry_forever(
            what,
            lambda: execute_scripted(self.connection, commands, self._load_script, self.script),
            RETRIED,
            self.health,
            max_delay=MAX_RETRY_DELAY,
        )

    async def write_calls(self, calls: Sequence[bytes]) -> None:
        """Send the packed script calls, :data:`CALLS_PER_ROUND_TRIP` at a time, then (on a
        cluster) append the events they replied with."""
        for begin in range(0, len(calls), CALLS_PER_ROUND_TRIP):
            replies = await self._run(
                f"{self.name} write", list(calls[begin : begin + CALLS_PER_ROUND_TRIP])
            )
            if not self.cluster:
                self.events_added += sum(replies)
                continue
            events = [json for reply in replies for json in reply]
            if events:
                stream = self.keys.events
                appends = [
                    pack("XADD", stream, "MAXLEN", "~", self.events_maxlen, "*",
                         self.event_kind, json)
                    for json in events
                ]  # fmt: skip
                appends.append(pack("EXPIRE", stream, self.ttl))
                await self._run(f"{self.name} events", appends)
                self.events_added += len(events)
