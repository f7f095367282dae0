"""What Redis spends on the Redis sink's fenced writes: ``python -m bench.redis_writes``.

Starts a fresh redis-server (``pulse.local.stack.start_redis``) and writes the same ``--writes``
keys of one kind (``--kind``) in each of these ways:

* ``plain HSET``: one HSET per key, unfenced: the baseline;
* ``1 key/call``: one call of the fence script per key;
* ``K keys/call`` for each K of ``--keys-per-call``: the writes packed K keys per call.

The kinds: ``open`` (the default), open windows' hashes (keys
``bench:open:10s:dev-00042:temperature``: a window's one field, its ten aggregates, start and
end joined by spaces); ``device``, devices' hashes (keys ``bench:device:dev-00042``, per metric of
``--metrics`` its value and ``{metric}:ts``), as the latest values are written.

The fenced writes are made by the sink's own builders (``open_view_writes`` or
``latest_writes``, then ``fenced_calls``), every one newer than what Redis holds (each round
raises the windows' counts, or the values' times and offsets), so each applies as a flush's
would; by default after the first write of each key, so without the TTLs (``--refresh``: with
them, as closed and sliding windows are written).
Every way is sent as the sink sends it: pipelined, one round trip per 20,000 keys. A warm-up
writes every key once first.

Per round, every way runs once, in a new random order. For each way it reports the median
over the rounds of Redis's own CPU per key written (``INFO cpu``: used_cpu_user +
used_cpu_sys, before and after), that cost over plain HSET's and over one key per call's,
and how long Redis is busy per command (``INFO commandstats``: usec_per_call of HSET or
EVALSHA, after ``CONFIG RESETSTAT``), during which every other client waits.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.outputs import Latest, OpenView
from pulse.local.stack import start_redis
from pulse.sinks._resp import RespPipeline, pack
from pulse.sinks._text import seconds_text
from pulse.sinks.redis import FENCE_SCRIPT, WINDOW_FIELD, fenced_calls
from tables import _native
from tables.aggregators import Summary

S = 1_000_000
KEYS_PER_ROUND_TRIP = 20_000
"""Keys per pipelined round trip, as the sink sends them."""
TTL = 3600
PREFIX = "bench:open:"
DEVICE_PREFIX = "bench:device:"
METRICS = ("temperature", "humidity", "pressure", "voltage", "current", "power", "co2", "rpm")
START_US = 1_795_315_440 * S


@dataclass(frozen=True)
class Way:
    label: str
    keys_per_call: int
    """0: plain HSET."""


def views(writes: int, count: int) -> list[OpenView]:
    """The open windows of ``writes`` series, ``count`` readings each (the version)."""
    state = Summary.initialize(START_US, 21.5, None)
    for n in range(1, 7):
        Summary.add(state, START_US + n * 700_000, 21.5 + n * 0.37, None)
    text = (str(count), *Summary.text(state)[1:])
    return [
        OpenView(f"dev-{n:05d}", "temperature", "10s", START_US, START_US + 10 * S, state, text)
        for n in range(writes)
    ]


def latest(writes: int, metrics: int, count: int) -> list[Latest]:
    """The latest values of ``metrics`` metrics of ``writes`` devices, at time ``count`` s
    after the windows' start and offset ``count`` (the version)."""
    t_us = START_US + count * S
    return [
        Latest(f"dev-{n:05d}", metric, t_us, 21.5 + count * 0.25, count)
        for n in range(writes)
        for metric in METRICS[:metrics]
    ]


def batch_of(args: argparse.Namespace, count: int) -> list[OpenView] | list[Latest]:
    """What a round writes: ``--writes`` keys of ``--kind``, at version ``count``."""
    if args.kind == "device":
        return latest(args.writes, args.metrics, count)
    return views(args.writes, count)


def commands(
    way: Way,
    batch: list[OpenView] | list[Latest],
    ttl_set: dict[str, Any],
    refresh: bool,
) -> list[bytes]:
    """The commands that write ``batch`` in this way."""
    devices = [entry for entry in batch if isinstance(entry, Latest)]
    if way.keys_per_call:
        if refresh:
            ttl_set.clear()
        now = time.monotonic()
        if devices:
            writes = _native.latest_writes(devices, DEVICE_PREFIX, ttl_set, now, TTL)
        else:
            writes = _native.open_view_writes(batch, PREFIX, ttl_set, now, TTL, WINDOW_FIELD)
        return fenced_calls(writes, TTL, way.keys_per_call)
    out = []
    if devices:
        fields_of: dict[str, list[str]] = {}
        for entry in devices:
            fields_of.setdefault(entry.device, []).extend(
                (entry.metric, repr(entry.value), f"{entry.metric}:ts", seconds_text(entry.t_us))
            )
        return [pack("HSET", f"{DEVICE_PREFIX}{d}", *fields) for d, fields in fields_of.items()]
    for view in batch:
        assert isinstance(view, OpenView) and view.text is not None
        values = (*view.text, seconds_text(view.start_us), seconds_text(view.end_us))
        key = f"{PREFIX}10s:{view.device}:{view.metric}"
        out.append(pack("HSET", key, WINDOW_FIELD, " ".join(values)))
    return out


async def info(redis: RespPipeline, section: str) -> dict[str, str]:
    (text,) = await redis.execute([pack("INFO", section)])
    pairs = (line.split(":", 1) for line in text.decode().splitlines() if ":" in line)
    return dict(pairs)


async def cpu_seconds(redis: RespPipeline) -> float:
    stats = await info(redis, "cpu")
    return float(stats["used_cpu_user"]) + float(stats["used_cpu_sys"])


async def usec_per_call(redis: RespPipeline, command: str) -> float:
    stats = await info(redis, "commandstats")
    fields = dict(item.split("=") for item in stats[f"cmdstat_{command}"].split(","))
    return float(fields["usec_per_call"])


async def send(redis: RespPipeline, way: Way, packed: list[bytes]) -> int:
    """Writes the commands, a round trip per 20,000 keys; returns the writes refused."""
    per_trip = KEYS_PER_ROUND_TRIP // max(way.keys_per_call, 1)
    refused = 0
    for begin in range(0, len(packed), per_trip):
        replies = await redis.execute(packed[begin : begin + per_trip])
        if way.keys_per_call:
            refused += sum(replies)
    return refused


async def measure(
    args: argparse.Namespace, port: int
) -> tuple[str, dict[Way, list[tuple[float, float]]]]:
    """The Redis version, and per way each round's CPU seconds per key and usec per command."""
    ways = [Way("plain HSET", 0), Way("1 key/call", 1)]
    ways += [Way(f"{k} keys/call", k) for k in args.keys_per_call]
    redis = RespPipeline(f"redis://127.0.0.1:{port}/0", timeout=120)
    await redis.execute([pack("SCRIPT", "LOAD", FENCE_SCRIPT)])
    ttl_set: dict[str, Any] = {}
    version = (await info(redis, "server"))["redis_version"]
    count = 1
    # Warm-up: every key and its versions created, with their TTLs.
    for way in (ways[0], ways[1]):
        await send(redis, way, commands(way, batch_of(args, count), ttl_set, args.refresh))
        count += 1
    results: dict[Way, list[tuple[float, float]]] = {way: [] for way in ways}
    order = random.Random(args.seed)
    for round_number in range(1, args.rounds + 1):
        for way in order.sample(ways, len(ways)):
            packed = commands(way, batch_of(args, count), ttl_set, args.refresh)
            count += 1
            await redis.execute([pack("CONFIG", "RESETSTAT")])
            before = await cpu_seconds(redis)
            refused = await send(redis, way, packed)
            spent = await cpu_seconds(redis) - before
            busy = await usec_per_call(redis, "evalsha" if way.keys_per_call else "hset")
            if refused:
                raise RuntimeError(f"{way.label}: {refused} writes refused, none should be")
            results[way].append((spent / args.writes, busy))
        print(f"round {round_number}/{args.rounds} done", file=sys.stderr)
    await redis.close()
    return version, results


def table(
    version: str, results: dict[Way, list[tuple[float, float]]], args: argparse.Namespace
) -> str:
    median = statistics.median
    per_key = {way: median([cpu for cpu, _ in runs]) for way, runs in results.items()}
    plain, one = (per_key[way] for way in list(results)[:2])
    what = f"device writes ({args.metrics} metrics)" if args.kind == "device" else "window writes"
    lines = [
        f"Redis {version}: {args.writes:,} {what} per round, "
        f"{'with' if args.refresh else 'without'} the TTLs, median of {args.rounds} rounds",
        "",
        "| way | Redis CPU us/key | x plain HSET | x 1 key/call | Redis busy per command, us |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for way, runs in results.items():
        busy = median([b for _, b in runs])
        lines.append(
            f"| {way.label} | {per_key[way] * 1e6:.2f} | {per_key[way] / plain:.2f} "
            f"| {per_key[way] / one:.2f} | {busy:,.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=20_000, help="keys written per round")
    parser.add_argument(
        "--kind", choices=("open", "device"), default="open", help="the keys written"
    )
    parser.add_argument(
        "--metrics",
        type=int,
        choices=range(1, len(METRICS) + 1),
        default=2,
        help="metrics per device (--kind device)",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--keys-per-call",
        type=lambda text: [int(k) for k in text.split(",")],
        default=[10, 50, 100, 200, 500],
        help="comma-separated keys per call of the fence script",
    )
    parser.add_argument("--refresh", action="store_true", help="every write sets the TTLs")
    parser.add_argument("--seed", type=int, default=4, help="of the order of the ways")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pulse-redis-writes-") as work_dir:
        server = start_redis(Path(work_dir), stop_with_parent=True)
        try:
            version, results = asyncio.run(measure(args, server.port))
        finally:
            server.stop()
    print(table(version, results, args))


if __name__ == "__main__":
    main()
