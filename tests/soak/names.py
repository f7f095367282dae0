"""Soak run, outside the suite: a flood of new device names, and the worker's memory.

    scripts/soak-names                          # the issue's run: 1,000 new names/s, 10 minutes
    scripts/soak-names --seconds 120            # a short look at the trend
    scripts/soak-names --pure                   # the pure steps alone, 10 minutes in about one

A real worker on the local stack (tansu, Redis, VictoriaMetrics, started here on free ports)
gets readings from ``--rate`` new device names per second, each name's one and only reading,
stamped with the wall clock, for ``--seconds``. Whatever the worker keeps per device (window
state, latest values, the sinks' caches, the validated names) must be let go once the device
is idle, or its memory grows with every name. The worker's RSS is sampled every ``--every``
seconds; the run prints the samples, then the growth over the second half (the mean of the
last samples over the mean of those around the middle) and the least-squares slope of the
second half, and exits 1 if the growth reaches ``--limit`` percent (10). It also prints how
far the worker was behind the producer (a worker that falls behind buffers, which is not a
leak) and Redis's memory (its keys live ``PULSE_STATE_TTL``, a day by default: that growth is
Redis's, by design).

``--pure`` runs the same flood through the worker's pure steps in this process instead, with
no servers and no I/O, as fast as they go: each quarter second of event time, every
partition's records through ``process_records`` and a drain, and the flush's outputs built
by the sinks' own code (the Redis writes with the sink's TTL bookkeeping, the aggregates'
partitions with the Kafka sink's cache, the line protocol, the changelog parts), the sinks'
clocks following event time. It samples this process's RSS and the sizes of what is kept per
device, so a ten-minute flood takes about a minute and shows which of them grows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import orjson
import redis
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from agents.ingest import process_records
from models import reading
from pulse.app import tune_gc
from pulse.changelog import encode_parts
from pulse.settings import Settings
from pulse.sinks import redis as redis_sink
from pulse.sinks._base import FlushBatch
from pulse.sinks.influx import record_line
from pulse.sinks.kafka import KafkaSink
from pulse.sinks.redis import RedisSink
from tables.partition_state import PartitionState
from tests.helpers import kafka
from tests.helpers.worker import WorkerProcess
from tests.servers import SessionServers

PARTITIONS = 4
STOP_TIMEOUT = 120.0
"""Seconds the worker gets to stop: a worker behind the flood first writes its backlog."""


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def flood(
    broker: str, topic: str, rate: int, seconds: float, sent: list[int], stop: asyncio.Event
) -> None:
    """``rate`` readings a second, each from a new device name, for ``seconds``."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap(broker), linger_ms=20, acks=1)
    await producer.start()
    try:
        began = time.monotonic()
        number = 0
        while not stop.is_set() and time.monotonic() - began < seconds:
            due = int((time.monotonic() - began) * rate)
            now = time.time()
            while number < due:
                name = f"soak-{number:010d}"
                doc = {"device": name, "metric": "temperature", "value": number % 97 / 4, "ts": now}
                await producer.send(topic, orjson.dumps(doc), key=name.encode())
                number += 1
            sent[0] = number
            await asyncio.sleep(0.01)
        await producer.flush()
    finally:
        await producer.stop()


def rejected(record: Any, reason: str, detail: str) -> None:
    raise AssertionError(f"the flood's reading at {record.offset} was rejected: {detail}")


def pure_run(seconds: float, rate: int, every: float) -> list[tuple[float, float]]:
    """The flood through the worker's pure steps (see the module doc); (event seconds, RSS)."""

    class Partitions:
        async def partitions_for(self, topic: str) -> set[int]:
            return set(range(PARTITIONS))

    s = Settings.from_env({})
    clock = [0.0]
    redis_sink.time.monotonic = lambda: clock[0]
    sink = RedisSink("redis://127.0.0.1:1", "p", s.state_ttl)
    kafka_sink = KafkaSink(cast(Any, Partitions()), "aggregates", "dlq")
    states = [
        PartitionState(s.windows, s.grace_us, max_tag_values=s.max_tag_values)
        for _ in range(PARTITIONS)
    ]
    tune_gc()  # as the worker's process does
    loop = asyncio.new_event_loop()
    start = time.time() - seconds  # event times in the past, as if caught up
    samples = []
    number = 0
    columns = ("windows", "latest", "names", "TTLs", "parts")
    print(f"{'s':>6} {'RSS MiB':>8} " + " ".join(f"{c:>8}" for c in columns))
    for tick in range(int(seconds * 4)):
        fetches: list[list[ConsumerRecord[bytes, bytes]]] = [[] for _ in states]
        for _ in range(rate // 4):
            ts = start + tick / 4 + len(fetches[0]) / rate
            name = f"soak-{number:010d}"
            doc = {"device": name, "metric": "temperature", "value": number % 97 / 4, "ts": ts}
            value = orjson.dumps(doc)
            partition = number % PARTITIONS
            offset = states[partition].next_offset + len(fetches[partition])
            stamp, key = round(ts * 1000), name.encode()
            fetches[partition].append(
                ConsumerRecord(
                    "readings", partition, offset, stamp, 0, key, value, None, 0, len(value), ()
                )
            )
            number += 1
        drained = []
        for state, records in zip(states, fetches, strict=True):
            process_records(state, records, s.max_message_bytes, s.max_future_us, rejected)
            drained.append(state.drain(spread_us=s.close_spread_us))
        clock[0] = tick / 4
        batch = FlushBatch.of(drained, [])
        sink._commands(batch)
        parts = loop.run_until_complete(kafka_sink._aggregate_parts(batch))
        for aggregates in parts:  # the InfluxDB writer's step: each record's line
            for _, value in aggregates.records:
                record_line(value)
        for part in drained:
            encode_parts(part.delta, "soak", 0)
        if tick % int(every * 4) == int(every * 4) - 1:
            at, rss = (tick + 1) / 4, rss_mib(os.getpid())
            samples.append((at, rss))
            sizes = (
                sum(len(state.windows) for state in states),
                sum(len(state.latest) for state in states),
                len(reading.VALID_NAMES),
                len(sink._device_ttl_set) + len(sink._open_ttl_set),
                len(kafka_sink._partition_of) + len(kafka_sink._partition_of_before),
            )
            print(f"{at:6.0f} {rss:8.1f} " + " ".join(f"{n:8,}" for n in sizes), flush=True)
    loop.close()
    return samples


def behind(worker: WorkerProcess, sent: int) -> int | None:
    health = worker.health()
    if not health:
        return None
    return sent - sum(int(o) for o in health.get("next_offsets", {}).values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--rate", type=int, default=1000, help="new device names per second")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--limit", type=float, default=10.0, help="RSS growth (%%) that fails")
    parser.add_argument("--pure", action="store_true", help="the pure steps alone, no servers")
    args = parser.parse_args()
    if args.pure:
        return summary(pure_run(args.seconds, args.rate, args.every), args)

    root = Path(tempfile.mkdtemp(prefix="soak-names-"))
    servers = SessionServers(root / "servers")
    worker = None
    try:
        broker = servers.get("broker").url
        redis_url, influx_url = servers.get("redis").url, servers.get("influx").url
        prefix = "names"
        env = {
            "PULSE_BROKER": broker,
            "PULSE_REDIS_URL": redis_url,
            "PULSE_INFLUX_URL": influx_url,
            "PULSE_APP_ID": f"{prefix}app",
            "PULSE_TOPIC_READINGS": f"{prefix}-readings",
            "PULSE_TOPIC_AGGREGATES": f"{prefix}-aggregates",
            "PULSE_TOPIC_DLQ": f"{prefix}-dlq",
            "PULSE_REDIS_PREFIX": prefix,
            "PULSE_PARTITIONS": str(PARTITIONS),
            "PULSE_SESSION_TIMEOUT": "2",
        }
        worker = WorkerProcess(env, root / "worker").start()
        worker.wait_ready()
        assert worker.process is not None
        pid = worker.process.pid
        client = redis.Redis.from_url(redis_url)
        print(f"worker {pid}: {args.rate:,} new names/s for {args.seconds:.0f} s (in {root})")
        print(f"{'s':>6} {'RSS MiB':>8} {'sent':>9} {'behind':>8} {'Redis MiB':>9}", flush=True)
        samples: list[tuple[float, float]] = []

        async def run() -> None:
            sent = [0]
            stop = asyncio.Event()
            producing = asyncio.create_task(
                flood(broker, env["PULSE_TOPIC_READINGS"], args.rate, args.seconds, sent, stop)
            )
            began = time.monotonic()
            try:
                while not producing.done():
                    await asyncio.sleep(args.every)
                    worker.check_alive()
                    at = time.monotonic() - began
                    rss = rss_mib(pid)
                    samples.append((at, rss))
                    lag = await asyncio.to_thread(behind, worker, sent[0])
                    memory = await asyncio.to_thread(client.info, "memory")
                    used = int(memory["used_memory"]) / 2**20
                    print(f"{at:6.0f} {rss:8.1f} {sent[0]:9,} {lag!s:>8} {used:9.1f}", flush=True)
                await producing
            finally:
                stop.set()

        asyncio.run(run())
        return summary(samples, args)
    finally:
        if worker is not None:
            try:
                worker.stop(timeout=STOP_TIMEOUT)
            except AssertionError:  # killed: it was still writing a backlog
                print(f"the worker took more than {STOP_TIMEOUT:.0f} s to stop; killed")
        servers.close()


def summary(samples: list[tuple[float, float]], args: argparse.Namespace) -> int:
    """Prints the RSS over the second half; 1 if it grew by --limit percent or more."""
    half = [(t, r) for t, r in samples if t >= args.seconds / 2]
    window = max(len(samples) // 10, 1)
    nearest = sorted(samples, key=lambda sample: abs(sample[0] - args.seconds / 2))
    middle = [r for _, r in nearest[:window]]
    end = [r for _, r in samples[-window:]]
    growth = (statistics.mean(end) / statistics.mean(middle) - 1) * 100
    slope = statistics.linear_regression([t for t, _ in half], [r for _, r in half]).slope * 60
    print(
        f"RSS: {samples[0][1]:.1f} MiB at {samples[0][0]:.0f} s, {max(r for _, r in samples):.1f} "
        f"peak; second half: {statistics.mean(middle):.1f} -> {statistics.mean(end):.1f} MiB "
        f"({growth:+.1f} %), slope {slope:+.2f} MiB/min"
    )
    return 1 if growth >= args.limit else 0


if __name__ == "__main__":
    sys.exit(main())
