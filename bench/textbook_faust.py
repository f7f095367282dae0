"""Textbook Faust: the pipeline as Faust's documentation would have you write it.

A faust-streaming agent handles one event at a time: it updates two Faust ``.tumbling()``
tables (10 s and 1 m, windows placed by the event's ``ts`` with ``.relative_to_field``), sends
one Redis HSET per event, and writes one influxdb-client ``Point`` per closed window from the
tables' ``on_window_close``.

Faust expires windows by wall clock, not event time: the dataset's event times lie in the
past, so every window is already stale and closes at the next table cleanup (every
``table_cleanup_interval``, set to 1 s instead of the default 30 s so the run does not idle
waiting for it). Windows can therefore close while readings for them are still arriving:
that is Faust's semantics, not an exact result, and the reason this is a speed baseline only.

Measured in-process: the clock starts at the first event the agent receives and stops at the
later of the last event handled and the last window written to InfluxDB, once every reading
has been handled and the tables hold no open window.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import faust
import redis.asyncio as aioredis
from influxdb_client import Point, WritePrecision
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

from bench.measure import RunResult, Stopwatch, write_result

# Faust closes windows by wall clock; a window with no new close for this long after the last
# reading means the tables are done even if a window was never reported.
QUIET_SECONDS = 10.0


class Reading(faust.Record, serializer="json"):
    device: str
    metric: str
    value: float
    ts: float


def build_app(args: argparse.Namespace) -> faust.App:
    app = faust.App(
        args.app_id,
        broker=f"kafka://{args.bootstrap}",
        store="memory://",
        datadir=args.state_dir,
        topic_partitions=args.partitions,
        topic_replication_factor=1,
        # The local broker holds every JoinGroup for half the session timeout.
        broker_session_timeout=2.0,
        broker_heartbeat_interval=0.5,
        table_cleanup_interval=1.0,
        web_enabled=False,
    )
    readings_topic = app.topic(args.topic, value_type=Reading)
    stopwatch = Stopwatch()
    counters = {"handled": 0, "windows": 0}
    clocks = {"last_event_at": 0.0, "last_close_at": 0.0}
    clients: dict[str, Any] = {}

    def influx_write_api() -> Any:
        if "influx" not in clients:
            clients["influx"] = InfluxDBClientAsync(url=args.influx_url, token="bench", org="bench")
        return clients["influx"].write_api()

    def closer(label: str) -> Any:
        async def on_window_close(key: Any, value: dict[str, float]) -> None:
            series, (_start, end) = key
            device, metric = series.split(":", 1)
            point = (
                Point("reading")
                .tag("device", device).tag("metric", metric).tag("window", label)
                .field("count", value["count"]).field("sum", value["sum"])
                .field("min", value["min"]).field("max", value["max"])
                .field("mean", value["sum"] / value["count"])
                .field("first", value["first"]).field("last", value["last"])
                .time(int(end * 1000), WritePrecision.MS)
            )  # fmt: skip
            await influx_write_api().write(bucket="bench", record=point)
            counters["windows"] += 1
            clocks["last_close_at"] = time.perf_counter()

        return on_window_close

    tables = {
        label: app.Table(f"agg-{label}", default=dict, partitions=args.partitions,
                  on_window_close=closer(label))
        .tumbling(size, expires=size)
        .relative_to_field(Reading.ts)  # type: ignore[arg-type]  # the class attribute is a FieldDescriptor
        for label, size in (("10s", 10.0), ("1m", 60.0))
    }  # fmt: skip

    @app.agent(readings_topic)
    async def handle(readings: faust.StreamT[Reading]) -> None:
        redis = aioredis.Redis.from_url(args.redis_url)
        async for reading in readings:
            stopwatch.start()
            series = f"{reading.device}:{reading.metric}"
            fields: dict[Any, Any] = {"value": reading.value, "ts": reading.ts}
            for label, table in tables.items():
                current = table[series].value()
                if current:
                    current = {
                        "count": current["count"] + 1,
                        "sum": current["sum"] + reading.value,
                        "min": min(current["min"], reading.value),
                        "max": max(current["max"], reading.value),
                        "first": current["first"],
                        "last": reading.value,
                    }
                else:
                    current = {
                        "count": 1,
                        "sum": reading.value,
                        "min": reading.value,
                        "max": reading.value,
                        "first": reading.value,
                        "last": reading.value,
                    }
                table[series] = current
                fields[f"count_{label}"] = current["count"]
            await redis.hset(f"textbook:{series}", mapping=fields)
            counters["handled"] += 1
            clocks["last_event_at"] = time.perf_counter()

    @app.timer(0.2)
    async def finish_when_done() -> None:
        if counters["handled"] < args.expected:
            return
        open_windows = sum(len(table.table.data) for table in tables.values())
        last_activity = max(clocks["last_event_at"], clocks["last_close_at"])
        quiet = time.perf_counter() - last_activity > QUIET_SECONDS
        if open_windows and not quiet:
            return
        stopwatch.stop(at=last_activity)
        note = f"Faust wall-clock windows; {args.expected:,}-reading subset"
        if open_windows:
            note += f"; {open_windows} windows never closed"
        # Faust skips on_window_close for a window starting at or before the latest window it
        # already closed on any partition, so it reports far fewer windows than it drops.
        note += f"; Faust reported {counters['windows']:,} closed windows"
        write_result(args.result_file, RunResult(
            system="textbook",
            readings=counters["handled"],
            seconds=round(stopwatch.seconds, 4),
            cpu_seconds=round(stopwatch.cpu_seconds, 3),
            servers_cpu_seconds=stopwatch.servers_cpu_seconds,
            windows_emitted=counters["windows"],
            note=note,
        ))  # fmt: skip
        # The measurement is taken; Faust's graceful shutdown is slow and not measured.
        sys.stdout.flush()
        os._exit(0)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--app-id", default=f"bench-textbook-{int(time.time())}")
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--expected", type=int, required=True, help="readings in the topic")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--influx-url", required=True)
    parser.add_argument("--state-dir", required=True, help="Faust's data directory")
    parser.add_argument("--result-file", required=True)
    args = parser.parse_args()
    app = build_app(args)
    # Faust's worker parses sys.argv itself: hand it only the worker's own arguments.
    sys.argv = [sys.argv[0], "worker", "--loglevel=warn", "--without-web"]
    app.main()


if __name__ == "__main__":
    main()
