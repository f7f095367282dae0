"""The HTTP API's state routes, errors, token and health on a real Redis written by the real
Redis sink, served by a real aiohttp server on a free port (pulse/api)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import pytest

from models.outputs import ClosedWindow, Latest
from pulse.local.stack import free_port
from pulse.redis_clients import redis_client
from pulse.settings import Settings
from pulse.sinks._base import FlushBatch
from pulse.sinks.redis import RedisSink
from tables.aggregators import Summary
from tests.helpers.api import serving

S = 1_000_000
T0 = 1_790_000_000 * S


def closed(device: str, metric: str, start_us: int, values: list[float]) -> ClosedWindow:
    state = Summary.initialize(start_us, values[0], None)
    for n, value in enumerate(values[1:], 1):
        Summary.add(state, start_us + n * S, value, None)
    return ClosedWindow(device, metric, "10s", start_us, start_us + 10 * S, state)


def settings_for(redis_url: str, prefix: str, **extra: str) -> Settings:
    return Settings.from_env(
        {
            "PULSE_REDIS_URL": redis_url,
            "PULSE_REDIS_PREFIX": prefix,
            "PULSE_WINDOWS": "10s,1m",
            **extra,
        }
    )


async def write(settings: Settings, batch: FlushBatch) -> None:
    sink = RedisSink(settings.redis_url, settings.redis_prefix, 600)
    await sink.start()
    try:
        await sink.write(batch)
    finally:
        await sink.stop()


async def get(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any]:
    kwargs.setdefault("allow_redirects", False)
    async with session.get(url, **kwargs) as response:
        return response.status, await response.json(content_type=None)


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def test_devices_page_by_page_most_recent_first(redis_url: str, topic_prefix: str) -> None:
    """25 devices seen at distinct times (two share one), read 10 at a time: every device
    exactly once, by last event time then name, both descending; a prefix narrows the list
    to exactly the matching devices; a late, older value does not move a device back."""
    settings = settings_for(redis_url, topic_prefix)
    seen = {f"dev-{n:02d}": T0 + n * S for n in range(24)}
    seen["alt-00"] = T0 + 5 * S  # the same time as dev-05
    latest = [Latest(d, "temperature", t, float(t // S % 100), 7) for d, t in seen.items()]

    async def test() -> None:
        await write(settings, FlushBatch(latest=latest))
        # A zombie's late value of dev-23, older than what Redis holds: no move.
        await write(settings, FlushBatch(latest=[Latest("dev-23", "humidity", T0, 1.0, 3)]))
        expected = sorted(seen, key=lambda d: (seen[d], d), reverse=True)
        async with serving(settings) as (base, session):
            shown: list[str] = []
            cursor = None
            pages = 0
            while True:
                query = "?limit=10" + (f"&cursor={cursor}" if cursor else "")
                status, body = await get(session, f"{base}/api/devices{query}")
                assert status == 200, body
                pages += 1
                shown += [row["device"] for row in body["devices"]]
                for row in body["devices"]:
                    assert row["last_seen"] == seen[row["device"]] / S
                    if row["device"] != "dev-23":
                        value = float(seen[row["device"]] // S % 100)
                        ts = seen[row["device"]] / S
                        assert row["latest"] == {"temperature": {"value": value, "ts": ts}}
                cursor = body["next_cursor"]
                if cursor is None:
                    break
            assert shown == expected
            assert pages == 3
            status, body = await get(session, f"{base}/api/devices?prefix=dev-1&limit=1000")
            assert [row["device"] for row in body["devices"]] == [
                f"dev-{n}" for n in range(19, 9, -1)
            ]
            assert body["next_cursor"] is None

    run(test)


def test_device_top_and_dead_letters(redis_url: str, topic_prefix: str) -> None:
    settings = settings_for(redis_url, topic_prefix)
    windows = [
        closed("dev-a", "temperature", T0, [20.0, 22.0]),
        closed("dev-b", "temperature", T0, [30.0]),
        closed("dev-c", "temperature", T0, [10.0, 11.0, 12.0]),
    ]
    latest = [Latest(w.device, "temperature", T0 + 9 * S, 1.5, 4) for w in windows]

    async def test() -> None:
        await write(settings, FlushBatch(latest=latest, closed=windows))
        raw = redis_client(settings)
        await raw.hset(f"{topic_prefix}:dlq:counts", mapping={"late": 3, "invalid_json": 1})
        await raw.lpush(f"{topic_prefix}:dlq:recent", b'{"reason":"late"}', b"not json")
        await raw.aclose()
        async with serving(settings) as (base, session):
            status, body = await get(session, f"{base}/api/devices/dev-a")
            assert status == 200
            assert body["latest"] == {"temperature": {"value": 1.5, "ts": (T0 + 9 * S) / S}}
            shown = body["closed"]["10s"]["temperature"]
            assert {
                k: shown[k] for k in ("count", "sum", "min", "max", "mean", "start", "end")
            } == {
                "count": 2,
                "sum": 42.0,
                "min": 20.0,
                "max": 22.0,
                "mean": 21.0,
                "start": T0 / S,
                "end": T0 / S + 10,
            }
            assert body["open"] == {} and body["sliding"] == {}
            status, body = await get(session, f"{base}/api/top/10s/temperature?n=2")
            assert (status, body) == (
                200,
                {
                    "window": "10s",
                    "metric": "temperature",
                    "order": "desc",
                    "devices": [
                        {"device": "dev-b", "mean": 30.0},
                        {"device": "dev-a", "mean": 21.0},
                    ],
                },
            )
            status, body = await get(session, f"{base}/api/top/10s/temperature?order=asc")
            assert [row["device"] for row in body["devices"]] == ["dev-c", "dev-a", "dev-b"]
            status, body = await get(session, f"{base}/api/dead-letters")
            assert body == {
                "by_reason": {"invalid_json": 1, "late": 3},
                "recent": [{"unreadable": "not json"}, {"reason": "late"}],
            }
            # The worker's old paths redirect to the new ones.
            async with session.get(f"{base}/state/dev-a", allow_redirects=False) as response:
                assert (response.status, response.headers["Location"]) == (
                    308,
                    "/api/devices/dev-a",
                )
            status, body = await get(session, f"{base}/top/10s/temperature", allow_redirects=True)
            assert status == 200 and len(body["devices"]) == 3

    run(test)


@pytest.mark.parametrize(
    ("path", "status", "parameter"),
    [
        ("/api/devices/dev%20x", 400, "device"),
        ("/api/devices/nobody", 404, "device"),
        ("/api/devices?limit=0", 400, "limit"),
        ("/api/devices?limit=1001", 400, "limit"),
        ("/api/devices?limit=ten", 400, "limit"),
        ("/api/devices?cursor=x:dev-1", 400, "cursor"),
        ("/api/devices?prefix=a%2Fb", 400, "prefix"),
        ("/api/top/5s/temperature", 404, "window"),
        ("/api/top/10s/te%24mp", 400, "metric"),
        ("/api/top/10s/pressure", 404, "metric"),
        ("/api/top/10s/temperature?order=up", 400, "order"),
        ("/api/nothing", 404, None),
    ],
)
def test_errors_are_json_naming_the_parameter(
    redis_url: str, topic_prefix: str, path: str, status: int, parameter: str | None
) -> None:
    settings = settings_for(redis_url, topic_prefix)

    async def test() -> None:
        await write(settings, FlushBatch(closed=[closed("dev-a", "temperature", T0, [1.0])]))
        async with serving(settings) as (base, session):
            got, body = await get(session, base + path)
            assert (got, body["parameter"]) == (status, parameter), body
            assert isinstance(body["error"], str) and body["error"]

    run(test)


def test_redis_away_is_503_and_not_ready_but_live(topic_prefix: str) -> None:
    settings = settings_for(f"redis://127.0.0.1:{free_port()}/0", topic_prefix)

    async def test() -> None:
        async with serving(settings) as (base, session):
            status, body = await get(session, f"{base}/api/devices/dev-a")
            assert status == 503 and body["error"].startswith("Redis is unavailable")
            status, body = await get(session, f"{base}/health/ready")
            assert status == 503
            assert body["ready"] is False and body["reason"] == "Redis is unavailable"
            assert body["dependencies"]["redis"]["state"] == "unavailable"
            status, body = await get(session, f"{base}/health/live")
            assert status == 200 and body["dependencies"]["redis"]["state"] == "unavailable"

    run(test)


def test_the_token_guards_the_api_by_bearer_or_session_cookie(
    redis_url: str, topic_prefix: str
) -> None:
    token = "s3cret-token"
    settings = settings_for(redis_url, topic_prefix, PULSE_API_TOKEN=token)

    async def test() -> None:
        await write(settings, FlushBatch(latest=[Latest("dev-a", "rpm", T0, 7.0, 1)]))
        async with serving(settings) as (base, session):
            url = f"{base}/api/devices/dev-a"
            status, body = await get(session, url)
            assert (status, body["parameter"]) == (401, None)
            status, _ = await get(session, url, headers={"Authorization": "Bearer wrong"})
            assert status == 401
            status, body = await get(session, url, headers={"Authorization": f"Bearer {token}"})
            assert status == 200 and body["latest"]["rpm"]["value"] == 7.0
            for path in ("/health/live", "/health/ready", "/metrics", "/api/openapi.json"):
                async with session.get(base + path) as response:
                    assert response.status == 200, path
            async with session.post(f"{base}/api/session", json={"token": "nope"}) as response:
                assert response.status == 401
            async with session.post(f"{base}/api/session", json={"token": token}) as response:
                assert response.status == 204
                cookie = response.headers["Set-Cookie"]
                assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
                assert token not in cookie
            status, body = await get(session, url)  # the cookie now
            assert status == 200 and body["device"] == "dev-a"
            async with session.delete(f"{base}/api/session") as response:
                assert response.status == 204
            status, _ = await get(session, url)
            assert status == 401

    run(test)
