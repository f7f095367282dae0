"""HistoryReader: Redis first, the store behind it, cache-aside; on real Redis and
VictoriaMetrics.

A series of 12 windows is in the store (written as the InfluxDB writer writes them); the
history sink holds its newest 5 in Redis. A range inside what Redis holds is answered from
Redis alone; one that reaches further back gets the older windows from the store, then,
for PULSE_HISTORY_CACHE_TTL seconds, from the cache; a store that is away leaves the Redis
part with the reason. Each window is compared with the record it was written from.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from pulse.history import History, HistoryReader, VictoriaStore, cache_key
from pulse.local.stack import free_port
from pulse.sinks.history import HistorySink
from tests.helpers.history import START, closed_window, document, records, write_to_influx

S = START // 1_000_000
LENGTH = 5
CACHE_TTL = 300


def plain(found: History) -> list[dict[str, Any]]:
    """The windows as orjson writes them (those from Redis are the JSON it holds), read back."""
    return list(orjson.loads(orjson.dumps(found.windows)))


def assert_answer(found: History, want: list[tuple[dict[str, Any], str]]) -> None:
    """The windows, in order (as orjson writes them: those from Redis are the JSON it holds),
    each equal to its document (12 significant digits for one from the store: VictoriaMetrics
    keeps those) and from the named source."""
    windows = plain(found)
    assert [(w["start"], w["source"]) for w in windows] == [
        (doc["start"], source) for doc, source in want
    ]
    for got, (doc, source) in zip(windows, want, strict=True):
        assert set(got) == {*doc, "source"}
        for name, value in doc.items():
            if source == "redis":
                assert got[name] == value, name
            else:
                assert got[name] == pytest.approx(value, rel=1e-11, abs=1e-9), name
    counts = {"redis": 0, "store": 0, "cache": 0}
    for _, source in want:
        counts[source] += 1
    assert found.sources == counts


def test_recent_windows_come_from_redis_older_ones_from_the_store_then_the_cache(
    redis_url: str, influx_url: str, topic_prefix: str
) -> None:
    p = topic_prefix
    device, metric = f"{p}-d", "rt"
    series = [
        closed_window(device, metric, "10s", 10, k, [float(k), k * 1.5 + 0.1]) for k in range(12)
    ]
    docs = [document(w) for w in series]

    async def run() -> None:
        await write_to_influx(influx_url, series)
        sink = HistorySink(redis_url, p, LENGTH, 3600)
        await sink.write_records(
            [sink.read_record(v) for v in records(series)], [None] * len(series)
        )
        await sink.stop()
        client = aioredis.Redis.from_url(redis_url)
        store = VictoriaStore(influx_url)
        reader = HistoryReader(client, p, store, CACHE_TTL)
        try:
            # Inside what Redis holds (windows 7-11): Redis alone, no store needed.
            inside = await HistoryReader(client, p, None, CACHE_TTL).read(
                device, metric, "10s", S + 80, S + 120
            )
            assert_answer(inside, [(d, "redis") for d in docs[8:12]])
            assert inside.store_error is None

            # From window 2: windows 2-6 from the store (polled: VictoriaMetrics shows a new
            # series about a second after write_to_influx; an empty answer is cached too, so
            # clear it), 7-10
            # from Redis (until excludes window 11's start).
            since, until = S + 20, S + 110
            key = cache_key(p, device, metric, "10s", since, S + 70)
            deadline = time.monotonic() + 30
            while True:
                found = await reader.read(device, metric, "10s", since, until)
                if found.sources["store"] == 5 or time.monotonic() > deadline:
                    break
                await client.delete(key)
                await asyncio.sleep(0.5)
            assert_answer(
                found, [(d, "store") for d in docs[2:7]] + [(d, "redis") for d in docs[7:11]]
            )
            assert found.store_error is None
            assert 0 < await client.ttl(key) <= CACHE_TTL

            # Again: the older part from the cache, the same windows.
            again = await reader.read(device, metric, "10s", since, until)
            assert_answer(
                again, [(d, "cache") for d in docs[2:7]] + [(d, "redis") for d in docs[7:11]]
            )
            assert [dict(w, source=None) for w in plain(again)] == [
                dict(w, source=None) for w in plain(found)
            ]

            # The store away (and nothing cached for this range): the Redis part, and why.
            away = f"http://127.0.0.1:{free_port()}"
            offline = HistoryReader(client, p, VictoriaStore(away), CACHE_TTL)
            partial = await offline.read(device, metric, "10s", S, until)
            assert_answer(partial, [(d, "redis") for d in docs[7:11]])
            assert partial.store_error is not None
            assert partial.store_error.startswith(f"VictoriaMetrics {away}: ClientConnectorError")
            await offline.store.close()  # type: ignore[union-attr]

            # A series Redis holds nothing of: all from the store.
            other = closed_window(f"{p}-e", metric, "10s", 10, 3, [4.0])
            await write_to_influx(influx_url, [other])
            deadline = time.monotonic() + 30
            other_key = cache_key(p, other.device, metric, "10s", S, S + 100)
            while True:
                only = await reader.read(other.device, metric, "10s", S, S + 100)
                if only.windows or time.monotonic() > deadline:
                    break
                await client.delete(other_key)
                await asyncio.sleep(0.5)
            assert_answer(only, [(document(other), "store")])

            # An empty range answers nothing and reads nothing.
            assert await reader.read(device, metric, "10s", S + 50, S + 50) == History()
        finally:
            await store.close()
            await client.aclose()

    asyncio.run(run())
