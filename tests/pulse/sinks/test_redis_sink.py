"""The Redis sink's connection: pipelined writes, errors, auth, and waiting out an outage."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import hiredis
import pytest
import redis

from models.outputs import ClosedWindow, Latest, OpenView
from pulse.local.stack import start_redis
from pulse.sinks import redis as redis_sink
from pulse.sinks._base import FlushBatch
from pulse.sinks._resp import RedisReplyError, RespPipeline, pack
from pulse.sinks._text import seconds_text
from pulse.sinks.redis import WINDOW_FIELDS, RedisSink, window_hset
from tables import _native
from tables.aggregators import Summary

Closed = ClosedWindow

S = 1_000_000


def test_pipeline_writes_every_command_and_values_round_trip(
    redis_url: str, topic_prefix: str
) -> None:
    values = [0.1, 1e-300, 21.123456789012345, -0.0, 3]
    commands = [pack("HSET", f"{topic_prefix}:h", f"f{i}", v) for i, v in enumerate(values)]
    commands.append(pack("EXPIRE", f"{topic_prefix}:h", 100))

    async def run() -> tuple[list[object], list[object]]:
        pipeline = RespPipeline(redis_url)
        try:
            written = await pipeline.execute(commands)
            read = await pipeline.execute(
                [pack("HGET", f"{topic_prefix}:h", "f2"), pack("HGET", f"{topic_prefix}:h", "no")]
            )
            return written, read
        finally:
            await pipeline.close()

    written, read = asyncio.run(run())
    stored = redis.Redis.from_url(redis_url).hgetall(f"{topic_prefix}:h")
    assert stored == {f"f{i}".encode(): repr(v).encode() for i, v in enumerate(values)}
    # Every reply, in order: HSET counts the new fields, EXPIRE answers 1, a missing field nil.
    assert written == [1, 1, 1, 1, 1, 1]
    assert read == [repr(values[2]).encode(), None]


def test_window_hset_packs_like_hiredis() -> None:
    text = ("3", "7.5", "1.0", "4.5", "2.5", "1.0", "4.5", "2.0", "4.49", "-0.0")
    for key in ("p:closed:10s:dev-1:temperature", "pülse:open:1m:dev-1:t"):
        fields = [
            item
            for pair in zip(WINDOW_FIELDS, (*text, "0.001", "10"), strict=True)
            for item in pair
        ]
        assert window_hset(key, text, 1_000, 10_000_000) == hiredis.pack_command(
            ("HSET", key, *fields)  # type: ignore[arg-type]  # hiredis' stub: a 1-tuple
        )


def hset_of(key: str, text: tuple[str, ...], start_us: int, end_us: int) -> bytes:
    """A window's HSET as hiredis packs it."""
    values = (*text, seconds_text(start_us), seconds_text(end_us))
    fields = zip(WINDOW_FIELDS, values, strict=True)
    return pack("HSET", key, *(item for pair in fields for item in pair))


def test_open_view_commands() -> None:
    state = Summary.initialize(1_000_000, 21.5, None)
    Summary.add(state, 2_500_000, -3.25, {"room": "a b"})
    single = Summary.initialize(4_000_000, 7.0, None)

    def view(device: str, start: int, state: list | None, drained: bool = True) -> OpenView:
        if state is None:
            return OpenView(device, "temperature", "10s", 0, 0, None)
        text = Summary.text(state) if drained else None
        return OpenView(device, "temperature", "10s", start, start + 10_000_000, state, text)

    one, two = "pülse:open:10s:dev-1:temperature", "pülse:open:10s:dév-2:temperature"
    text, single_text = Summary.text(state), Summary.text(single)
    expire_one, expire_two = pack("EXPIRE", one, 60), pack("EXPIRE", two, 60)
    rounds = [
        # first writes: every key gets its TTL; a view not drained is formatted on the spot
        (
            100.0,
            [view("dev-1", 0, state), view("dév-2", 1_500_000, single, drained=False)],
            [hset_of(one, text, 0, 10 * S), expire_one],
            [hset_of(two, single_text, 1_500_000, 11_500_000), expire_two],
        ),
        # same windows soon after: no EXPIRE; a series without open window: DEL
        (
            101.0,
            [view("dev-1", 0, single), view("dév-2", 0, None)],
            [hset_of(one, single_text, 0, 10 * S)],
            [pack("DEL", two)],
        ),
        # a new window at dev-1, and dév-2 again (its TTL was forgotten with the DEL)
        (
            102.0,
            [view("dev-1", 10_000_000, state), view("dév-2", 1_500_000, single)],
            [hset_of(one, text, 10 * S, 20 * S), expire_one],
            [hset_of(two, single_text, 1_500_000, 11_500_000), expire_two],
        ),
        # more than half a TTL (60 s) later: EXPIRE again for the same window
        (
            132.5,
            [view("dev-1", 10_000_000, state), view("dév-2", 1_500_000, single)],
            [hset_of(one, text, 10 * S, 20 * S), expire_one],
            [hset_of(two, single_text, 1_500_000, 11_500_000), expire_two],
        ),
    ]
    sink = RedisSink("redis://127.0.0.1:1", "pülse", ttl_seconds=60)
    for now, views, *expected in rounds:
        made = _native.open_view_commands(
            views, sink.keys.open_prefix, sink._open_ttl_set, now, 60, WINDOW_FIELDS
        )
        assert made == [command for commands in expected for command in commands]
    assert sink._open_ttl_set == {one: (10_000_000, 132.5), two: (1_500_000, 132.5)}


def test_latest_commands() -> None:
    def hset(device: str, *fields: object) -> bytes:
        return pack("HSET", f"pülse:device:{device}", *fields)

    def expire(device: str) -> bytes:
        return pack("EXPIRE", f"pülse:device:{device}", 60)

    rounds = [
        # first writes: one HSET per device with each metric's newest value, and its TTL; a
        # merged batch names dev-1's temperature twice (the later entry is the newer)
        (
            100.0,
            [
                Latest("dev-1", "temperature", 1_000_000, 21.5),
                Latest("dév-2", "humidity", 1_500_000, -0.0),
                Latest("dev-1", "humidity", 2_000_000, 0.1 + 0.2),
                Latest("dev-1", "temperature", 2_250_000, 1e-300),
            ],
            [
                hset(
                    "dev-1",
                    "temperature",
                    "1e-300",
                    "temperature:ts",
                    "2.25",
                    "humidity",
                    "0.30000000000000004",
                    "humidity:ts",
                    "2",
                ),
                expire("dev-1"),
                hset("dév-2", "humidity", "-0.0", "humidity:ts", "1.5"),
                expire("dév-2"),
            ],
        ),
        # soon after: no EXPIRE
        (
            101.0,
            [Latest("dév-2", "humidity", 3_000_000, 40.0)],
            [hset("dév-2", "humidity", "40.0", "humidity:ts", "3")],
        ),
        # more than half a TTL (60 s) later: EXPIRE again; a new device gets its first
        (
            132.5,
            [Latest("dév-2", "humidity", 4_000_000, 41.25), Latest("d3", "m", 0, 1.0)],
            [
                hset("dév-2", "humidity", "41.25", "humidity:ts", "4"),
                expire("dév-2"),
                hset("d3", "m", "1.0", "m:ts", "0"),
                expire("d3"),
            ],
        ),
    ]
    sink = RedisSink("redis://127.0.0.1:1", "pülse", ttl_seconds=60)
    for now, latest, expected in rounds:
        made = _native.latest_commands(
            latest, sink.keys.device_prefix, sink._device_ttl_set, now, 60
        )
        assert made == expected
    assert sink._device_ttl_set == {"dev-1": 100.0, "dév-2": 132.5, "d3": 132.5}


def test_closed_window_commands() -> None:
    def closed(
        device: str, metric: str, label: str, start: int, values: list[float]
    ) -> ClosedWindow:
        state = Summary.initialize(start, values[0], None)
        for value in values[1:]:
            Summary.add(state, start + 1, value, None)
        return ClosedWindow(
            device, metric, label, start, start + 10 * S, state, Summary.text(state)
        )

    overflowed = closed("dev-3", "temperature", "10s", 0, [1e300, 1e300])
    overflowed.state[1] = math.inf  # its sum overflowed: mean "null", no top member
    overflowed = overflowed._replace(text=Summary.text(overflowed.state))
    kept = closed("dev-1", "temperature", "10s", 10 * S, [23.0])
    other = closed("dév-2", "temperature", "10s", 0, [0.1, 0.2])
    humidity = closed("dev-1", "humidity", "1m", 0, [40.0])._replace(text=None)  # made here
    batch = [
        closed("dev-1", "temperature", "10s", 0, [21.5, 22.25]),
        other,
        kept,  # newer: replaces the first, in the first's place
        closed("dev-1", "temperature", "10s", 5 * S, [99.0]),  # older than the one kept
        humidity,
        overflowed,
    ]
    sink = RedisSink("redis://127.0.0.1:1", "pülse", ttl_seconds=60)
    made = _native.closed_window_commands(
        batch, sink.keys.closed_prefix, sink.keys.top_prefix, 60, WINDOW_FIELDS
    )
    expected = []
    for window in (kept, other, humidity, overflowed):
        key = f"pülse:closed:{window.window}:{window.device}:{window.metric}"
        expected += [
            hset_of(key, Summary.text(window.state), window.start_us, window.end_us),
            pack("EXPIRE", key, 60),
        ]
    mean = repr((0.1 + 0.2) / 2)
    expected += [
        pack("ZADD", "pülse:top:10s:temperature", "23.0", "dev-1", mean, "dév-2"),
        pack("EXPIRE", "pülse:top:10s:temperature", 60),
        pack("ZADD", "pülse:top:1m:humidity", "40.0", "dev-1"),
        pack("EXPIRE", "pülse:top:1m:humidity", 60),
    ]
    assert made == expected


def test_an_error_reply_is_raised_after_all_replies_are_read(
    redis_url: str, topic_prefix: str
) -> None:
    async def run() -> None:
        pipeline = RespPipeline(redis_url)
        try:
            with pytest.raises(RedisReplyError, match="1 commands failed"):
                await pipeline.execute(
                    [
                        pack("SET", f"{topic_prefix}:s", "x"),
                        pack("HSET", f"{topic_prefix}:s", "a", 1),
                        pack("SET", f"{topic_prefix}:t", "y"),
                    ]
                )
            await pipeline.execute([pack("SET", f"{topic_prefix}:u", "z")])  # still in step
        finally:
            await pipeline.close()

    asyncio.run(run())
    client = redis.Redis.from_url(redis_url)
    assert (client.get(f"{topic_prefix}:t"), client.get(f"{topic_prefix}:u")) == (b"y", b"z")


def test_password_and_database_from_the_url(tmp_path: Path) -> None:
    server = start_redis(tmp_path, stop_with_parent=True)
    try:
        redis.Redis(port=server.port).config_set("requirepass", "s3cret")
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"

        async def run() -> None:
            pipeline = RespPipeline(url)
            try:
                await pipeline.execute([pack("SET", "k", "v")])
            finally:
                await pipeline.close()

        asyncio.run(run())
        assert redis.Redis(port=server.port, password="s3cret", db=3).get("k") == b"v"
        assert redis.Redis(port=server.port, password="s3cret", db=0).get("k") is None
    finally:
        server.stop()


def test_sink_waits_while_redis_is_down_and_writes_when_it_is_back(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "a", stop_with_parent=True)
    port = server.port
    sink = RedisSink(f"redis://127.0.0.1:{port}/0", "p", 60)
    state = Summary.initialize(1_700_000_000_500_000, 21.5, None)
    batch = FlushBatch(
        latest=[Latest("dev-1", "temp", 1_700_000_000_500_000, 21.5)],
        open_views=[OpenView("dev-1", "temp", "10s", 1_700_000_000 * S, 1_700_000_010 * S, state)],
    )

    async def run() -> None:
        await sink.start()
        await sink.write(batch)  # connected
        server.stop()
        pending = asyncio.ensure_future(sink.write(batch))
        await asyncio.sleep(1.0)
        assert not pending.done()  # waiting, not dropped, not failed
        # Started from a worker thread: not tied to the thread's life (see pulse.local.stack).
        restarted = await asyncio.to_thread(start_redis, tmp_path / "b", port)
        try:
            await asyncio.wait_for(pending, 30)
            stored = redis.Redis(port=port).hgetall("p:device:dev-1")
            assert stored == {b"temp": b"21.5", b"temp:ts": b"1700000000.5"}
            # The restarted server lost every key: they are back with their TTLs, although
            # the sink had already set those TTLs on the first server.
            assert 0 < redis.Redis(port=port).ttl("p:device:dev-1") <= 60
            assert 0 < redis.Redis(port=port).ttl("p:open:10s:dev-1:temp") <= 60
        finally:
            await sink.stop()
            restarted.stop()

    asyncio.run(run())


def test_a_merged_batch_writes_each_key_once_with_its_newest_value(
    redis_url: str, topic_prefix: str
) -> None:
    def view(value: float, start_us: int) -> OpenView:
        state = Summary.initialize(start_us, value, None)
        return OpenView("dev-1", "temp", "10s", start_us, start_us + 10 * S, state)

    older = FlushBatch(open_views=[view(1.0, 0)], latest=[Latest("dev-1", "temp", 1 * S, 1.0)])
    newer = FlushBatch(
        open_views=[view(2.0, 10 * S)], latest=[Latest("dev-1", "temp", 12 * S, 2.0)]
    )
    sink = RedisSink(redis_url, topic_prefix, 60)
    merged = FlushBatch.merge([older, newer])
    commands = sink._commands(merged)
    hsets = [c for c in commands if c.startswith(b"*") and b"HSET" in c[:20]]
    assert len(hsets) == 2  # one per key: the device hash and the open window

    async def run() -> None:
        await sink.start()
        try:
            await sink.write(merged)
        finally:
            await sink.stop()

    asyncio.run(run())
    client = redis.Redis.from_url(redis_url)
    assert client.hgetall(f"{topic_prefix}:device:dev-1") == {b"temp": b"2.0", b"temp:ts": b"12"}
    opened = client.hgetall(f"{topic_prefix}:open:10s:dev-1:temp")
    assert (opened[b"count"], opened[b"sum"], opened[b"start"]) == (b"1", b"2.0", b"10")


def test_a_device_key_gets_its_ttl_once_per_half_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(redis_sink.time, "monotonic", lambda: clock[0])
    sink = RedisSink("redis://127.0.0.1:1", "p", ttl_seconds=60)

    def flush(*devices: str) -> list[bytes]:
        batch = FlushBatch(latest=[Latest(device, "temp", 1 * S, 1.0) for device in devices])
        return [c for c in sink._commands(batch) if b"EXPIRE" in c]

    expire = [pack("EXPIRE", f"p:device:dev-{n}", 60) for n in range(3)]
    assert flush("dev-0", "dev-1") == expire[:2]
    clock[0] += 29.0
    assert flush("dev-0", "dev-1", "dev-2") == [expire[2]]  # only the new device
    clock[0] += 2.0  # dev-0 and dev-1's TTLs were set 31 s ago: more than half of 60
    assert flush("dev-0", "dev-1", "dev-2") == expire[:2]
    # Devices not seen for more than half a TTL are forgotten (the memory stays bounded).
    clock[0] += 100.0
    assert flush("dev-2") == [expire[2]]
    assert set(sink._device_ttl_set) == {"dev-2"}
