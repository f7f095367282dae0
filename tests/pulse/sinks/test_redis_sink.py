"""The Redis sink: its commands, its connection (pipelined writes, errors, auth, waiting out an
outage), and its fenced writes on a real Redis (a late write never regresses what is stored)."""

from __future__ import annotations

import asyncio
import itertools
import math
import sys
import time
from pathlib import Path
from typing import Any, cast

import hiredis
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.outputs import ClosedWindow, Latest, OpenView
from pulse.local.stack import start_redis
from pulse.sinks import redis as redis_sink
from pulse.sinks._base import FlushBatch
from pulse.sinks._resp import RedisReplyError, RespPipeline, pack
from pulse.sinks._text import seconds_text
from pulse.sinks.redis import (
    FENCE_SCRIPT,
    FENCE_SHA,
    WINDOW_FIELD,
    RedisSink,
    fenced_calls,
    read_window,
    window_hset,
)
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


def packed(*parts: object) -> bytes:
    """A command as hiredis packs it."""
    return hiredis.pack_command(parts)  # type: ignore[arg-type]  # a 1-tuple stub


def bulks(*parts: object) -> bytes:
    """Bulk strings in RESP as hiredis packs them: a packed command without its ``*<n>``."""
    command = packed(*parts)
    return command[command.index(b"\r\n") + 2 :]


Write = tuple[bytes, bytes, int]


def fenced(key: str, kind: str, refresh: bool, *args: object) -> Write:
    """A key's fenced write (keys, args, argc) as hiredis packs its pieces."""
    return (
        bulks(key, f"{{{key}}}:v"),
        bulks(kind, int(refresh), len(args), *args),
        3 + len(args),
    )


def test_window_hset_packs_like_hiredis() -> None:
    text = ("3", "7.5", "1.0", "4.5", "2.5", "1.0", "4.5", "2.0", "4.49", "-0.0")
    for key in ("p:closed:10s:dev-1:temperature", "pülse:open:1m:dev-1:t"):
        # one field: the 10 aggregates, start and end joined by single spaces
        fields = ["window", "3 7.5 1.0 4.5 2.5 1.0 4.5 2.0 4.49 -0.0 0.001 10"]
        keys = b"$%d\r\n%s\r\n" % (len(key.encode()), key.encode())
        keys += b"$%d\r\n{%s}:v\r\n" % (len(key.encode()) + 4, key.encode())
        args = packed("w", "1", "3", "10000000:3", *fields)
        assert args.startswith(b"*6\r\n")
        assert window_hset(key, text, 1_000, 10_000_000, "10000000:3") == (keys, args[4:], 6)
        assert window_hset(key, text, 1_000, 10_000_000, "10000000:3") == (
            fenced(key, "w", True, "10000000:3", *fields)
        )


def test_fenced_calls_pack_consecutive_writes_per_call() -> None:
    one = fenced("p:open:10s:dév-1:t", "w", False, "0:1", "count", "1")
    removal = fenced("p:open:10s:d2:t", "w", True, "0:inf")
    device = fenced("p:device:d1", "f", True, "5:1", "t", "1.5", "t:ts", "0.000005")
    top = fenced("p:top:10s:t", "z", True, "0:1", "1.5", "d1", "0:2", "-2.0", "d2")
    # One key: EVALSHA sha 2 key {key}:v ttl kind refresh n args...
    assert fenced_calls([one], 60, 100) == [
        packed(
            "EVALSHA",
            FENCE_SHA,
            "2",
            "p:open:10s:dév-1:t",
            "{p:open:10s:dév-1:t}:v",
            "60",
            *("w", "0", "3", "0:1", "count", "1"),
        )
    ]
    # Several keys: every key pair first, then the TTL, then each key's write in order.
    one_keys = ("p:open:10s:dév-1:t", "{p:open:10s:dév-1:t}:v")
    removal_keys = ("p:open:10s:d2:t", "{p:open:10s:d2:t}:v")
    device_keys = ("p:device:d1", "{p:device:d1}:v")
    top_keys = ("p:top:10s:t", "{p:top:10s:t}:v")
    one_args = ("w", "0", "3", "0:1", "count", "1")
    removal_args = ("w", "1", "1", "0:inf")
    device_args = ("f", "1", "5", "5:1", "t", "1.5", "t:ts", "0.000005")
    top_args = ("z", "1", "6", "0:1", "1.5", "d1", "0:2", "-2.0", "d2")
    every_key = packed(
        *("EVALSHA", FENCE_SHA, "8", *one_keys, *removal_keys, *device_keys, *top_keys),
        *("86400", *one_args, *removal_args, *device_args, *top_args),
    )
    writes = [one, removal, device, top]
    assert fenced_calls(writes, 86400, 4) == fenced_calls(writes, 86400, 100) == [every_key]
    # At most keys_per_call keys per call, the last call takes the rest.
    assert fenced_calls(writes, 86400, 3) == [
        packed(
            *("EVALSHA", FENCE_SHA, "6", *one_keys, *removal_keys, *device_keys),
            *("86400", *one_args, *removal_args, *device_args),
        ),
        packed("EVALSHA", FENCE_SHA, "2", *top_keys, "86400", *top_args),
    ]
    for size, keys_per_call in ((1, [1, 1, 1, 1]), (2, [2, 2]), (3, [3, 1]), (5, [4])):
        made = fenced_calls(writes, 60, size)
        assert [len(writes_in(call)) for call in made] == keys_per_call
        assert [write for call in made for write in writes_in(call)] == [
            write_parts(write) for write in writes
        ]
    assert fenced_calls([], 60, 100) == []
    with pytest.raises(ValueError, match="keys_per_call"):
        fenced_calls(writes, 60, 0)


def write_parts(write: Write) -> tuple[bytes, bytes, bytes, list[bytes]]:
    """(key, kind, refresh, args) of a write, read back from its bulk strings."""
    keys, args, argc = write
    key, versions = args_of(b"*2\r\n" + keys)
    assert versions == b"{" + key + b"}:v"
    parts = args_of(b"*%d\r\n" % argc + args)
    assert int(parts[2]) == argc - 3
    return key, parts[0], parts[1], parts[3:]


def writes_in(call: bytes) -> list[tuple[bytes, bytes, bytes, list[bytes]]]:
    """The per-key writes of a fenced call, (key, kind, refresh, args) each."""
    args = args_of(call)
    assert args[:2] == [b"EVALSHA", FENCE_SHA.encode()]
    count = int(args[2])
    keys, at = args[3 : 3 + count], 3 + count + 1  # after the keys and the TTL
    out = []
    for key, versions in zip(keys[::2], keys[1::2], strict=True):
        assert versions == b"{" + key + b"}:v"
        kind, refresh, n = args[at], args[at + 1], int(args[at + 2])
        out.append((key, kind, refresh, args[at + 3 : at + 3 + n]))
        at += 3 + n
    assert at == len(args)
    return out


def hset_of(
    key: str, text: tuple[str, ...], start_us: int, end_us: int, refresh: bool = True
) -> Write:
    """A window's fenced hash write, versioned (start, count)."""
    values = (*text, seconds_text(start_us), seconds_text(end_us))
    version = f"{start_us}:{text[0]}"
    return fenced(key, "w", refresh, version, "window", " ".join(values))


def test_open_view_writes() -> None:
    state = Summary.initialize(1_000_000, 21.5, None)
    Summary.add(state, 2_500_000, -3.25, {"room": "a b"})
    single = Summary.initialize(4_000_000, 7.0, None)

    def view(device: str, start: int, state: list | None, drained: bool = True) -> OpenView:
        if state is None:  # the window at start closed: the key's removal
            return OpenView(device, "temperature", "10s", start, start + 10_000_000, None)
        text = Summary.text(state) if drained else None
        return OpenView(device, "temperature", "10s", start, start + 10_000_000, state, text)

    one, two = "pülse:open:10s:dev-1:temperature", "pülse:open:10s:dév-2:temperature"
    text, single_text = Summary.text(state), Summary.text(single)
    rounds = [
        # first writes: every key gets its TTL; a view not drained is formatted on the spot
        (
            100.0,
            [view("dev-1", 0, state), view("dév-2", 1_500_000, single, drained=False)],
            [
                hset_of(one, text, 0, 10 * S),
                hset_of(two, single_text, 1_500_000, 11_500_000),
            ],
        ),
        # same windows soon after: no TTL; a series without open window: its removal,
        # versioned (start of the window that closed, inf)
        (
            101.0,
            [view("dev-1", 0, single), view("dév-2", 1_500_000, None)],
            [
                hset_of(one, single_text, 0, 10 * S, refresh=False),
                fenced(two, "w", True, "1500000:inf"),
            ],
        ),
        # a new window at dev-1, and dév-2 again (its TTL was forgotten with the removal)
        (
            102.0,
            [view("dev-1", 10_000_000, state), view("dév-2", 11_500_000, single)],
            [
                hset_of(one, text, 10 * S, 20 * S),
                hset_of(two, single_text, 11_500_000, 21_500_000),
            ],
        ),
        # more than half a TTL (60 s) later: the TTLs again for the same window
        (
            132.5,
            [view("dev-1", 10_000_000, state), view("dév-2", 11_500_000, single)],
            [
                hset_of(one, text, 10 * S, 20 * S),
                hset_of(two, single_text, 11_500_000, 21_500_000),
            ],
        ),
    ]
    sink = RedisSink("redis://127.0.0.1:1", "pülse", ttl_seconds=60)
    for now, views, expected in rounds:
        made = _native.open_view_writes(
            views, sink.keys.open_prefix, sink._open_ttl_set, now, 60, WINDOW_FIELD
        )
        assert made == expected
    assert sink._open_ttl_set == {one: (10_000_000, 132.5), two: (11_500_000, 132.5)}


def test_latest_writes() -> None:
    def write(device: str, refresh: bool, *metrics: object) -> Write:
        return fenced(f"pülse:device:{device}", "f", refresh, *metrics)

    rounds = [
        # first writes: one write per device with each metric's newest value, versioned
        # (event time, the partition's offset at the drain), with the TTLs; a merged batch
        # names dev-1's temperature twice (the later entry is the newer)
        (
            100.0,
            [
                Latest("dev-1", "temperature", 1_000_000, 21.5, 10),
                Latest("dév-2", "humidity", 1_500_000, -0.0, 4),
                Latest("dev-1", "humidity", 2_000_000, 0.1 + 0.2, 10),
                Latest("dev-1", "temperature", 2_250_000, 1e-300, 12),
            ],
            [
                write(
                    "dev-1",
                    True,
                    "2250000:12",
                    "temperature",
                    "1e-300",
                    "temperature:ts",
                    "2.25",
                    "2000000:10",
                    "humidity",
                    "0.30000000000000004",
                    "humidity:ts",
                    "2",
                ),
                write("dév-2", True, "1500000:4", "humidity", "-0.0", "humidity:ts", "1.5"),
            ],
        ),
        # soon after: no TTL
        (
            101.0,
            [Latest("dév-2", "humidity", 3_000_000, 40.0, 5)],
            [write("dév-2", False, "3000000:5", "humidity", "40.0", "humidity:ts", "3")],
        ),
        # more than half a TTL (60 s) later: the TTLs again; a new device gets its first
        (
            132.5,
            [Latest("dév-2", "humidity", 4_000_000, 41.25, 6), Latest("d3", "m", 0, 1.0, 0)],
            [
                write("dév-2", True, "4000000:6", "humidity", "41.25", "humidity:ts", "4"),
                write("d3", True, "0:0", "m", "1.0", "m:ts", "0"),
            ],
        ),
    ]
    sink = RedisSink("redis://127.0.0.1:1", "pülse", ttl_seconds=60)
    for now, latest, expected in rounds:
        made = _native.latest_writes(latest, sink.keys.device_prefix, sink._device_ttl_set, now, 60)
        assert made == expected
    assert sink._device_ttl_set == {"dev-1": 100.0, "dév-2": 132.5, "d3": 132.5}


def closed(
    device: str, metric: str, label: str, start: int, values: list[float], size: int = 10 * S
) -> ClosedWindow:
    state = Summary.initialize(start, values[0], None)
    for value in values[1:]:
        Summary.add(state, start + 1, value, None)
    return ClosedWindow(device, metric, label, start, start + size, state, Summary.text(state))


def test_closed_window_writes() -> None:
    # The largest sum a window could hold (no sum overflows: models.reading.MAX_ABS_VALUE)
    # is written as a number, and its mean scores its top member.
    huge = closed("dev-3", "temperature", "10s", 0, [1e290, 1e290])
    huge.state[1] = sys.float_info.max
    huge = huge._replace(text=Summary.text(huge.state))
    kept = closed("dev-1", "temperature", "10s", 10 * S, [23.0])
    other = closed("dév-2", "temperature", "10s", 0, [0.1, 0.2])
    humidity = closed("dev-1", "humidity", "1m", 0, [40.0])._replace(text=None)  # made here
    batch = [
        closed("dev-1", "temperature", "10s", 0, [21.5, 22.25]),
        other,
        kept,  # newer: replaces the first, in the first's place
        closed("dev-1", "temperature", "10s", 5 * S, [99.0]),  # older than the one kept
        humidity,
        huge,
    ]
    sink = RedisSink("redis://127.0.0.1:1", "pülse", ttl_seconds=60)
    made = _native.closed_window_writes(
        batch, sink.keys.closed_prefix, sink.keys.top_prefix, WINDOW_FIELD
    )
    expected = []
    for window in (kept, other, humidity, huge):
        key = f"pülse:closed:{window.window}:{window.device}:{window.metric}"
        expected.append(hset_of(key, Summary.text(window.state), window.start_us, window.end_us))
    mean = repr((0.1 + 0.2) / 2)
    expected += [  # the members of each top key, versioned (window start, count)
        fenced(
            "pülse:top:10s:temperature",
            "z",
            True,
            *("10000000:1", "23.0", "dev-1"),
            *("0:2", mean, "dév-2"),
            *("0:2", repr(sys.float_info.max / 2), "dev-3"),
        ),
        fenced("pülse:top:1m:humidity", "z", True, "0:1", "40.0", "dev-1"),
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
        latest=[Latest("dev-1", "temp", 1_700_000_000_500_000, 21.5, 8)],
        open_views=[OpenView("dev-1", "temp", "10s", 1_700_000_000 * S, 1_700_000_010 * S, state)],
    )
    late = FlushBatch(latest=[Latest("dev-1", "temp", 1_600_000_000 * S, -1.0, 3)])

    async def run() -> None:
        await sink.start()
        await sink.write(batch)  # connected
        server.stop()
        pending = asyncio.ensure_future(sink.write(batch))
        await asyncio.sleep(1.0)
        assert not pending.done()  # waiting, not dropped, not failed
        # Started from a worker thread: not tied to the thread's life (see pulse.local.stack).
        # A new server: no keys, and no script until the sink loads it again.
        restarted = await asyncio.to_thread(start_redis, tmp_path / "b", port)
        try:
            await asyncio.wait_for(pending, 30)
            client = redis.Redis(port=port)
            stored = client.hgetall("p:device:dev-1")
            assert stored == {
                b"temp": b"21.5",
                b"temp:ts": b"1700000000.5",
                b"temp:v": b"1700000000500000:8",
            }
            # The restarted server lost every key: they are back with their TTLs, although
            # the sink had already set those TTLs on the first server.
            assert all_keys(client, "p") == {
                "p:device:dev-1",
                "p:devices",
                "p:open:10s:dev-1:temp",
            }
            assert_every_key_has_a_ttl(client, "p", 60)
            await sink.write(late)  # still fenced: refused
            assert client.hgetall("p:device:dev-1") == stored
        finally:
            await sink.stop()
            restarted.stop()

    asyncio.run(run())


def test_a_server_that_cannot_write_now_is_waited_out_and_its_state_shown(
    tmp_path: Path,
) -> None:
    # Redis out of memory (maxmemory reached) answers every write with -OOM: backpressure.
    # The sink waits (state "waiting", with Redis's answer), writes once memory is given back,
    # and is "ok" again.
    server = start_redis(tmp_path, stop_with_parent=True)
    sink = RedisSink(server.url, "p", 60)
    client = redis.Redis(port=server.port)
    batch = FlushBatch(latest=[Latest("dev-1", "temp", 1_700_000_000 * S, 21.5, 8)])

    async def run() -> None:
        await sink.start()
        try:
            await sink.write(FlushBatch(latest=[Latest("dev-0", "temp", S, 1.0, 1)]))
            client.config_set("maxmemory", "1")
            pending = asyncio.ensure_future(sink.write(batch))
            await asyncio.sleep(1.0)
            assert not pending.done()
            assert sink.health.state == "waiting"
            assert sink.health.reason is not None
            assert sink.health.reason.startswith("Redis: OOM command not allowed")
            client.config_set("maxmemory", "0")
            await asyncio.wait_for(pending, 10)
            assert client.hgetall("p:device:dev-1") == {
                b"temp": b"21.5",
                b"temp:ts": b"1700000000",
                b"temp:v": b"1700000000000000:8",
            }
            assert sink.health.state == "ok"
        finally:
            await sink.stop()
            server.stop()

    asyncio.run(run())


def test_a_merged_batch_writes_each_key_once_with_its_newest_value(
    redis_url: str, topic_prefix: str
) -> None:
    def view(value: float, start_us: int) -> OpenView:
        state = Summary.initialize(start_us, value, None)
        return OpenView("dev-1", "temp", "10s", start_us, start_us + 10 * S, state)

    older = FlushBatch(open_views=[view(1.0, 0)], latest=[Latest("dev-1", "temp", 1 * S, 1.0, 1)])
    newer = FlushBatch(
        open_views=[view(2.0, 10 * S)], latest=[Latest("dev-1", "temp", 12 * S, 2.0, 2)]
    )
    sink = RedisSink(redis_url, topic_prefix, 60)
    merged = FlushBatch.merge([older, newer])
    # one write per key: the device hash and the open window, in one call
    calls = sink._commands(merged)
    assert len(calls) == 1
    assert [write[0] for write in writes_in(calls[0])] == [
        f"{topic_prefix}:device:dev-1".encode(),
        f"{topic_prefix}:open:10s:dev-1:temp".encode(),
    ]
    write(sink, merged)
    client = redis.Redis.from_url(redis_url)
    assert client.hgetall(f"{topic_prefix}:device:dev-1") == {
        b"temp": b"2.0",
        b"temp:ts": b"12",
        b"temp:v": b"12000000:2",
    }
    stored = client.hgetall(f"{topic_prefix}:open:10s:dev-1:temp")
    opened = read_window(stored)
    assert opened is not None
    assert (opened["count"], opened["sum"], opened["start"]) == ("1", "2.0", "10")
    assert stored[b"v"] == b"10000000:1"


def args_of(command: bytes) -> list[bytes]:
    """The arguments of a packed command (a RESP array of bulk strings, read as a reply)."""
    reader = hiredis.Reader()
    reader.feed(command)
    args = reader.gets()
    assert isinstance(args, list)
    return args


def test_a_device_key_gets_its_ttl_once_per_half_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(redis_sink.time, "monotonic", lambda: clock[0])
    sink = RedisSink("redis://127.0.0.1:1", "p", ttl_seconds=60)

    def flush(*devices: str) -> list[bytes]:
        """The keys of the writes that set the TTLs (refresh 1)."""
        batch = FlushBatch(latest=[Latest(device, "temp", 1 * S, 1.0, 0) for device in devices])
        calls = sink._commands(batch)
        return [key for call in calls for key, _, refresh, _ in writes_in(call) if refresh == b"1"]

    keys = [f"p:device:dev-{n}".encode() for n in range(3)]
    assert flush("dev-0", "dev-1") == keys[:2]
    clock[0] += 29.0
    assert flush("dev-0", "dev-1", "dev-2") == [keys[2]]  # only the new device
    clock[0] += 2.0  # dev-0 and dev-1's TTLs were set 31 s ago: more than half of 60
    assert flush("dev-0", "dev-1", "dev-2") == keys[:2]
    # Devices not seen for more than half a TTL are forgotten (the memory stays bounded).
    clock[0] += 100.0
    assert flush("dev-2") == [keys[2]]
    assert set(sink._device_ttl_set) == {"dev-2"}


def test_devices_that_stopped_reporting_are_forgotten_within_minutes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With a day's TTL the sink still forgets a device it set the TTL of more than
    # DEVICE_TTL_MEMORY ago: a flood of new device names leaves it the last minutes' devices,
    # and a device that keeps reporting gets its TTL set again once in a while.
    assert redis_sink.DEVICE_TTL_MEMORY == 60.0
    clock = [1000.0]
    monkeypatch.setattr(redis_sink.time, "monotonic", lambda: clock[0])
    sink = RedisSink("redis://127.0.0.1:1", "p", ttl_seconds=86_400)

    def flush(*devices: str) -> list[bytes]:
        batch = FlushBatch(latest=[Latest(device, "temp", 1 * S, 1.0, 0) for device in devices])
        calls = sink._commands(batch)
        return [key for call in calls for key, _, refresh, _ in writes_in(call) if refresh == b"1"]

    steady_set_at = []
    for step in range(120):  # ten minutes, a flush every 5 s
        new = [f"new-{step}-{i}" for i in range(3)]
        refreshed = flush("steady", *new)
        assert set(refreshed) - {b"p:device:steady"} == {f"p:device:{d}".encode() for d in new}
        if b"p:device:steady" in refreshed:
            steady_set_at.append(clock[0])
        assert len(sink._device_ttl_set) <= 1 + 3 * (2 * 60 // 5 + 1)  # two minutes' worth
        clock[0] += 5.0
    assert steady_set_at[0] == 1000.0
    assert {b - a for a, b in itertools.pairwise(steady_set_at)} == {120.0}
    assert "new-0-0" not in sink._device_ttl_set


# -- fenced writes on a real Redis ------------------------------------------------------------


def write(sink: RedisSink, *batches: FlushBatch) -> None:
    async def run() -> None:
        await sink.start()
        try:
            for batch in batches:
                await sink.write(batch)
        finally:
            await sink.stop()

    asyncio.run(run())


def all_keys(client: redis.Redis, prefix: str) -> set[str]:
    """Every key under ``prefix``, the versions' ``{prefix:...}:v`` too."""
    found = [*client.scan_iter(f"{prefix}:*"), *client.scan_iter(f"{{{prefix}:*")]
    return {key.decode() for key in found}


def contents(client: redis.Redis, prefix: str) -> dict[str, object]:
    """Every key under ``prefix`` with its content: a hash as a dict, a sorted set as a dict
    of member to score."""
    out: dict[str, object] = {}
    for key in sorted(all_keys(client, prefix)):
        kind = client.type(key)
        if kind == b"hash":
            stored = cast(dict[bytes, bytes], client.hgetall(key))  # bytes: no decoding client
            out[key] = {k.decode(): v.decode() for k, v in stored.items()}
        else:
            assert kind == b"zset", key
            ranked = cast(list[tuple[bytes, float]], client.zrange(key, 0, -1, withscores=True))
            out[key] = {member.decode(): score for member, score in ranked}
    return out


def assert_every_key_has_a_ttl(client: redis.Redis, prefix: str, ttl: int) -> None:
    ttls = {key: client.ttl(key) for key in all_keys(client, prefix)}
    assert ttls and {key: t for key, t in ttls.items() if not 0 < t <= ttl} == {}


def view_of(
    device: str, metric: str, label: str, start: int, values: list[float], size: int = 10 * S
) -> OpenView:
    return OpenView(*closed(device, metric, label, start, values, size))


def window_hash(window: ClosedWindow | OpenView, version: str) -> dict[str, str]:
    """What a window's hash holds: its aggregates' text, start and end joined by single
    spaces, and its version."""
    assert window.text is not None
    values = (*window.text, seconds_text(window.start_us), seconds_text(window.end_us))
    return {"window": " ".join(values), "v": version}


def sliding_of(device: str, metric: str, end: int, values: list[float]) -> OpenView:
    """A sliding:20s view whose latest event time is ``end``."""
    view = view_of(device, metric, "sliding:20s", end - 20 * S, values, 20 * S)
    return view._replace(text=None)  # the sink formats a sliding view itself


def sliding_hash(view: OpenView, version: str) -> dict[str, str]:
    assert view.state is not None
    return window_hash(view._replace(text=Summary.text(view.state)), version)


def test_late_writes_of_every_kind_are_refused_and_equal_or_newer_ones_apply(
    redis_url: str, topic_prefix: str
) -> None:
    """A zombie's late write (an older version) of every output changes nothing; a write of
    the same version (identical content, by design) or of a newer one applies."""
    p = topic_prefix
    client = redis.Redis.from_url(redis_url)
    sink = RedisSink(redis_url, p, 60)
    # What the new owner wrote: the state after more input.
    owner = FlushBatch(
        closed=[
            closed("d1", "t", "10s", 20 * S, [3.0, 4.0]),
            closed("d2", "t", "10s", 20 * S, [9.0]),
        ],
        open_views=[view_of("d1", "t", "10s", 30 * S, [5.0, 6.0])],
        latest=[Latest("d1", "t", 31 * S, 6.0, 40), Latest("d1", "h", 25 * S, 50.0, 40)],
        sliding=[sliding_of("d1", "t", 31 * S, [4.0, 5.0, 6.0])],
    )
    write(sink, owner)
    # Every version in its own hash (a window's v, a metric's {metric}:v) but the top
    # members', beside their key.
    wanted = {
        f"{p}:closed:10s:d1:t": window_hash(owner.closed[0], "20000000:2"),
        f"{p}:closed:10s:d2:t": window_hash(owner.closed[1], "20000000:1"),
        f"{p}:top:10s:t": {"d1": 3.5, "d2": 9.0},
        f"{{{p}:top:10s:t}}:v": {"d1": "20000000:2", "d2": "20000000:1"},
        f"{p}:open:10s:d1:t": window_hash(owner.open_views[0], "30000000:2"),
        f"{p}:device:d1": {
            **{"t": "6.0", "t:ts": "31", "t:v": "31000000:40"},
            **{"h": "50.0", "h:ts": "25", "h:v": "25000000:40"},
        },
        f"{p}:sliding:20s:d1:t": sliding_hash(owner.sliding[0], "31000000:3"),
        f"{p}:devices": {"d1": 31.0},  # by its newest event time
    }
    assert contents(client, p) == wanted
    # The zombie's writes, each older: an earlier closed window (and top member), the same
    # closed window with fewer readings (an early close), an earlier count of the open
    # window and an earlier window, an older latest value and an equal time at an earlier
    # offset, a sliding window with an earlier end and one with the same end but fewer
    # readings.
    zombie = [
        FlushBatch(
            closed=[
                closed("d1", "t", "10s", 10 * S, [1.0]),
                closed("d2", "t", "10s", 10 * S, [2.0]),
            ]
        ),
        FlushBatch(closed=[closed("d1", "t", "10s", 20 * S, [3.0])]),
        FlushBatch(open_views=[view_of("d1", "t", "10s", 30 * S, [5.0])]),
        FlushBatch(open_views=[view_of("d1", "t", "10s", 20 * S, [3.0, 4.0, 7.0])]),
        FlushBatch(latest=[Latest("d1", "t", 30 * S, 5.0, 41), Latest("d1", "h", 25 * S, 1.0, 39)]),
        FlushBatch(sliding=[sliding_of("d1", "t", 30 * S, [4.0, 5.0, 1.0, 2.0])]),
        FlushBatch(sliding=[sliding_of("d1", "t", 31 * S, [4.0, 6.0])]),
    ]
    refused = 0
    for batch in zombie:
        late = RedisSink(redis_url, p, 60)  # the zombie's
        write(late, batch)
        assert contents(client, p) == wanted, batch
        refused += late.refused
    # Each write refused whole is counted: two closed hashes and the top key's two members,
    # then one closed hash and its member, two open hashes, the device (both metrics), and
    # two sliding hashes.
    assert refused == 3 + 2 + 2 + 1 + 2
    # Equal versions apply (their content is the same by design; here it differs, to show
    # that they were applied).
    equal = FlushBatch(
        closed=[closed("d1", "t", "10s", 20 * S, [3.5, 3.5])],
        open_views=[view_of("d1", "t", "10s", 30 * S, [5.5, 5.5])],
        latest=[Latest("d1", "t", 31 * S, 6.5, 40)],
        sliding=[sliding_of("d1", "t", 31 * S, [4.5, 5.5, 6.5])],
    )
    write(sink, equal)
    wanted[f"{p}:closed:10s:d1:t"] = window_hash(equal.closed[0], "20000000:2")
    wanted[f"{p}:top:10s:t"] = {"d1": 3.5, "d2": 9.0}
    wanted[f"{p}:open:10s:d1:t"] = window_hash(equal.open_views[0], "30000000:2")
    wanted[f"{p}:device:d1"] = {
        **{"t": "6.5", "t:ts": "31", "t:v": "31000000:40"},
        **{"h": "50.0", "h:ts": "25", "h:v": "25000000:40"},
    }
    wanted[f"{p}:sliding:20s:d1:t"] = sliding_hash(equal.sliding[0], "31000000:3")
    assert contents(client, p) == wanted
    # Newer versions apply, each field and member on its own: a later closed window of d1
    # only, the same window of d2 with more readings, a later count, a later time of one
    # metric, an equal time at a later offset of the other, a later end.
    newer = FlushBatch(
        closed=[
            closed("d1", "t", "10s", 30 * S, [8.0]),
            closed("d2", "t", "10s", 20 * S, [9.0, 1.0]),
        ],
        open_views=[view_of("d1", "t", "10s", 30 * S, [5.0, 6.0, 7.0])],
        latest=[Latest("d1", "t", 32 * S, 7.0, 41), Latest("d1", "h", 25 * S, 51.0, 41)],
        sliding=[sliding_of("d1", "t", 32 * S, [7.0])],
    )
    write(sink, newer)
    wanted.update(
        {
            f"{p}:closed:10s:d1:t": window_hash(newer.closed[0], "30000000:1"),
            f"{p}:closed:10s:d2:t": window_hash(newer.closed[1], "20000000:2"),
            f"{p}:top:10s:t": {"d1": 8.0, "d2": 5.0},
            f"{{{p}:top:10s:t}}:v": {"d1": "30000000:1", "d2": "20000000:2"},
            f"{p}:open:10s:d1:t": window_hash(newer.open_views[0], "30000000:3"),
            f"{p}:device:d1": {
                **{"t": "7.0", "t:ts": "32", "t:v": "32000000:41"},
                **{"h": "51.0", "h:ts": "25", "h:v": "25000000:41"},
            },
            f"{p}:sliding:20s:d1:t": sliding_hash(newer.sliding[0], "32000000:1"),
            f"{p}:devices": {"d1": 32.0},
        }
    )
    assert contents(client, p) == wanted
    assert_every_key_has_a_ttl(client, p, 60)


def test_a_removed_open_window_cannot_come_back_from_an_older_write(
    redis_url: str, topic_prefix: str
) -> None:
    """An open window's removal deletes its key (its version with it) and keeps the version
    as a tombstone in ``{KEY}:v``, which a write reads while the key is absent."""
    p = topic_prefix
    client = redis.Redis.from_url(redis_url)
    key, versions = f"{p}:open:10s:d1:t", f"{{{p}:open:10s:d1:t}}:v"
    sink = RedisSink(redis_url, p, 60)
    opened = view_of("d1", "t", "10s", 20 * S, [1.0, 2.0])
    write(sink, FlushBatch(open_views=[opened]))
    # While the window is open its version is the hash's field v: no other key.
    assert contents(client, p) == {key: window_hash(opened, "20000000:2")}
    removed = OpenView("d1", "t", "10s", 20 * S, 30 * S, None)  # the window at 20 s closed
    write(sink, FlushBatch(open_views=[removed]))
    # The removal leaves only its tombstone, (start of the closed window, inf), with the TTL.
    assert contents(client, p) == {versions: {"v": "20000000:inf"}}
    assert 0 < client.ttl(versions) <= 60
    # A zombie's writes of that window, whatever its count, or of an earlier one, or the
    # removal of an earlier window: nothing comes back, each refused whole.
    late_writes = (
        opened,
        view_of("d1", "t", "10s", 20 * S, [1.0, 2.0, 3.0, 4.0, 5.0]),
        view_of("d1", "t", "10s", 10 * S, [7.0]),
        OpenView("d1", "t", "10s", 10 * S, 20 * S, None),
    )
    for late in late_writes:
        zombie = RedisSink(redis_url, p, 60)
        write(zombie, FlushBatch(open_views=[late]))
        assert zombie.refused == 1, late
        assert contents(client, p) == {versions: {"v": "20000000:inf"}}, late
    # The series' next window opens: written, with its TTL; the tombstone stays until it
    # expires, read no more while the key holds a newer version.
    following = view_of("d1", "t", "10s", 30 * S, [4.0])
    write(sink, FlushBatch(open_views=[following]))
    assert contents(client, p) == {
        key: window_hash(following, "30000000:1"),
        versions: {"v": "20000000:inf"},
    }
    assert_every_key_has_a_ttl(client, p, 60)
    # The late writes again: now refused by the key's own version.
    for late in late_writes:
        zombie = RedisSink(redis_url, p, 60)
        write(zombie, FlushBatch(open_views=[late]))
        assert zombie.refused == 1, late
    # A write of the existing key never reads {KEY}:v: with a value there that no hash
    # command can read (a string), the next count of the window still applies.
    client.set(versions, "not a hash")
    more = view_of("d1", "t", "10s", 30 * S, [4.0, 4.5])
    write(sink, FlushBatch(open_views=[more]))
    stored = cast(dict[bytes, bytes], client.hgetall(key))
    assert {k.decode(): v.decode() for k, v in stored.items()} == window_hash(more, "30000000:2")
    assert client.get(versions) == b"not a hash"
    # Its removal writes the tombstone afresh, with the TTL.
    client.delete(versions)
    write(sink, FlushBatch(open_views=[OpenView("d1", "t", "10s", 30 * S, 40 * S, None)]))
    assert contents(client, p) == {versions: {"v": "30000000:inf"}}
    assert_every_key_has_a_ttl(client, p, 60)


def test_each_metric_of_a_device_is_fenced_by_its_own_version_in_the_device_hash(
    redis_url: str, topic_prefix: str
) -> None:
    """A device's hash holds each metric's version as ``{metric}:v``: one write of several
    metrics applies the newer ones and refuses the late one, in the same call."""
    p = topic_prefix
    client = redis.Redis.from_url(redis_url)
    key = f"{p}:device:d1"
    owner = FlushBatch(
        latest=[
            Latest("d1", "t", 20 * S, 21.5, 50),
            Latest("d1", "h", 18 * S, 40.0, 50),
            Latest("d1", "p", 19 * S, 1013.25, 50),
        ]
    )
    write(RedisSink(redis_url, p, 60), owner)
    assert contents(client, p) == {
        key: {
            **{"t": "21.5", "t:ts": "20", "t:v": "20000000:50"},
            **{"h": "40.0", "h:ts": "18", "h:v": "18000000:50"},
            **{"p": "1013.25", "p:ts": "19", "p:v": "19000000:50"},
        },
        f"{p}:devices": {"d1": 20.0},
    }
    # One write of the device (a merged batch of a worker): t older (an earlier time), h
    # newer (a later time), p at the same time and a later offset (newer), and a metric new
    # to the device.
    mixed = FlushBatch(
        latest=[
            Latest("d1", "t", 19 * S, -5.0, 49),
            Latest("d1", "h", 21 * S, 41.5, 60),
            Latest("d1", "p", 19 * S, 1000.5, 60),
            Latest("d1", "co2", 2 * S, 400.0, 60),
        ]
    )
    sink = RedisSink(redis_url, p, 60)
    calls = sink._commands(mixed)
    assert [(k, kind) for call in calls for k, kind, _, _ in writes_in(call)] == [
        (key.encode(), b"f")
    ]
    write(sink, mixed)
    assert sink.refused == 0  # applied in part: not refused whole
    assert contents(client, p) == {
        key: {
            **{"t": "21.5", "t:ts": "20", "t:v": "20000000:50"},
            **{"h": "41.5", "h:ts": "21", "h:v": "21000000:60"},
            **{"p": "1000.5", "p:ts": "19", "p:v": "19000000:60"},
            **{"co2": "400.0", "co2:ts": "2", "co2:v": "2000000:60"},
        },
        f"{p}:devices": {"d1": 21.0},
    }
    assert_every_key_has_a_ttl(client, p, 60)
    # Every metric late: refused whole, counted once for the key.
    zombie = RedisSink(redis_url, p, 60)
    late = [Latest("d1", "t", 1 * S, 0.0, 1), Latest("d1", "h", 1 * S, 0.0, 1)]
    write(zombie, FlushBatch(latest=late))
    assert zombie.refused == 1
    assert cast(dict[bytes, bytes], client.hgetall(key))[b"t"] == b"21.5"


def test_keys_written_with_versions_beside_them_stay_fenced(
    redis_url: str, topic_prefix: str
) -> None:
    """Keys whose versions are all in ``{KEY}:v`` (as the per-key reference script, and Pulse
    before versions moved into keys, wrote them): a key that holds no version of its own is
    fenced by those, then gets its own with the first write that applies."""
    p = topic_prefix
    client = redis.Redis.from_url(redis_url)
    per_key_sha = client.script_load(PER_KEY_SCRIPT)
    client.script_load(FENCE_SCRIPT)
    win, dev = f"{p}:closed:10s:d1:t", f"{p}:device:d1"

    def v(key: str) -> str:
        return f"{{{key}}}:v"

    for key, kind, args, applied in (
        (win, "w", ("20:2", "count", "2"), 1),
        (dev, "f", ("5:1", "t", "1.5", "t:ts", "5", "5:1", "h", "40.0", "h:ts", "5"), 2),
    ):
        assert client.evalsha(per_key_sha, 2, key, v(key), kind, 60, 1, *args) == applied
    before = contents(client, p)
    assert before == {
        win: {"count": "2"},
        v(win): {"v": "20:2"},
        dev: {"t": "1.5", "t:ts": "5", "h": "40.0", "h:ts": "5"},
        v(dev): {"t": "5:1", "h": "5:1"},
    }
    # Older writes: refused by the versions beside the keys.
    refused = fence(
        client,
        60,
        (win, "w", True, ("20:1", "count", "1")),
        (dev, "f", True, ("4:9", "t", "0.5", "t:ts", "4", "5:0", "h", "1.0", "h:ts", "5")),
    )
    assert refused == 2
    assert contents(client, p) == before
    # Newer writes apply, each version now in its key; a metric not written stays fenced
    # by the version beside the key.
    assert (
        fence(
            client,
            60,
            (win, "w", True, ("20:3", "count", "3")),
            (dev, "f", True, ("6:1", "t", "2.5", "t:ts", "6")),
        )
        == 0
    )
    assert fence(client, 60, (dev, "f", True, ("4:0", "h", "0.0", "h:ts", "4"))) == 1
    assert contents(client, p) == {
        win: {"count": "3", "v": "20:3"},
        v(win): {"v": "20:2"},
        dev: {"t": "2.5", "t:ts": "6", "t:v": "6:1", "h": "40.0", "h:ts": "5"},
        v(dev): {"t": "5:1", "h": "5:1"},
    }


def test_every_key_written_has_a_ttl(redis_url: str, topic_prefix: str) -> None:
    """Every key and its versions get the TTL, whatever the sink remembers of TTLs it set:
    here a second sink (another worker) finds keys it never wrote, a removed key written
    again, and new fields of a device."""
    p = topic_prefix
    client = redis.Redis.from_url(redis_url)
    first = FlushBatch(
        closed=[closed("d1", "t", "10s", 0, [1.0])],
        open_views=[
            view_of("d1", "t", "10s", 10 * S, [2.0]),
            view_of("d2", "t", "1m", 0, [3.0], 60 * S),
        ],
        latest=[Latest("d1", "t", 11 * S, 2.0, 5)],
        sliding=[sliding_of("d1", "t", 11 * S, [2.0])],
    )
    write(RedisSink(redis_url, p, 60), first)
    other = RedisSink(redis_url, p, 60)
    other._open_ttl_set = {  # as if it had set these keys' TTLs itself, just now
        f"{p}:open:10s:d1:t": (10 * S, time.monotonic()),
        f"{p}:open:1m:d2:t": (0, time.monotonic()),
    }
    other._device_ttl_set = {"d1": time.monotonic()}
    client.delete(f"{p}:open:10s:d1:t")  # gone (another way than its removal): recreated
    write(
        other,
        FlushBatch(
            open_views=[
                view_of("d1", "t", "10s", 10 * S, [2.0, 2.5]),
                OpenView("d2", "t", "1m", 0, 60 * S, None),
            ],
            latest=[Latest("d1", "h", 12 * S, 40.0, 6)],
        ),
    )
    assert all_keys(client, p) == {
        f"{p}:closed:10s:d1:t",
        f"{p}:top:10s:t",
        f"{{{p}:top:10s:t}}:v",
        f"{p}:open:10s:d1:t",
        f"{{{p}:open:1m:d2:t}}:v",  # the removal's tombstone
        f"{p}:device:d1",
        f"{p}:devices",
        f"{p}:sliding:20s:d1:t",
    }
    assert_every_key_has_a_ttl(client, p, 60)


def test_writes_go_on_after_the_server_lost_the_script(redis_url: str, topic_prefix: str) -> None:
    """A server that lost its scripts without a reconnection (SCRIPT FLUSH, a failover
    behind a proxy) answers NOSCRIPT: the sink loads the script again and writes."""
    p = topic_prefix
    client = redis.Redis.from_url(redis_url)
    sink = RedisSink(redis_url, p, 60)
    first = FlushBatch(latest=[Latest("d1", "t", 1 * S, 1.0, 1)])
    second = FlushBatch(latest=[Latest("d1", "t", 2 * S, 2.0, 2)])
    late = FlushBatch(latest=[Latest("d1", "t", 1 * S, 0.5, 1)])

    async def run() -> None:
        await sink.start()
        try:
            await sink.write(first)
            client.script_flush()
            assert client.script_exists(FENCE_SHA) == [False]
            await sink.write(second)
            await sink.write(late)
        finally:
            await sink.stop()

    asyncio.run(run())
    assert sink.connection.connections == 1  # no reconnection: the NOSCRIPT path
    assert contents(client, p) == {
        f"{p}:device:d1": {"t": "2.0", "t:ts": "2", "t:v": "2000000:2"},
        f"{p}:devices": {"d1": 2.0},
    }


# -- the fence script on a real Redis: many keys per call --------------------------------------

KeyWrite = tuple[str, str, bool, tuple[str, ...]]
"""One key's write as the script takes it: (key, kind, refresh, its arguments)."""


def fence(client: redis.Redis, ttl: int, *writes: KeyWrite) -> int:
    """One call of the fence script with these keys' writes; how many it refused. Its
    arguments are laid out here, apart from the sink's builders."""
    keys: list[str] = []
    args: list[str | int] = [ttl]
    for key, kind, refresh, rest in writes:
        keys += [key, f"{{{key}}}:v"]
        args += [kind, int(refresh), len(rest), *rest]
    return cast(int, client.evalsha(FENCE_SHA, len(keys), *keys, *args))


def ttls(client: redis.Redis, prefix: str) -> dict[str, int]:
    return {key: cast(int, client.ttl(key)) for key in all_keys(client, prefix)}


def test_one_call_fences_each_key_of_every_kind_on_its_own(
    redis_url: str, topic_prefix: str
) -> None:
    p = topic_prefix
    client = redis.Redis.from_url(redis_url)
    client.script_load(FENCE_SCRIPT)
    win, old, again, gone, dev, top, lost, new = (
        f"{p}:{name}" for name in ("win", "old", "again", "gone", "dev", "top", "lost", "new")
    )

    def v(key: str) -> str:
        return f"{{{key}}}:v"

    # What the call meets, written by one call that refuses nothing.
    first = fence(
        client,
        60,
        (win, "w", True, ("10:2", "count", "2", "sum", "3.0")),
        (old, "w", True, ("10:1", "count", "1")),
        (again, "w", False, ("10:1", "count", "1")),
        (gone, "w", True, ("20:1", "count", "1")),
        (dev, "f", True, ("5:1", "t", "1.5", "t:ts", "5", "5:1", "h", "40.0", "h:ts", "5")),
        (top, "z", True, ("10:2", "1.5", "d1", "10:1", "2.5", "d2")),
        (lost, "z", True, ("10:2", "7.0", "d1")),
    )
    assert first == 0
    assert {key: 0 < t <= 60 for key, t in ttls(client, p).items()} == {
        key: True for key in all_keys(client, p)
    }
    for key in (win, old, again, dev, top, lost):  # to see which writes set the TTLs
        client.persist(key)
    # One call, mixed kinds: each key fenced as it was by a call of its own.
    refused = fence(
        client,
        30,
        # newer: applies; refresh 0 and no new field: no TTL
        (win, "w", False, ("10:3", "count", "3", "sum", "6.0")),
        # older: refused, counted
        (old, "w", True, ("9:5", "count", "5")),
        # equal: applies; refresh 1: the TTLs
        (again, "w", True, ("10:1", "count", "1", "sum", "4.5")),
        # removal: the key goes, its version stays as a tombstone, with the TTL
        (gone, "w", False, ("20:inf",)),
        # per metric: t older (refused), h newer, p new (a new field: the TTLs, refresh 0)
        (
            dev,
            "f",
            False,
            (
                *("4:9", "t", "0.5", "t:ts", "4"),
                *("6:0", "h", "41.0", "h:ts", "6"),
                *("1:0", "p", "1.0", "p:ts", "1"),
            ),
        ),
        # per member: d1 equal (applies), d2 older (refused); no new member: no TTL
        (top, "z", False, ("10:2", "1.25", "d1", "9:9", "0.0", "d2")),
        # every member older: refused, counted
        (lost, "z", True, ("10:1", "0.0", "d1")),
        # a new key: created, so the TTLs although refresh is 0
        (new, "w", False, ("1:1", "count", "1")),
    )
    assert refused == 2
    # A window's version is its hash's v, a metric's its {metric}:v; a member's is in {KEY}:v,
    # and so is a removed window's (its tombstone).
    assert contents(client, p) == {
        win: {"count": "3", "sum": "6.0", "v": "10:3"},
        old: {"count": "1", "v": "10:1"},
        again: {"count": "1", "sum": "4.5", "v": "10:1"},
        v(gone): {"v": "20:inf"},
        dev: {
            **{"t": "1.5", "t:ts": "5", "t:v": "5:1"},
            **{"h": "41.0", "h:ts": "6", "h:v": "6:0"},
            **{"p": "1.0", "p:ts": "1", "p:v": "1:0"},
        },
        top: {"d1": 1.25, "d2": 2.5},
        v(top): {"d1": "10:2", "d2": "10:1"},
        lost: {"d1": 7.0},
        v(lost): {"d1": "10:2"},
        new: {"count": "1", "v": "1:1"},
    }
    # TTLs: none again where no write set one; 30 s where the call set them (a top key's
    # versions kept their 60 s unless the call set them too).
    rounded = {key: -1 if t == -1 else 30 if t <= 30 else 60 for key, t in ttls(client, p).items()}
    assert rounded == {
        win: -1,
        old: -1,
        again: 30,
        v(gone): 30,
        dev: 30,
        top: -1,
        v(top): 60,
        lost: -1,
        v(lost): 60,
        new: 30,
    }
    # The tombstone refuses an older write of the removed window; the call goes on after it.
    refused = fence(
        client,
        60,
        (gone, "w", True, ("20:7", "count", "7")),
        (old, "w", True, ("11:1", "count", "9")),
    )
    assert refused == 1
    assert client.exists(gone) == 0
    assert client.hgetall(v(gone)) == {b"v": b"20:inf"}
    assert client.hgetall(old) == {b"count": b"9", b"v": b"11:1"}
    # A newer window than the tombstone's applies.
    assert fence(client, 60, (gone, "w", True, ("30:1", "count", "1"))) == 0
    assert client.hgetall(gone) == {b"count": b"1", b"v": b"30:1"}


def test_a_key_with_more_members_than_lua_unpacks_at_once_is_written_whole(
    redis_url: str, topic_prefix: str
) -> None:
    """A top key of 10,000 members (a board of 10,000 devices) in one write: more values than
    Lua's unpack holds at once (8,000), so the script reads and writes them in parts."""
    client = redis.Redis.from_url(redis_url)
    client.script_load(FENCE_SCRIPT)
    top = f"{topic_prefix}:top"
    members = [(f"10:{i % 7}", f"{i}.5", f"dev-{i}") for i in range(10_000)]
    assert fence(client, 60, (top, "z", True, tuple(a for m in members for a in m))) == 0
    assert client.zcard(top) == 10_000
    assert client.zscore(top, "dev-9999") == 9999.5
    assert client.hlen(f"{{{top}}}:v") == 10_000
    # Older versions for the even devices, newer for the odd ones: only the odd ones apply.
    again = [(f"9:{i}" if i % 2 == 0 else f"11:{i}", "-1.0", f"dev-{i}") for i in range(10_000)]
    assert fence(client, 60, (top, "z", True, tuple(a for m in again for a in m))) == 0
    scores = dict(cast(list[tuple[bytes, float]], client.zrange(top, 0, -1, withscores=True)))
    assert scores == {f"dev-{i}".encode(): (-1.0 if i % 2 else i + 0.5) for i in range(10_000)}
    assert client.hget(f"{{{top}}}:v", "dev-3") == b"11:3"
    assert client.hget(f"{{{top}}}:v", "dev-4") == b"10:4"
    assert 0 < client.ttl(top) <= 60


def test_a_malformed_call_is_an_error_reply_and_writes_nothing(
    redis_url: str, topic_prefix: str
) -> None:
    p = topic_prefix
    client = redis.Redis.from_url(redis_url)
    client.script_load(FENCE_SCRIPT)
    good: KeyWrite = (f"{p}:a", "w", True, ("1:1", "count", "1"))
    for bad, error in (
        ((f"{p}:b", "x", True, ("1:1",)), "unknown kind of write: x"),
        ((f"{p}:b", "w", True, ()), "bad argument count"),  # no version
        ((f"{p}:b", "w", True, ("1:1", "count")), "bad argument count"),
        ((f"{p}:b", "f", True, ("1:1", "t", "1.0", "t:ts")), "bad argument count"),
        ((f"{p}:b", "z", True, ("1:1", "1.0")), "bad argument count"),
    ):
        with pytest.raises(redis.ResponseError, match=error):
            fence(client, 60, good, bad)
        assert all_keys(client, p) == set()
    # Arguments that do not add up to the keys' writes, and an odd number of keys.
    with pytest.raises(redis.ResponseError, match="7 arguments, not 9"):
        client.evalsha(FENCE_SHA, 2, f"{p}:a", f"{{{p}:a}}:v", 60, "w", 1, 5, "1:1", "n", "1")
    with pytest.raises(redis.ResponseError, match="an odd number of keys"):
        client.evalsha(FENCE_SHA, 1, f"{p}:a", 60, "w", 1, 1, "1:1")
    assert all_keys(client, p) == set()
    assert fence(client, 60, good) == 0  # the good write alone applies
    assert client.hgetall(f"{p}:a") == {b"count": b"1", b"v": b"1:1"}


version_parts = st.one_of(
    st.integers(-(10**20), 10**20),
    st.integers(-(10**16), 10**16),
    st.integers(-(10**30), 10**30),
    st.sampled_from([0, 1, -1, 10**15 - 1, 10**15, -(10**15), 2**53 + 1, 2**63 - 1]),
    st.just(math.inf),
)


def _related(old: list[Any], other: list[Any], how: int) -> tuple[list[Any], list[Any]]:
    """(stored, written) versions: equal, one a prefix of the other, differing in the last
    part only (by one, where a Lua number would not tell them apart), or any two."""
    if how == 0:
        return old, list(old)
    if how in (4, 5) and old[-1] != math.inf:
        return old, [*old[:-1], old[-1] + (1 if how == 4 else -1)]
    if how == 1:
        return old, old + other[:1]
    if how == 2:
        return old + other[:1], old
    if how == 3:
        return old, old[:-1] + other[:1]
    return old, other


versions_of_parts = st.lists(version_parts, min_size=1, max_size=3)
two_versions = st.builds(_related, versions_of_parts, versions_of_parts, st.integers(0, 7))


EDGE_VERSIONS: list[tuple[list[Any], list[Any]]] = [
    ([n], [n + delta])
    for n in (10**15 - 1, 10**15, 2**53, 10**19 + 7, -(10**19) - 7, 10**29)
    for delta in (-1, 1)
] + [
    ([1_795_315_440_000_000, 9], [1_795_315_440_000_001, 0]),  # a later event time
    ([1_795_315_440_000_000, 9], [1_795_315_439_999_999, 10]),  # an earlier one
    ([10**20, 5], [10**20]),  # a prefix: below
    ([10**20], [10**20, math.inf]),
    ([math.inf], [10**40]),
    ([-5], [-(10**16)]),
    ([-(10**16)], [5]),
]
"""Pairs of (stored, written) versions that every run of the test below writes: neighbours
where a Lua number (a double) would not tell them apart, prefixes, signs, ``inf``."""


def version_text(parts: list[int | float]) -> str:
    return ":".join("inf" if part == math.inf else str(part) for part in parts)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pairs=st.lists(two_versions, min_size=1, max_size=200))
def test_versions_are_compared_as_integers_at_any_size(
    redis_url: str, topic_prefix: str, pairs: list[tuple[list[Any], list[Any]]]
) -> None:
    """A write applies exactly when its version is not below the stored one, in Python's
    order of tuples of integers (a shorter version that is a prefix of the other below it,
    ``inf`` above every integer): at any size and sign, beyond the 15 digits a Lua number
    holds exactly."""
    p = f"{topic_prefix}:{next(_differential_runs)}"
    client = redis.Redis.from_url(redis_url)
    client.script_load(FENCE_SCRIPT)
    pairs = [*pairs, *EDGE_VERSIONS]
    keys = [f"{p}:{n}" for n in range(len(pairs))]
    stored = [
        (key, "w", False, (version_text(old), "count", "1"))
        for key, (old, _) in zip(keys, pairs, strict=True)
    ]
    assert fence(client, 60, *stored) == 0
    late = [
        (key, "w", False, (version_text(new), "count", "2"))
        for key, (_, new) in zip(keys, pairs, strict=True)
    ]
    refused = fence(client, 60, *late)
    expected = [tuple(new) < tuple(old) for old, new in pairs]
    assert refused == sum(expected)
    counts = [client.hget(key, "count") for key in keys]
    assert counts == [b"1" if was_refused else b"2" for was_refused in expected]


PER_KEY_SCRIPT = (Path(__file__).parents[2] / "helpers" / "fence_per_key.lua").read_text()
"""The fence script as it was with one call per key, every version in ``{KEY}:v``: the
reference."""

KINDS = {"w1": "w", "w2": "w", "f1": "f", "z1": "z"}
"""The keys of the differential test, each always written with one kind."""

versions_ = st.builds(
    lambda start, count: f"{start}:{count}",
    st.integers(0, 2),
    st.integers(0, 3).map(str) | st.just("inf"),
)
scores = st.sampled_from(["1.5", "-2.0", "0.25"])


def key_write(name: str) -> st.SearchStrategy[tuple[str, str, bool, tuple[str, ...]]]:
    kind = KINDS[name]
    if kind == "w":  # its hash, or (no field) its removal
        fields = st.lists(st.tuples(st.sampled_from(["count", "sum"]), scores), max_size=2)
        args = st.tuples(versions_, fields).map(
            lambda x: (x[0], *(item for pair in x[1] for item in pair))
        )
    elif kind == "f":
        metric = st.tuples(versions_, st.sampled_from(["t", "h"]), scores, st.integers(0, 9))
        args = st.lists(metric, min_size=1, max_size=3).map(
            lambda ms: tuple(a for v, m, x, t in ms for a in (v, m, x, f"{m}:ts", str(t)))
        )
    else:
        member = st.tuples(versions_, scores, st.sampled_from(["d1", "d2"]))
        args = st.lists(member, min_size=1, max_size=3).map(
            lambda ms: tuple(a for member in ms for a in member)
        )
    return st.tuples(st.just(name), st.just(kind), st.booleans(), args)


calls_ = st.lists(
    st.tuples(
        st.lists(st.sampled_from(sorted(KINDS)).flatmap(key_write), min_size=1, max_size=5),
        st.sets(st.sampled_from(sorted(KINDS))),  # keys whose TTLs are removed before it
    ),
    min_size=1,
    max_size=6,
)
_differential_runs = iter(range(1_000_000))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(calls=calls_)
def test_one_batched_call_does_what_a_call_per_key_did(
    redis_url: str, topic_prefix: str, calls: list[tuple[list[KeyWrite], set[str]]]
) -> None:
    """Any calls of writes of every kind (removals, equal, older and newer versions, refresh
    or not) applied per key by the old script (every version in ``{KEY}:v``) and batched by
    the new one (a window's and a metric's in the key): the same contents, the same versions,
    the same keys with a TTL, the same writes refused."""
    run = next(_differential_runs)
    one, batched = f"{topic_prefix}:{run}:one", f"{topic_prefix}:{run}:all"
    client = redis.Redis.from_url(redis_url)
    client.script_load(FENCE_SCRIPT)
    per_key_sha = client.script_load(PER_KEY_SCRIPT)
    for writes, persisted in calls:
        for name in persisted:
            client.persist(f"{one}:{name}")
            client.persist(f"{batched}:{name}")
        refused_one = 0
        for name, kind, refresh, args in writes:
            key = f"{one}:{name}"
            applied = client.evalsha(
                per_key_sha, 2, key, f"{{{key}}}:v", kind, 60, int(refresh), *args
            )
            refused_one += applied == 0
        renamed = [(f"{batched}:{name}", *rest) for name, *rest in writes]
        assert fence(client, 60, *renamed) == refused_one  # type: ignore[arg-type]
        assert fenced_state(client, one, False) == fenced_state(client, batched, True)


def fenced_state(
    client: redis.Redis, prefix: str, in_keys: bool
) -> dict[str, tuple[object, dict[str, str], bool | None, bool | None]]:
    """Per key of the differential test under ``prefix``: what it holds without versions,
    its versions (a window's under ``v``, a metric's, a member's), whether it has a TTL, and
    whether the versions kept beside it (a tombstone, a top key's) have one (None: no such
    key). ``in_keys``: a window's and a metric's versions are in the key itself (the layout
    of FENCE_SCRIPT), else all in ``{KEY}:v`` (the per-key reference)."""
    stored, with_ttl = contents(client, prefix), ttls(client, prefix)
    out: dict[str, tuple[object, dict[str, str], bool | None, bool | None]] = {}
    for name, kind in KINDS.items():
        key, beside = f"{prefix}:{name}", f"{{{prefix}:{name}}}:v"
        data = cast(dict[str, object], stored.get(key, {}))
        kept = cast(dict[str, str], stored.get(beside, {}))
        if in_keys and kind != "z":
            named = {k for k in data if (k == "v" if kind == "w" else k.endswith(":v"))}
            versions = {k.removesuffix(":v"): str(data[k]) for k in named}
            data = {k: v for k, v in data.items() if k not in named}
            if kind == "w" and key not in stored:
                versions = kept  # the key is absent: its tombstone, if any
        else:
            versions = kept
        key_ttl = with_ttl[key] > 0 if key in with_ttl else None
        # The TTL of versions kept beside the key where the key cannot hold them: a top
        # key's, an absent window's tombstone.
        if kind == "z" or (kind == "w" and key not in stored):
            beside_ttl = with_ttl[beside] > 0 if beside in with_ttl else None
        else:
            beside_ttl = None
        out[name] = (data, versions, key_ttl, beside_ttl)
    return out


def test_read_window_reads_the_one_field_and_nothing_else() -> None:
    stored = {b"window": b"2 3.0 1.0 2.0 1.5 1.0 2.0 1.0 1.0 1.0 20 30", b"v": b"20000000:2"}
    assert read_window(stored) == {
        "count": "2",
        "sum": "3.0",
        "min": "1.0",
        "max": "2.0",
        "mean": "1.5",
        "first": "1.0",
        "last": "2.0",
        "p50": "1.0",
        "p95": "1.0",
        "p99": "1.0",
        "start": "20",
        "end": "30",
    }
    assert read_window({}) is None  # no key
    assert read_window({b"v": b"20000000:inf"}) is None  # a removal's tombstone hash
    with pytest.raises(ValueError, match="holds 11 values, not 12"):
        read_window({"window": "2 3.0 1.0 2.0 1.5 1.0 2.0 1.0 1.0 1.0 20"})
