"""How fast ``pulse bridge`` moves entries from Redis Streams into Kafka: ``python -m
bench.bridge``.

Starts a broker (tansu by default, ``--broker kafka`` for Apache Kafka) and a redis-server on
free ports (``pulse.local.stack``), appends ``--entries`` readings (the fields form, as
``pulse produce --via redis`` writes them: ``--devices`` devices spread over ``--streams``
streams) while no bridge runs, then:

1. **the bridge**: one :class:`pulse.bridge.Bridge` in this process (one event loop: one
   core at most) moves them all into the readings topic; measured from its start (its
   clients connected) until Kafka has acknowledged the last entry: entries per second, and
   its CPU per entry (this process's CPU time: the bridge and nothing else runs in it), and
   what Redis and the broker spent meanwhile;
2. **bare aiokafka**: the records the bridge wrote, read back (keys, values, headers,
   timestamps), produced again to a fresh topic of as many partitions by one
   ``AIOKafkaProducer`` in per-partition batches of up to 1 MB (``create_batch`` and
   ``send_batch``, ``acks=all``, as the bridge asks): the ceiling of producing those records
   from Python, measured the same way.

Prints both (with the time this process's garbage collector took in each), and the bridge's
rate as a share of the bare one (the goal: at least half, on one core). On a machine of two
or more CPUs this process (the bridge, then the bare producer) runs on the first and the
servers on the others (``--no-pin``: wherever the kernel puts them), so that neither run
shares its core with Redis or the broker. Run it on an idle machine: other work skews both.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pulse.bridge import Bridge, tune_gc
from pulse.local.stack import ServerProcess, start_broker, start_redis
from pulse.producer import SyntheticReadings, entry_fields, stream_of
from pulse.settings import Settings
from pulse.topics import ensure_topics

PREFIX = "bench"


@dataclass
class Measured:
    label: str
    entries: int
    seconds: float
    cpu_seconds: float
    redis_cpu: float = 0.0
    broker_cpu: float = 0.0
    gc: GcTime | None = None

    @property
    def rate(self) -> float:
        return self.entries / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_seconds / self.entries * 1e6

    def line(self) -> str:
        servers = ""
        if self.redis_cpu or self.broker_cpu:
            servers = (
                f"; meanwhile Redis {self.redis_cpu:.2f} CPU s "
                f"({self.redis_cpu / self.entries * 1e6:.1f} us/entry), broker "
                f"{self.broker_cpu:.2f} CPU s"
            )
        collected = ""
        if self.gc is not None:
            collected = f"; its GC {self.gc.seconds:.2f} s in {self.gc.collections} collections"
        return (
            f"{self.label:14s} {self.entries:,} entries in {self.seconds:.2f} s: "
            f"{self.rate:,.0f}/s, {self.cpu_seconds:.2f} CPU s, {self.cpu_us:.1f} us CPU per "
            f"entry{collected}{servers}"
        )


class GcTime:
    """The time this process's cyclic garbage collector took while it was on (``with``), and
    its collections: the share of a run's CPU that the GC's thresholds decide."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._began = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._began
            self.collections += 1

    def __enter__(self) -> GcTime:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu(server: ServerProcess) -> float:
    try:
        with open(f"/proc/{server.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks = 100.0
        return (int(fields[11]) + int(fields[12])) / ticks
    except OSError:
        return 0.0


def pin(servers: list[ServerProcess]) -> str:
    """This process on its first allowed CPU, every thread of the servers on the others;
    what was done, in words."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return "not pinned (one CPU)"
    os.sched_setaffinity(0, {cpus[0]})
    for server in servers:
        for task in Path(f"/proc/{server.pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), set(cpus[1:]))
    return f"this process on CPU {cpus[0]}, the servers on {', '.join(map(str, cpus[1:]))}"


def fill(redis_url: str, entries: int, devices: int, streams: int) -> None:
    client = redis.Redis.from_url(redis_url)
    readings = SyntheticReadings(
        devices=devices, count=entries, start_ts=1_700_000_000.0, step=0.0005
    )
    pipe = client.pipeline(transaction=False)
    for n, (key, value) in enumerate(readings, start=1):
        pipe.xadd(stream_of(PREFIX, key, streams), entry_fields(value))  # type: ignore[arg-type]
        if n % 2000 == 0:
            pipe.execute()
    pipe.execute()
    client.close()


async def run_bridge(
    settings: Settings, entries: int, redis: ServerProcess, broker: ServerProcess
) -> Measured:
    bridge = Bridge(settings)
    await bridge.start()
    began, cpu0 = time.perf_counter(), cpu()
    redis0, broker0 = process_cpu(redis), process_cpu(broker)
    counters = bridge.counters
    with GcTime() as collected:
        while counters.produced + counters.dead_lettered < entries:
            await asyncio.sleep(0.005)
    seconds, cpu_seconds = time.perf_counter() - began, cpu() - cpu0
    measured = Measured(
        "pulse bridge",
        entries,
        seconds,
        cpu_seconds,
        process_cpu(redis) - redis0,
        process_cpu(broker) - broker0,
        collected,
    )
    await bridge.stop()
    assert counters.dead_lettered == 0, "every synthetic reading is valid"
    return measured


async def read_records(bootstrap: str, topic: str) -> dict[int, list[Any]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=32 << 20,
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: dict[int, list[Any]] = {tp.partition: [] for tp in tps}
        done: set[TopicPartition] = set()
        while len(done) < len(tps):
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                out[tp.partition] += records
            for tp in tps:
                highwater = consumer.highwater(tp)
                if highwater is not None and await consumer.position(tp) >= highwater:
                    done.add(tp)
        return out
    finally:
        await consumer.stop()


async def run_bare(
    bootstrap: str,
    records: dict[int, list[Any]],
    topic: str,
    redis: ServerProcess,
    broker: ServerProcess,
) -> Measured:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=1_000_000
    )
    await producer.start()
    await producer.partitions_for(topic)
    count = sum(len(r) for r in records.values())
    began, cpu0 = time.perf_counter(), cpu()
    redis0, broker0 = process_cpu(redis), process_cpu(broker)
    with GcTime() as collected:
        futures = []
        for partition, found in records.items():
            batch = producer.create_batch()
            for record in found:
                if (
                    batch.append(
                        key=record.key,
                        value=record.value,
                        timestamp=record.timestamp,
                        headers=list(record.headers),
                    )
                    is None
                ):
                    batch.close()
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(
                        key=record.key,
                        value=record.value,
                        timestamp=record.timestamp,
                        headers=list(record.headers),
                    )
            batch.close()
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)
    measured = Measured(
        "bare aiokafka",
        count,
        time.perf_counter() - began,
        cpu() - cpu0,
        process_cpu(redis) - redis0,
        process_cpu(broker) - broker0,
        collected,
    )
    await producer.stop()
    return measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=1_000)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--broker", choices=("tansu", "kafka"), default="tansu")
    parser.add_argument(
        "--no-pin", action="store_true", help="leave the processes where the kernel puts them"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pulse-bench-bridge-") as tmp:
        root = Path(tmp)
        broker = start_broker(root, kind=args.broker, stop_with_parent=True)
        redis_server = start_redis(root, stop_with_parent=True)
        try:
            pinned = "not pinned" if args.no_pin else pin([broker, redis_server])
            settings = Settings.from_env(
                {
                    "PULSE_BROKER": broker.url,
                    "PULSE_REDIS_URL": redis_server.url,
                    "PULSE_REDIS_PREFIX": PREFIX,
                    "PULSE_PARTITIONS": str(args.partitions),
                }
            )
            bootstrap = settings.bootstrap_servers
            asyncio.run(ensure_topics(settings))
            began = time.perf_counter()
            fill(redis_server.url, args.entries, args.devices, args.streams)
            print(
                f"appended {args.entries:,} entries ({args.devices:,} devices, {args.streams} "
                f"streams) in {time.perf_counter() - began:.1f} s; broker {args.broker}, "
                f"{args.partitions} partitions; {pinned}",
                flush=True,
            )
            tune_gc()  # as `pulse bridge` does
            client = redis.Redis.from_url(redis_server.url)
            client.config_resetstat()
            bridge = asyncio.run(run_bridge(settings, args.entries, redis_server, broker))
            print(bridge.line(), flush=True)
            stats = client.info("commandstats")
            costs = sorted(
                ((v["usec"], k.removeprefix("cmdstat_"), v["calls"]) for k, v in stats.items()),
                reverse=True,
            )
            print(
                "  Redis's time by command: "
                + ", ".join(
                    f"{name} {usec / 1e6:.2f} s ({usec / args.entries:.2f} us/entry, {calls} calls)"
                    for usec, name, calls in costs[:6]
                )
            )
            client.close()
            records = asyncio.run(read_records(bootstrap, settings.topic_readings))
            bare_topic = "bench-bare"
            asyncio.run(_create(settings, bare_topic, args.partitions))
            bare = asyncio.run(run_bare(bootstrap, records, bare_topic, redis_server, broker))
            print(bare.line(), flush=True)
            print(
                f"pulse bridge / bare aiokafka: {bridge.rate / bare.rate:.2f} of the rate, "
                f"{bridge.cpu_us / bare.cpu_us:.2f}x the CPU per entry (goal: at least 0.5 "
                "of the rate)"
            )
        finally:
            redis_server.stop()
            broker.stop()
    return 0


async def _create(settings: Settings, topic: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    await asyncio.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
