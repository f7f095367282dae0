"""The Redis sink: its commands, its connection (pipelined writes, errors, auth, waiting out an
outage), and its fenced writes on a real Redis (a late write never regresses what is stored)."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import cast

import hiredis
import pytest
import redis

from models.outputs import ClosedWindow, Latest, OpenView
from pulse.local.stack import start_redis
from pulse.sinks import redis as redis_sink
from pulse.sinks._base import FlushBatch
from pulse.sinks._resp import RedisReplyError, RespPipeline, pack
from pulse.sinks._text import seconds_text
from pulse.sinks.redis import FENCE_SHA, WINDOW_FIELDS, RedisSink, window_hset
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
        head = ("EVALSHA", FENCE_SHA, "2", key, f"{{{key}}}:v", "w", "60", "1", "10000000:3")
        assert window_hset(key, text, 1_000, 10_000_000, "10000000:3", 60) == (
            hiredis.pack_command((*head, *fields))  # type: ignore[arg-type]  # a 1-tuple stub
        )


def fenced(key: str, kind: str, refresh: bool, *args: object, ttl: int = 60) -> bytes:
    """A fenced write (the EVALSHA of the fence script) as hiredis packs it."""
    return pack("EVALSHA", FENCE_SHA, 2, key, f"{{{key}}}:v", kind, ttl, int(refresh), *args)


def hset_of(
    key: str, text: tuple[str, ...], start_us: int, end_us: int, refresh: bool = True
) -> bytes:
    """A window's fenced hash write, versioned (start, count)."""
    values = (*text, seconds_text(start_us), seconds_text(end_us))
    fields = zip(WINDOW_FIELDS, values, strict=True)
    version = f"{start_us}:{text[0]}"
    return fenced(key, "w", refresh, version, *(item for pair in fields for item in pair))


def test_open_view_commands() -> None:
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
        made = _native.open_view_commands(
            views, sink.keys.open_prefix, sink._open_ttl_set, now, 60, WINDOW_FIELDS, FENCE_SHA
        )
        assert made == expected
    assert sink._open_ttl_set == {one: (10_000_000, 132.5), two: (11_500_000, 132.5)}


def test_latest_commands() -> None:
    def write(device: str, refresh: bool, *metrics: object) -> bytes:
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
        made = _native.latest_commands(
            latest, sink.keys.device_prefix, sink._device_ttl_set, now, 60, FENCE_SHA
        )
        assert made == expected
    assert sink._device_ttl_set == {"dev-1": 100.0, "dév-2": 132.5, "d3": 132.5}


def closed(
    device: str, metric: str, label: str, start: int, values: list[float], size: int = 10 * S
) -> ClosedWindow:
    state = Summary.initialize(start, values[0], None)
    for value in values[1:]:
        Summary.add(state, start + 1, value, None)
    return ClosedWindow(device, metric, label, start, start + size, state, Summary.text(state))


def test_closed_window_commands() -> None:
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
        batch, sink.keys.closed_prefix, sink.keys.top_prefix, 60, WINDOW_FIELDS, FENCE_SHA
    )
    expected = []
    for window in (kept, other, humidity, overflowed):
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
            assert stored == {b"temp": b"21.5", b"temp:ts": b"1700000000.5"}
            assert client.hgetall("{p:device:dev-1}:v") == {b"temp": b"1700000000500000:8"}
            # The restarted server lost every key: they are back with their TTLs, although
            # the sink had already set those TTLs on the first server.
            assert all_keys(client, "p") == {
                "p:device:dev-1",
                "{p:device:dev-1}:v",
                "p:open:10s:dev-1:temp",
                "{p:open:10s:dev-1:temp}:v",
            }
            assert_every_key_has_a_ttl(client, "p", 60)
            await sink.write(late)  # still fenced: refused
            assert client.hgetall("p:device:dev-1") == stored
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

    older = FlushBatch(open_views=[view(1.0, 0)], latest=[Latest("dev-1", "temp", 1 * S, 1.0, 1)])
    newer = FlushBatch(
        open_views=[view(2.0, 10 * S)], latest=[Latest("dev-1", "temp", 12 * S, 2.0, 2)]
    )
    sink = RedisSink(redis_url, topic_prefix, 60)
    merged = FlushBatch.merge([older, newer])
    # one write per key: the device hash and the open window
    assert [args_of(c)[3] for c in sink._commands(merged)] == [
        f"{topic_prefix}:device:dev-1".encode(),
        f"{topic_prefix}:open:10s:dev-1:temp".encode(),
    ]
    write(sink, merged)
    client = redis.Redis.from_url(redis_url)
    assert client.hgetall(f"{topic_prefix}:device:dev-1") == {b"temp": b"2.0", b"temp:ts": b"12"}
    opened = client.hgetall(f"{topic_prefix}:open:10s:dev-1:temp")
    assert (opened[b"count"], opened[b"sum"], opened[b"start"]) == (b"1", b"2.0", b"10")


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
        return [args[3] for args in map(args_of, sink._commands(batch)) if args[7] == b"1"]

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


def window_hash(window: ClosedWindow | OpenView) -> dict[str, str]:
    """What a window's hash holds: its aggregates' text, start and end."""
    assert window.text is not None
    values = (*window.text, seconds_text(window.start_us), seconds_text(window.end_us))
    return dict(zip(WINDOW_FIELDS, values, strict=True))


def sliding_of(device: str, metric: str, end: int, values: list[float]) -> OpenView:
    """A sliding:20s view whose latest event time is ``end``."""
    view = view_of(device, metric, "sliding:20s", end - 20 * S, values, 20 * S)
    return view._replace(text=None)  # the sink formats a sliding view itself


def sliding_hash(view: OpenView) -> dict[str, str]:
    assert view.state is not None
    return window_hash(view._replace(text=Summary.text(view.state)))


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
    wanted = {
        f"{p}:closed:10s:d1:t": window_hash(owner.closed[0]),
        f"{{{p}:closed:10s:d1:t}}:v": {"v": "20000000:2"},
        f"{p}:closed:10s:d2:t": window_hash(owner.closed[1]),
        f"{{{p}:closed:10s:d2:t}}:v": {"v": "20000000:1"},
        f"{p}:top:10s:t": {"d1": 3.5, "d2": 9.0},
        f"{{{p}:top:10s:t}}:v": {"d1": "20000000:2", "d2": "20000000:1"},
        f"{p}:open:10s:d1:t": window_hash(owner.open_views[0]),
        f"{{{p}:open:10s:d1:t}}:v": {"v": "30000000:2"},
        f"{p}:device:d1": {"t": "6.0", "t:ts": "31", "h": "50.0", "h:ts": "25"},
        f"{{{p}:device:d1}}:v": {"t": "31000000:40", "h": "25000000:40"},
        f"{p}:sliding:20s:d1:t": sliding_hash(owner.sliding[0]),
        f"{{{p}:sliding:20s:d1:t}}:v": {"v": "31000000:3"},
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
    wanted[f"{p}:closed:10s:d1:t"] = window_hash(equal.closed[0])
    wanted[f"{p}:top:10s:t"] = {"d1": 3.5, "d2": 9.0}
    wanted[f"{p}:open:10s:d1:t"] = window_hash(equal.open_views[0])
    wanted[f"{p}:device:d1"] = {"t": "6.5", "t:ts": "31", "h": "50.0", "h:ts": "25"}
    wanted[f"{p}:sliding:20s:d1:t"] = sliding_hash(equal.sliding[0])
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
            f"{p}:closed:10s:d1:t": window_hash(newer.closed[0]),
            f"{{{p}:closed:10s:d1:t}}:v": {"v": "30000000:1"},
            f"{p}:closed:10s:d2:t": window_hash(newer.closed[1]),
            f"{{{p}:closed:10s:d2:t}}:v": {"v": "20000000:2"},
            f"{p}:top:10s:t": {"d1": 8.0, "d2": 5.0},
            f"{{{p}:top:10s:t}}:v": {"d1": "30000000:1", "d2": "20000000:2"},
            f"{p}:open:10s:d1:t": window_hash(newer.open_views[0]),
            f"{{{p}:open:10s:d1:t}}:v": {"v": "30000000:3"},
            f"{p}:device:d1": {"t": "7.0", "t:ts": "32", "h": "51.0", "h:ts": "25"},
            f"{{{p}:device:d1}}:v": {"t": "32000000:41", "h": "25000000:41"},
            f"{p}:sliding:20s:d1:t": sliding_hash(newer.sliding[0]),
            f"{{{p}:sliding:20s:d1:t}}:v": {"v": "32000000:1"},
        }
    )
    assert contents(client, p) == wanted
    assert_every_key_has_a_ttl(client, p, 60)


def test_a_removed_open_window_cannot_come_back_from_an_older_write(
    redis_url: str, topic_prefix: str
) -> None:
    p = topic_prefix
    client = redis.Redis.from_url(redis_url)
    key, versions = f"{p}:open:10s:d1:t", f"{{{p}:open:10s:d1:t}}:v"
    sink = RedisSink(redis_url, p, 60)
    opened = view_of("d1", "t", "10s", 20 * S, [1.0, 2.0])
    removed = OpenView("d1", "t", "10s", 20 * S, 30 * S, None)  # the window at 20 s closed
    write(sink, FlushBatch(open_views=[opened]), FlushBatch(open_views=[removed]))
    # The removal leaves only its tombstone, (start of the closed window, inf), with the TTL.
    assert contents(client, p) == {versions: {"v": "20000000:inf"}}
    assert 0 < client.ttl(versions) <= 60
    # A zombie's writes of that window, whatever its count, or of an earlier one, or the
    # removal of an earlier window: nothing comes back.
    for late in (
        opened,
        view_of("d1", "t", "10s", 20 * S, [1.0, 2.0, 3.0, 4.0, 5.0]),
        view_of("d1", "t", "10s", 10 * S, [7.0]),
        OpenView("d1", "t", "10s", 10 * S, 20 * S, None),
    ):
        write(sink, FlushBatch(open_views=[late]))
        assert contents(client, p) == {versions: {"v": "20000000:inf"}}, late
    # The series' next window opens: written, with both TTLs.
    following = view_of("d1", "t", "10s", 30 * S, [4.0])
    write(sink, FlushBatch(open_views=[following]))
    assert contents(client, p) == {key: window_hash(following), versions: {"v": "30000000:1"}}
    assert_every_key_has_a_ttl(client, p, 60)


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
        f"{{{p}:closed:10s:d1:t}}:v",
        f"{p}:top:10s:t",
        f"{{{p}:top:10s:t}}:v",
        f"{p}:open:10s:d1:t",
        f"{{{p}:open:10s:d1:t}}:v",
        f"{{{p}:open:1m:d2:t}}:v",
        f"{p}:device:d1",
        f"{{{p}:device:d1}}:v",
        f"{p}:sliding:20s:d1:t",
        f"{{{p}:sliding:20s:d1:t}}:v",
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
        f"{p}:device:d1": {"t": "2.0", "t:ts": "2"},
        f"{{{p}:device:d1}}:v": {"t": "2000000:2"},
    }
