"""``GET /api/live``: Server-Sent Events of closed windows from ``P:events``, on real Redis.

The API runs on a free port (pulse.api's application, served as ``pulse api`` serves it);
the history sink writes closed windows as the history writer does; an SSE client over a real
connection must receive exactly the next closed windows (id = the stream entry's id, data =
the window's record), resume after its ``Last-Event-ID`` without a gap or a repeat, see only
its device with ``?device=``, get a keep-alive comment when nothing happens, and leave no
blocked reader in Redis once it goes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from pulse.api import _live
from pulse.local.stack import start_redis
from pulse.settings import Settings
from pulse.sinks.history import HistorySink
from tests.helpers.api import serving
from tests.helpers.history import closed_window, records


class SseClient:
    """Reads one event stream: each event's fields, and comments (``:`` lines)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []

    async def next_event(self, timeout: float = 10.0) -> dict[str, str]:
        event: dict[str, str] = {}
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.response.content.readline()).decode()
                assert line, "the stream ended"
                line = line.rstrip("\n")
                if not line:
                    if event:
                        return event
                    continue
                if line.startswith(":"):
                    self.comments.append(line)
                    continue
                name, _, value = line.partition(": ")
                event[name] = value

    async def events(self, count: int) -> list[dict[str, str]]:
        return [await self.next_event() for _ in range(count)]


async def write(sink: HistorySink, values: list[bytes]) -> None:
    await sink.write_records([sink.read_record(v) for v in values], [None] * len(values))


async def stream_ids(client: aioredis.Redis, prefix: str) -> list[tuple[str, bytes]]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await client.xrange(f"{prefix}:events")  # type: ignore[assignment]
    return [(i.decode(), f[b"window"]) for i, f in entries]


async def blocked_readers(client: aioredis.Redis) -> int:
    """Connections blocked in XREAD now (flag ``b``; ``cmd`` alone names a connection's last
    command, which an idle pooled connection keeps after its XREAD returned)."""
    return sum(
        1
        for c in await client.client_list()
        if "b" in c.get("flags", "") and c.get("cmd") == "xread"
    )


@pytest.fixture
def own_redis_url(tmp_path: Path) -> Iterator[str]:
    """A Redis server of this test alone: it counts the blocked readers, which another
    test's leftover client on the session server would add to."""
    server = start_redis(tmp_path, stop_with_parent=True)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def quick_keep_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    """A keep-alive every half second instead of 15, so the test sees one and a client that
    went is noticed at the next one."""
    monkeypatch.setattr(_live, "KEEP_ALIVE", 0.5)


@pytest.mark.usefixtures("quick_keep_alive")
def test_a_client_gets_the_next_windows_and_resumes_after_its_last_event_id(
    own_redis_url: str, topic_prefix: str
) -> None:
    redis_url, p = own_redis_url, topic_prefix
    a = [closed_window(f"{p}-a", "m", "10s", 10, k, [float(k), 2.5]) for k in range(6)]
    b = [closed_window(f"{p}-b", "m", "10s", 10, k, [-float(k)]) for k in range(3)]
    settings = Settings.from_env({"PULSE_REDIS_URL": redis_url, "PULSE_REDIS_PREFIX": p})

    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url)
        sink = HistorySink(redis_url, p, 360, 3600)
        before = await blocked_readers(client)
        await write(sink, records(a[:1]))  # before the client: not sent to it
        async with serving(settings) as (url, http):
            async with http.get(f"{url}/api/live") as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == "text/event-stream"
                sse = SseClient(response)
                await asyncio.sleep(0.2)  # connected and reading
                await write(sink, records([a[1], b[0], a[2]]))
                got = await sse.events(3)
                stored = await stream_ids(client, p)
                assert got == [
                    {"id": i, "event": "window", "data": v.decode()} for i, v in stored[1:4]
                ]
                last = got[-1]["id"]
                # Idle: a keep-alive comment within the (test's) keep-alive time.
                deadline = time.monotonic() + 20  # a loaded machine runs the handler late
                while not sse.comments and time.monotonic() < deadline:
                    with pytest.raises(TimeoutError):
                        await sse.next_event(timeout=0.7)
                assert sse.comments and set(sse.comments) == {": keep-alive"}

            # Gone: what happens meanwhile is waiting in the stream.
            await write(sink, records([a[3], b[1], b[2], a[4]]))
            async with http.get(f"{url}/api/live", headers={"Last-Event-ID": last}) as response:
                sse = SseClient(response)
                got = await sse.events(4)
                stored = await stream_ids(client, p)
                assert got == [
                    {"id": i, "event": "window", "data": v.decode()} for i, v in stored[4:8]
                ]
                await write(sink, records([a[5]]))
                assert await sse.next_event() == {
                    "id": (await stream_ids(client, p))[8][0],
                    "event": "window",
                    "data": records([a[5]])[0].decode(),
                }

            # Only device a, from the beginning of the stream.
            async with http.get(
                f"{url}/api/live", params={"device": f"{p}-a"}, headers={"Last-Event-ID": "0-0"}
            ) as response:
                got = await SseClient(response).events(6)
                assert [orjson.loads(e["data"]) for e in got] == [
                    orjson.loads(v) for v in records(a)
                ]

            # Every client went: no reader left blocked in Redis (within a keep-alive).
            deadline = time.monotonic() + 20  # a loaded machine runs the handler late
            while await blocked_readers(client) > before and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert await blocked_readers(client) == before

            # The stream trimmed past a client's last event: it is told to reload first.
            stored = await stream_ids(client, p)
            await client.xtrim(f"{p}:events", minid=stored[3][0], approximate=False)  # 0-2 gone
            async with http.get(
                f"{url}/api/live", headers={"Last-Event-ID": stored[0][0]}
            ) as response:
                sse = SseClient(response)
                assert await sse.next_event() == {
                    "event": "reset",
                    "data": f'{{"after": "{stored[0][0]}"}}',
                }
                assert (await sse.next_event())["id"] == stored[3][0]
            async with http.get(
                f"{url}/api/live", headers={"Last-Event-ID": stored[3][0]}
            ) as response:  # the oldest held: nothing after it was trimmed, no reset
                assert (await SseClient(response).next_event())["id"] == stored[4][0]

            async with http.get(f"{url}/api/live", headers={"Last-Event-ID": "yesterday"}) as bad:
                assert bad.status == 400
                assert await bad.json() == {
                    "error": "Last-Event-ID must be an event id (as 1700000000000-0)",
                    "parameter": "Last-Event-ID",
                }
            async with http.get(f"{url}/api/live", params={"metric": "no:metric"}) as bad:
                assert bad.status == 400
                assert (await bad.json())["parameter"] == "metric"
        await sink.stop()
        await client.aclose()

    asyncio.run(run())
