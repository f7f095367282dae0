"""What the InfluxDB stand-in costs per point: ``python -m bench.influx_standin``.

The benchmark's Pulse run spends more of the two cores in VictoriaMetrics than in Pulse
itself (bench/README.md). This measures that cost apart from Pulse: it builds the run's
line protocol with Pulse's own pure steps (the dataset through ``process_records``, every
window closed, ``line_protocol_lines``), starts a fresh VictoriaMetrics as the benchmark
does, and writes the points twice, the way Pulse's sink does (5,000 lines per request, four
requests in flight), reading the server's CPU after each round once it has settled:

* round 1: every series is new, as in the benchmark run;
* round 2: the same series, each point moved ``--shift-seconds`` later (the same day, so no
  new per-day index entries): the cost of a deployment whose devices wrote before.

VictoriaMetrics makes one series of each field of a point (``temperature_mean{device,
window}``): the benchmark's 10 fields per window make 10 series per (device, metric,
window), where InfluxDB indexes one series per measurement and tag set. The report gives
the CPU-seconds of each round and what each leaves of two cores for the rest of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from aiokafka.structs import ConsumerRecord

from agents.readings import process_records
from bench.dataset import DatasetSpec, generate, partition_for
from bench.measure import servers_cpu_seconds
from pulse.settings import Settings
from pulse.sinks.influx import CONCURRENT_REQUESTS, LINES_PER_REQUEST, line_protocol_lines
from pulse.stack import start_victoria
from tables.partition_state import ClosedWindow, PartitionState
from tables.windows import parse_windows

DEFAULTS = Settings.from_env({})
SETTLED_AFTER = 2.0
"""Seconds without a CPU tick of the server after which its ingestion counts as done
(VictoriaMetrics flushes and merges in the background after it answers a write)."""


def closed_windows(spec: DatasetSpec, windows: str) -> list[ClosedWindow]:
    """Every window of the dataset, closed, as the worker's flushes hand them to the sinks."""
    by_partition: dict[int, list[ConsumerRecord[bytes, bytes]]] = defaultdict(list)
    for key, value, ts_ms in generate(spec):
        records = by_partition[partition_for(key, spec.partitions)]
        records.append(
            ConsumerRecord("readings", 0, len(records), ts_ms, 0, key, value, None, 0, 0, ())
        )

    def reject(record: object, reason: str, detail: str) -> None:
        raise RuntimeError(f"the dataset has a rejected reading: {reason}: {detail}")

    closed: list[ClosedWindow] = []
    for records in by_partition.values():
        state = PartitionState(parse_windows(windows), DEFAULTS.grace_us)
        process_records(state, records, DEFAULTS.max_message_bytes, reject)
        state.advance_idle(2**62)
        closed.extend(state.drain().closed)
    return closed


def shifted(lines: Sequence[str], seconds: float) -> list[str]:
    """The lines with their millisecond timestamps (the last field) ``seconds`` later."""
    shift_ms = round(seconds * 1000)
    out = []
    for line in lines:
        head, _, ts = line.rpartition(" ")
        out.append(f"{head} {int(ts) + shift_ms}")
    return out


async def write_all(url: str, lines: Sequence[str]) -> None:
    """POST ``lines`` to ``/api/v2/write`` as the Influx sink does: fixed-size requests,
    ``CONCURRENT_REQUESTS`` in flight. Any refusal is an error (nothing may be dropped)."""
    slots = asyncio.Semaphore(CONCURRENT_REQUESTS)
    async with aiohttp.ClientSession() as session:

        async def post(begin: int) -> None:
            async with slots:
                body = "\n".join(lines[begin : begin + LINES_PER_REQUEST])
                async with session.post(
                    f"{url}/api/v2/write", params={"precision": "ms"}, data=body
                ) as answer:
                    if answer.status != 204:
                        raise RuntimeError(f"write refused: {answer.status} {await answer.text()}")

        async with asyncio.TaskGroup() as requests:
            for begin in range(0, len(lines), LINES_PER_REQUEST):
                requests.create_task(post(begin))


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
    lines = line_protocol_lines(closed_windows(spec, args.windows))
    fields = lines[0].split(" ")[1].count("=")
    series = len({line.split(" ")[0] for line in lines}) * fields
    print(f"{len(lines):,} points of {fields} fields: {series:,} VictoriaMetrics series")
    with tempfile.TemporaryDirectory(prefix="pulse-standin-") as work:
        server = start_victoria(Path(work))
        try:
            assert server.pid is not None
            before = settled_cpu(server.pid)
            for name, body in (("new series", lines), ("existing series", None)):
                if body is None:
                    body = shifted(lines, args.shift_seconds)
                started = time.perf_counter()
                asyncio.run(write_all(server.url, body))
                answered = time.perf_counter() - started
                after = settled_cpu(server.pid)
                cpu = after - before
                before = after
                print(
                    f"{name}: {cpu:.2f} CPU-s ({cpu / len(body) * 1e6:.1f} us per point, "
                    f"{len(body) / cpu:,.0f} points per CPU-s); writes answered in "
                    f"{answered:.2f} s"
                )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
