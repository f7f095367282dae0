"""Reading the live state back (pulse/live_state.py, behind ``pulse state`` and the HTTP API)
from what the Redis sink wrote on a real Redis: the contract's fields, never the versions
that the sink keeps in the same hashes (a window's ``v``, a device's ``{metric}:v``)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from models.outputs import ClosedWindow, Latest, OpenView
from pulse.cli import main
from pulse.live_state import KnownMetrics, device_state, top_devices
from pulse.redis_clients import redis_client
from pulse.settings import Settings
from pulse.sinks._base import FlushBatch
from pulse.sinks.redis import RedisSink
from tables.aggregators import Summary

S = 1_000_000
T0 = 1_700_000_000 * S


def summary(start_us: int, values: list[float]) -> list[Any]:
    state = Summary.initialize(start_us, values[0], None)
    for n, value in enumerate(values[1:], 1):
        Summary.add(state, start_us + n * S, value, None)
    return state


def batch() -> FlushBatch:
    """A device with two metrics: latest values, an open and a closed 10s window of one, a
    sliding window, and the closed window's top key."""
    closed_state = summary(T0, [20.0, 22.0])
    open_state = summary(T0 + 10 * S, [23.5])
    sliding_state = summary(T0 + 5 * S, [22.0, 23.5])
    return FlushBatch(
        latest=[
            Latest("dev-1", "temperature", T0 + 10 * S, 23.5, 41),
            Latest("dev-1", "humidity", T0 + 2_500_000, 40.25, 41),
        ],
        closed=[
            ClosedWindow(
                "dev-1",
                "temperature",
                "10s",
                T0,
                T0 + 10 * S,
                closed_state,
                Summary.text(closed_state),
            )
        ],
        open_views=[
            OpenView(
                "dev-1",
                "temperature",
                "10s",
                T0 + 10 * S,
                T0 + 20 * S,
                open_state,
                Summary.text(open_state),
            )
        ],
        sliding=[
            OpenView("dev-1", "temperature", "sliding:20s", T0 - 10 * S, T0 + 10 * S, sliding_state)
        ],
    )


def window(count: int, total: float, low: float, high: float, first: float, last: float) -> dict:
    """The numbers ``pulse state`` shows of a window (percentiles left out here)."""
    return {
        "count": count,
        "sum": total,
        "min": low,
        "max": high,
        "mean": total / count,
        "first": first,
        "last": last,
    }


def test_readers_show_the_contract_fields_without_versions(
    redis_url: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        "PULSE_REDIS_URL": redis_url,
        "PULSE_REDIS_PREFIX": topic_prefix,
        "PULSE_WINDOWS": "10s,sliding:20s",
    }
    settings = Settings.from_env(env)
    sink = RedisSink(redis_url, topic_prefix, 600)

    async def write_then_read() -> tuple[dict[str, Any], list[tuple[str, float]] | None]:
        await sink.start()
        try:
            await sink.write(batch())
        finally:
            await sink.stop()
        client = redis_client(settings)
        try:
            state = await device_state(client, settings, "dev-1")
            top = await top_devices(client, settings, "10s", "temperature")
            return state, top
        finally:
            await client.aclose()

    state, top = asyncio.run(write_then_read())
    # The hashes do hold the versions, next to the fields readers show.
    raw = redis.Redis.from_url(redis_url)
    device_key = f"{topic_prefix}:device:dev-1"
    assert raw.hget(device_key, "temperature:v") == b"1700000010000000:41"
    assert raw.hget(device_key, "humidity:v") == b"1700000002500000:41"
    assert raw.hget(f"{topic_prefix}:open:10s:dev-1:temperature", "v") == b"1700000010000000:1"
    assert raw.hget(f"{topic_prefix}:closed:10s:dev-1:temperature", "v") == b"1700000000000000:2"

    closed_shown = state["closed"]["10s"]["temperature"]
    open_shown = state["open"]["10s"]["temperature"]
    percentiles = {"p50", "p95", "p99"}
    fields = {*window(1, 1, 1, 1, 1, 1), *percentiles, "start", "end"}  # no v
    assert set(closed_shown) == set(open_shown) == fields
    assert {k: v for k, v in closed_shown.items() if k not in percentiles} == {
        **window(2, 42.0, 20.0, 22.0, 20.0, 22.0),
        "start": 1_700_000_000,
        "end": 1_700_000_010,
    }
    assert {k: v for k, v in open_shown.items() if k not in percentiles} == {
        **window(1, 23.5, 23.5, 23.5, 23.5, 23.5),
        "start": 1_700_000_010,
        "end": 1_700_000_020,
    }
    sliding_shown = state["sliding"]["20s"]["temperature"]
    assert {k: v for k, v in sliding_shown.items() if k not in percentiles} == {
        **window(2, 45.5, 22.0, 23.5, 22.0, 23.5),
        "start": 1_699_999_990,
        "end": 1_700_000_010,
    }
    assert {k: v for k, v in state.items() if k not in ("open", "closed", "sliding")} == {
        "device": "dev-1",
        "latest": {
            "humidity": {"value": 40.25, "ts": 1_700_000_002.5},
            "temperature": {"value": 23.5, "ts": 1_700_000_010},
        },
    }
    assert top == [("dev-1", 21.0)]

    # `pulse state` shows the same, versions left out.
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    shown = CliRunner().invoke(main, ["state", "dev-1", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output) == state
    table = CliRunner().invoke(main, ["state", "dev-1"])
    assert table.exit_code == 0, table.output
    assert table.output.splitlines()[:3] == [
        "device dev-1",
        "  humidity         latest 40.25 at ts 1700000002.5",
        "  temperature      latest 23.5 at ts 1700000010",
    ]
    assert ":v" not in table.output and " v=" not in table.output


def test_a_device_read_with_known_metrics_answers_what_its_hash_holds_now(
    redis_url: str, topic_prefix: str
) -> None:
    # KnownMetrics is a guess of a device's metrics, so that its windows are read in the same
    # round trip as its hash: a metric added since is still answered (in a second round trip),
    # one gone is left out, as they are without the guess.
    settings = Settings.from_env(
        {"PULSE_REDIS_URL": redis_url, "PULSE_REDIS_PREFIX": topic_prefix, "PULSE_WINDOWS": "10s"}
    )
    p, raw = topic_prefix, redis.Redis.from_url(redis_url)

    def write(metric: str, value: int) -> None:
        raw.hset(
            f"{p}:device:dev-9",
            mapping={metric: value, f"{metric}:ts": 1_700_000_005, f"{metric}:v": "1:1"},
        )
        text = f"1 {value} {value} {value} {value} {value} {value} {value} {value} {value}"
        raw.hset(
            f"{p}:closed:10s:dev-9:{metric}",
            mapping={"window": f"{text} 1700000000 1700000010", "v": "1:1"},
        )

    def shown(state: dict[str, Any]) -> dict[str, Any]:
        return {
            "latest": {m: v["value"] for m, v in state["latest"].items()},
            "closed": {m: w["sum"] for m, w in state["closed"].get("10s", {}).items()},
        }

    async def reads() -> list[tuple[dict[str, Any], int]]:
        client = redis_client(settings)
        known = KnownMetrics(size=2)
        trips = 0
        pipeline = client.pipeline

        def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal trips
            trips += 1
            return pipeline(*args, **kwargs)

        client.pipeline = counted  # type: ignore[method-assign]
        out = []
        try:
            for step in ("first", "again", "added", "removed", "alone"):
                if step == "added":
                    write("humidity", 40)
                if step == "removed":
                    raw.hdel(f"{p}:device:dev-9", "temperature", "temperature:ts", "temperature:v")
                trips = 0
                if step == "alone":  # no guess: the other reader's way
                    state = await device_state(client, settings, "dev-9")
                else:
                    state = await device_state(client, settings, "dev-9", known)
                out.append((shown(state), trips))
        finally:
            await client.aclose()
        return out

    write("temperature", 21)
    first, again, added, removed, alone = asyncio.run(reads())
    assert first == ({"latest": {"temperature": 21}, "closed": {"temperature": 21}}, 2)
    assert again == (first[0], 1)  # known: hash and windows in one round trip
    assert added == (
        {
            "latest": {"humidity": 40, "temperature": 21},
            "closed": {"humidity": 40, "temperature": 21},
        },
        2,
    )
    # The temperature's window is still in Redis, but the device no longer has the metric.
    assert removed == ({"latest": {"humidity": 40}, "closed": {"humidity": 40}}, 1)
    assert alone == (removed[0], 2)


def test_known_metrics_forget_the_least_recently_read_devices() -> None:
    known = KnownMetrics(size=2)
    known.put("a", ("t",))
    known.put("b", ("h",))
    assert known.get("a") == ("t",)  # a read: b is now the least recent
    known.put("c", ("t", "h"))
    assert (known.get("a"), known.get("b"), known.get("c")) == (("t",), (), ("t", "h"))
