"""``GET /api/live``: closed windows and alert transitions as Server-Sent Events, from the
Redis stream ``P:events``.

Each event is one entry of the stream: a closed window that entered its series' history
(pulse/sinks/history.py) is ``event: window`` with ``data:`` the window's ``aggregates``
record; an alert transition (pulse/sinks/alerts.py: an alert starting to fire or resolving)
is ``event: alert`` with ``data:`` the transition's ``alerts`` record; ``id:`` is the
entry's id. A client that reconnects sends the last id it got as ``Last-Event-ID`` and gets
every entry after it that the stream still holds (it keeps about 10,000), with no repeat;
when entries after that id may have been trimmed meanwhile, ``event: reset`` comes first, so
the client reloads what it shows rather than miss events silently. Without it, the events
from now on. ``?device=`` and ``?metric=`` keep only that device's or metric's events;
``?events=window`` or ``?events=alert`` only that kind (default both: ``window,alert``). A
comment line goes out when nothing was sent for :data:`KEEP_ALIVE` seconds (proxies close
idle connections), and the handler ends when the client goes (the next write fails) or the
server stops (its streams are cancelled on shutdown).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import orjson
from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pulse.api import _params
from pulse.api._context import CONTEXT
from pulse.api._errors import ApiError
from pulse.sinks.redis import RedisKeys

KEEP_ALIVE = 15.0
"""Seconds without an event after which a comment keeps the connection alive."""
ENTRIES_PER_READ = 500
"""Stream entries read at a time."""
Entry = tuple[bytes, dict[bytes, bytes]]
"""A stream entry as redis-py returns it (bytes replies): its id and its fields."""
STREAM_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
EVENT_KINDS = {b"window": b"window", b"alert": b"alert"}
"""The stream entries' fields that are events, and each one's SSE event type."""

STREAMS = web.AppKey("pulse_live_streams", set[asyncio.Task[Any]])
"""The handlers streaming now, cancelled when the application shuts down
(:func:`close_streams`): each waits in Redis for up to KEEP_ALIVE seconds, which would hold
up a server that stops."""

routes = web.RouteTableDef()


async def close_streams(app: web.Application) -> None:
    """End every stream (``on_shutdown``): the server stops without waiting for them."""
    streams = app[STREAMS]
    for task in [*streams]:
        task.cancel()


@routes.get("/api/live")
async def live(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    query = request.query
    device = _params.device_name(query["device"], "device") if query.get("device") else None
    metric = _params.metric_name(query["metric"], "metric") if query.get("metric") else None
    known = tuple(kind.decode() for kind in EVENT_KINDS)
    kinds = [k.encode() for k in _params.event_kinds(query.get("events"), "events", known)]
    stream = RedisKeys(context.settings.redis_prefix).events
    client = context.redis
    last_id = request.headers.get("Last-Event-ID", "").strip()
    reset = b""
    if last_id:
        if STREAM_ID.match(last_id) is None:
            raise ApiError(
                400, "Last-Event-ID must be an event id (as 1700000000000-0)", "Last-Event-ID"
            )
        if await _trimmed_after(client, stream, last_id):
            # Entries after last_id may be trimmed away: say so rather than skip them silently.
            reset = b'event: reset\ndata: {"after": "%s"}\n\n' % last_id.encode()
    else:  # from now on: after the newest entry (a Redis error here is a 503, not a stream)
        newest: list[Entry] = await client.xrevrange(stream, count=1)  # type: ignore[assignment]
        last_id = newest[0][0].decode() if newest else "0-0"
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx: pass each event on at once
        }
    )
    await response.prepare(request)
    if reset:
        await response.write(reset)
    sent_at = time.monotonic()
    streams, task = request.app.get(STREAMS), asyncio.current_task()
    if streams is not None and task is not None:
        streams.add(task)
    try:
        while True:
            wait = max(KEEP_ALIVE - (time.monotonic() - sent_at), 0.001)
            found: list[tuple[bytes, list[Entry]]] = await client.xread(  # type: ignore[assignment]
                {stream: last_id}, count=ENTRIES_PER_READ, block=max(int(wait * 1000), 1)
            )
            parts: list[bytes] = []
            for _, entries in found:
                for entry_id, fields in entries:
                    last_id = entry_id.decode()
                    for kind in kinds:
                        value = fields.get(kind)
                        if value is not None and _wanted(value, device, metric):
                            event = (entry_id, EVENT_KINDS[kind], value)
                            parts.append(b"id: %s\nevent: %s\ndata: %s\n\n" % event)
                            break
            if not parts and time.monotonic() - sent_at >= KEEP_ALIVE:
                parts.append(b": keep-alive\n\n")
            if parts:
                await response.write(b"".join(parts))
                sent_at = time.monotonic()
    except (ConnectionError, OSError, RedisConnectionError, RedisTimeoutError):
        # The client went (or Redis did: the client reconnects with its Last-Event-ID).
        pass
    finally:
        if streams is not None and task is not None:
            streams.discard(task)
    return response


async def _trimmed_after(client: Any, stream: str, last_id: str) -> bool:
    """Whether entries after ``last_id`` may have been trimmed from ``stream``: some were
    trimmed (XINFO STREAM: more entries added than held) and the oldest held is newer than
    ``last_id``. The stream does not keep which ids it trimmed, so the entry just after
    ``last_id`` being the oldest held also counts: a reload too many, never a gap unsaid."""
    try:
        info = await client.xinfo_stream(stream)
    except ResponseError:  # no such key
        return False
    if int(info.get("entries-added", 0)) <= int(info.get("length", 0)):
        return False
    first = info.get("recorded-first-entry-id", b"0-0")
    first_id = first.decode() if isinstance(first, bytes) else str(first)
    return _order(first_id) > _order(last_id)


def _order(entry_id: str) -> tuple[int, int]:
    """A stream id's order: ``1700000000000-5`` -> (1700000000000, 5)."""
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence)


def _wanted(value: bytes, device: str | None, metric: str | None) -> bool:
    if device is None and metric is None:
        return True
    try:
        doc: Any = orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and (
        (device is None or doc.get("device") == device)
        and (metric is None or doc.get("metric") == metric)
    )


ROUTES = list(routes)

PATHS: dict[str, Any] = {
    "/api/live": {
        "get": {
            "summary": "Closed windows (event: window) and alert transitions (event: alert) "
            "as Server-Sent Events, from now on or after Last-Event-ID",
            "parameters": [
                {"name": "device", "in": "query", "schema": {"type": "string"}},
                {"name": "metric", "in": "query", "schema": {"type": "string"}},
                {
                    "name": "events",
                    "in": "query",
                    "schema": {"type": "string", "pattern": "^(window|alert)(,(window|alert))*$"},
                    "description": "The kinds of events wanted, comma-separated (default: "
                    "window,alert).",
                },
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "schema": {"type": "string", "pattern": STREAM_ID.pattern},
                    "description": "Resume after this event id.",
                },
            ],
            "responses": {
                "200": {
                    "description": "An event stream: id, event: window and data: the closed "
                    "window's aggregates record, or event: alert and data: the transition's "
                    "alerts record",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                **{
                    code: {"$ref": "#/components/responses/Error"} for code in ("400", "401", "503")
                },
            },
        }
    }
}
