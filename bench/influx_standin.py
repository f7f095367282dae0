"""What the InfluxDB stand-in costs per point: ``python -m bench.influx_standin``.

The benchmark's Pulse run spends more of the two cores in VictoriaMetrics than in Pulse
itself (bench/README.md). This measures that cost apart from Pulse: it closes the run's
windows with Pulse's own pure steps (the dataset through ``process_records``, every window
closed), starts a fresh VictoriaMetrics as the benchmark does, and writes the windows twice
through Pulse's own Influx sink (one flush each), reading the server's CPU after each round
once it has settled:

* round 1: every series is new, as in the benchmark run;
* round 2: the same series, each point moved ``--shift-seconds`` later (the same day, so no
  new per-day index entries): the cost of a deployment whose devices wrote before.

VictoriaMetrics makes one series of each field of a point (``temperature_mean{device,
window}``): the benchmark's 10 fields per window make 10 series per (device, metric,
window), where InfluxDB indexes one series per measurement and tag set. The report gives
the CPU-seconds of each round, per point and points per CPU-second.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from agents.ingest import process_records
from bench.dataset import DatasetSpec, consumer_records
from bench.measure import servers_cpu_seconds
from models.outputs import ClosedWindow
from pulse.local.stack import start_victoria
from pulse.settings import Settings
from pulse.sinks._base import FlushBatch
from pulse.sinks.influx import InfluxSink, line_protocol_lines
from tables.partition_state import PartitionState
from tables.windows import parse_windows

DEFAULTS = Settings.from_env({})
SETTLED_AFTER = 2.0
"""Seconds without a CPU tick of the server after which its ingestion counts as done
(VictoriaMetrics flushes and merges in the background after it answers a write)."""


def closed_windows(spec: DatasetSpec, windows: str) -> list[ClosedWindow]:
    """Every window of the dataset, closed, as the worker's flushes hand them to the sinks."""

    def reject(record: object, reason: str, detail: str) -> None:
        raise RuntimeError(f"the dataset has a rejected reading: {reason}: {detail}")

    specs = parse_windows(windows)
    closed: list[ClosedWindow] = []
    for records in consumer_records(spec, "readings").values():
        state = PartitionState(specs, DEFAULTS.grace_us)
        process_records(state, records, DEFAULTS.max_message_bytes, DEFAULTS.max_future_us, reject)
        state.advance_idle(2**62)
        closed.extend(state.drain().closed)
    return closed


def shifted(closed: Sequence[ClosedWindow], seconds: float) -> list[ClosedWindow]:
    """The same windows (same series, same aggregates) ``seconds`` later."""
    shift_us = round(seconds * 1e6)
    return [
        window._replace(start_us=window.start_us + shift_us, end_us=window.end_us + shift_us)
        for window in closed
    ]


async def write_points(url: str, closed: Sequence[ClosedWindow]) -> None:
    """Write the windows' points through Pulse's own Influx sink, in one flush."""
    sink = InfluxSink(url, DEFAULTS.influx_token, DEFAULTS.influx_org, DEFAULTS.influx_bucket)
    await sink.start()
    try:
        await sink.write(FlushBatch(closed=closed))
    finally:
        await sink.stop()


def settled_cpu(pid: int) -> float:
    """The server's CPU seconds once they stop growing for ``SETTLED_AFTER`` seconds."""
    last = servers_cpu_seconds({"influx": pid})["influx"]
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < SETTLED_AFTER:
        time.sleep(0.25)
        now = servers_cpu_seconds({"influx": pid})["influx"]
        if now != last:
            last, quiet_since = now, time.monotonic()
    return last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=DatasetSpec.readings)
    parser.add_argument("--windows", default="10s,1m")
    parser.add_argument("--shift-seconds", type=float, default=600.0)
    args = parser.parse_args()

    spec = DatasetSpec(readings=args.readings)
    closed = closed_windows(spec, args.windows)
    lines = line_protocol_lines(closed)
    fields = lines[0].split(" ")[1].count("=")
    series = len({line.split(" ")[0] for line in lines}) * fields
    print(f"{len(lines):,} points of {fields} fields: {series:,} VictoriaMetrics series")
    rounds = (("new series", closed), ("existing series", shifted(closed, args.shift_seconds)))
    with tempfile.TemporaryDirectory(prefix="pulse-standin-") as work:
        server = start_victoria(Path(work))
        try:
            assert server.pid is not None
            before = settled_cpu(server.pid)
            for name, windows in rounds:
                started = time.perf_counter()
                asyncio.run(write_points(server.url, windows))
                answered = time.perf_counter() - started
                after = settled_cpu(server.pid)
                cpu, before = after - before, after
                print(
                    f"{name}: {cpu:.2f} CPU-s ({cpu / len(windows) * 1e6:.1f} us per point, "
                    f"{len(windows) / cpu:,.0f} points per CPU-s); writes answered in "
                    f"{answered:.2f} s"
                )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
