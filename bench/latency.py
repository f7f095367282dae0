"""Freshness: delay from a reading's production to its effect being visible in Redis.

Real ``python -m pulse worker`` processes (unmodified, production defaults except names and
ports; one consumer group) read a fresh topic while this process produces readings at a
steady rate with event time = the wall clock: 10,000 devices x 2 metrics as in the dataset.
The production runs through a warm-up (:class:`WarmUp`) and then ``seconds`` more; the
probes of the warm-up are reported apart.
Every ``probe_every`` seconds one of those readings is a probe: a reading of a probe device
(keyed, partitioned and parsed like any other), one device per partition, taken in turn, whose
value is the probe's number. Its production time is read just before its batch is handed to
the producer (``send_batch``); it is visible once Redis hash ``{prefix}:device:{probe device}``
holds its number or a later one (the worker applies a partition's records in offset order,
and a device's latest value only moves forward in event time). A poller reads the latest
value of every probe device in one pipelined round trip every ``poll_ms`` and takes the time
the answer arrived, so each delay is an upper bound by at most one poll period and one Redis
round trip.

The poll costs the same however many probes are outstanding: asking for each outstanding
probe's own key, as before, made the poll cost more the further the worker fell behind (a
third of this process's CPU in a backlog), on the cores the worker uses.

The producer fills one batch per partition per 50 ms tick, as a producer with
``linger.ms=50`` would (the rate is kept against the clock: a late tick produces the readings
it owes). Why not smaller batches: the local broker's cost of a fetch grows with the number of
batches in the partition (real Kafka finds the offset through an index). With 10 ms ticks it
took 20 % of a core after 10 s and 57 % after 75 s, and the measurement said more about the
broker than about Pulse; with 50 ms ticks, 7-11 % (bench/README.md). Reports p50, p90, p99
and max over the probes, and probes never seen.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import random
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from bench.dataset import create_topic, device_id, partition_for
from bench.measure import cpu_spent, process_cpu_seconds, server_pids, servers_cpu_seconds
from pulse.local.stack import free_port
from pulse.sinks._resp import RespPipeline, pack

TICK_SECONDS = 0.05
"""One batch per partition per tick (see the module doc)."""


@dataclass
class LatencyResult:
    rate: float
    seconds: float
    produced: int
    achieved_rate: float
    probes: int
    seen: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    worst_by_second: list[float | None]
    """The largest delay of the probes produced in each second of the run, in ms."""
    measured_from_epoch: float = 0.0
    """Wall-clock time (Unix seconds) at which the measured part began: with the readings'
    event time equal to their production time, it lines ``worst_by_second`` up with the
    windows' ends."""
    workers: int = 1
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    """CPU seconds each process spent in the measured part: the workers, the servers and this
    process (``runner``): what the two cores were busy with, which the delays depend on."""
    warmup_seconds: float = 0.0
    """Production before the measured part (see WarmUp); its probes are reported apart."""
    warmup_probes: int = 0
    warmup_p99_ms: float | None = None
    warmup_max_ms: float | None = None
    warmup_worst_by_second: list[float | None] = field(default_factory=list)
    note: str = ""


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, round(q * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def started_load(**kwargs: Any) -> tuple[Any, Any]:
    """:func:`produce_and_poll` (``kwargs``) started in a forked process of its own, so that
    producing thousands of readings per second delays nothing the calling process measures;
    returns the process and the queue its :class:`LatencyResult` arrives on."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    process = context.Process(target=_produce_and_poll_into, args=(results, kwargs))
    process.start()
    return process, results


def _produce_and_poll_into(queue: Any, kwargs: dict[str, Any]) -> None:
    queue.put(asyncio.run(produce_and_poll(**kwargs)))


async def produce_and_poll(
    bootstrap: str,
    topic: str,
    partitions: int,
    redis_url: str,
    prefix: str,
    rate: float,
    seconds: float,
    devices: int = 10_000,
    probe_every: float = 0.02,
    poll_ms: float = 2.0,
    drain_seconds: float = 10.0,
    warmup: WarmUp | None = None,
    cpu_pids: dict[str, int] | None = None,
) -> LatencyResult:
    """Produce for ``warmup`` and then ``seconds`` more; the delays of the probes produced
    after the warm-up are the result (those before are reported apart), with the CPU seconds
    each process of ``cpu_pids`` (and this one, ``runner``) spent in the measured part."""
    cpu_pids = cpu_pids or {}
    cpu_before: dict[str, float] | None = None
    cpu_after: dict[str, float] = {}

    def cpu_now() -> dict[str, float]:
        return {**servers_cpu_seconds(cpu_pids), "runner": process_cpu_seconds()}

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    await producer.start()
    rng = random.Random(7)
    produced_at: dict[int, float] = {}
    seen_at: dict[int, float] = {}
    probe_devices = probe_device_names(partitions)
    # Per partition, the probes not seen yet, oldest first.
    outstanding: list[list[int]] = [[] for _ in range(partitions)]
    # The partition of each key, computed once: murmur2 in Python per reading was a tenth
    # of this process's CPU (py-spy), which the worker's two cores share.
    partition_of: dict[bytes, int] = {}
    producing = True
    poll_deadline = float("inf")
    latest_values = LatestValues(redis_url, [f"{prefix}:device:{d}" for d in probe_devices])

    async def poll() -> None:
        while producing or (any(outstanding) and time.perf_counter() < poll_deadline):
            if any(outstanding):
                values = await latest_values.read()
                now = time.perf_counter()
                for partition, value in enumerate(values):
                    waiting = outstanding[partition]
                    while waiting and value is not None and waiting[0] <= value:
                        seen_at[waiting.pop(0)] = now
            await asyncio.sleep(poll_ms / 1000)

    poller = asyncio.ensure_future(poll())
    pending = []
    produced = 0
    probes = 0
    next_probe = 0.0

    async def send(batch: Any, partition: int, numbers: list[int]) -> None:
        batch.close()
        if numbers:
            sent = time.perf_counter()
            for number in numbers:
                produced_at[number] = sent
            outstanding[partition] += numbers
        pending.append(await producer.send_batch(batch, topic, partition=partition))

    try:
        started, started_epoch = time.perf_counter(), time.time()
        warmup_seconds = warmup.seconds_from(started_epoch) if warmup is not None else 0.0
        measured_from = started + warmup_seconds
        end = measured_from + seconds
        tick = started
        while True:
            now = time.perf_counter()
            if cpu_before is None and now >= measured_from:
                cpu_before = cpu_now()
            if now >= end:
                if cpu_before is not None:
                    cpu_after = cpu_now()
                break
            owed = int((now - started) * rate) - produced
            batches: dict[int, Any] = {}
            # The probes in each partition's open batch: their production time is read just
            # before that batch is sent.
            probes_in: dict[int, list[int]] = {}
            due = 0
            while now - started >= next_probe and due < partitions:
                next_probe += probe_every
                due += 1
            next_probe = max(next_probe, now - started)
            for _ in range(owed):
                wall = time.time()
                if due:
                    due -= 1
                    probe_number = probes
                    probes += 1
                    device = probe_devices[probe_number % partitions]
                    metric, value = "temperature", float(probe_number)
                else:
                    probe_number = -1
                    device = device_id(rng.randrange(devices))
                    metric = "temperature" if rng.random() < 0.5 else "humidity"
                    value = round(rng.gauss(30.0, 5.0), 2)
                key = device.encode()
                partition = partition_of.get(key)
                if partition is None:
                    partition = partition_of[key] = partition_for(key, partitions)
                payload = orjson.dumps(
                    {"device": device, "metric": metric, "value": value, "ts": round(wall, 6)}
                )
                batch = batches.get(partition)
                if batch is None:
                    batch = batches[partition] = producer.create_batch()
                if batch.append(key=key, value=payload, timestamp=None) is None:
                    await send(batch, partition, probes_in.pop(partition, []))
                    batch = batches[partition] = producer.create_batch()
                    batch.append(key=key, value=payload, timestamp=None)
                if probe_number >= 0:
                    probes_in.setdefault(partition, []).append(probe_number)
                produced += 1
            # Batches with probes go first.
            for partition in sorted(batches, key=lambda p: p not in probes_in):
                await send(batches[partition], partition, probes_in.get(partition, []))
            if len(pending) > 1000:
                await asyncio.gather(*pending)
                pending = []
            tick += TICK_SECONDS
            await asyncio.sleep(max(0.0, tick - time.perf_counter()))
        elapsed = time.perf_counter() - started
        await asyncio.gather(*pending)
        producing = False
        poll_deadline = time.perf_counter() + drain_seconds
        await poller
    finally:
        producing = False
        poller.cancel()
        await producer.stop()
        await latest_values.close()
    delay_of = {n: (seen_at[n] - produced_at[n]) * 1000 for n in seen_at if n in produced_at}
    measured = {n for n, at in produced_at.items() if at >= measured_from}
    delays = sorted(delay for n, delay in delay_of.items() if n in measured)
    warmup_delays = sorted(delay for n, delay in delay_of.items() if n not in measured)

    def worst_by_second(begin: float, length: float, numbers: set[int]) -> list[float | None]:
        worst: list[float | None] = [None] * (int(length) + 1)
        for n in numbers:
            if n in delay_of:
                second = min(max(int(produced_at[n] - begin), 0), len(worst) - 1)
                worst[second] = max(delay_of[n], worst[second] or 0.0)
        return [_round(delay) for delay in worst]

    measured_seconds = elapsed - warmup_seconds
    return LatencyResult(
        rate=rate,
        seconds=round(measured_seconds, 2),
        produced=produced,
        achieved_rate=round(produced / elapsed, 1),
        probes=len(measured),
        seen=len(delays),
        p50_ms=_round(percentile(delays, 0.50)),
        p90_ms=_round(percentile(delays, 0.90)),
        p99_ms=_round(percentile(delays, 0.99)),
        max_ms=_round(delays[-1] if delays else None),
        worst_by_second=worst_by_second(measured_from, measured_seconds, measured),
        cpu_seconds=cpu_spent(cpu_before, cpu_after) if cpu_before and cpu_after else {},
        measured_from_epoch=round(started_epoch + warmup_seconds, 3),
        warmup_seconds=round(warmup_seconds, 2),
        warmup_probes=len(produced_at) - len(measured),
        warmup_p99_ms=_round(percentile(warmup_delays, 0.99)),
        warmup_max_ms=_round(warmup_delays[-1] if warmup_delays else None),
        warmup_worst_by_second=worst_by_second(started, warmup_seconds, set(produced_at) - measured)
        if warmup_seconds
        else [],
    )


@dataclass(frozen=True)
class WarmUp:
    """Production before the measured part: until every series' windows of every size have
    closed once and their outputs have been written.

    Until then the run measures a system that is starting: the first close of each window
    size makes the InfluxDB stand-in index every series it has not seen (about 2 CPU s for
    20,000 windows of 10 fields, a tenth of that for the same series later; bench/README.md),
    on the cores the worker uses. The warm-up ends ``settle`` seconds after the first end of
    the longest window that is at least ``lead`` seconds after the start (by then every
    series has readings), so the measured part sees each kind of close as a running service
    does: a measured minute includes the joint close of both window sizes.
    """

    longest: float
    """The longest window size, seconds (windows are epoch-aligned)."""
    settle: float
    """Seconds after that end: grace + close spread + time to write the outputs."""
    lead: float = 20.0
    fixed: float | None = None
    """Seconds of warm-up instead, whatever the windows (bench.api: its requests begin when
    the measured part does)."""

    def seconds_from(self, now: float) -> float:
        if self.fixed is not None:
            return self.fixed
        first_end = math.ceil((now + self.lead) / self.longest) * self.longest
        return first_end + self.settle - now


def probe_device_names(partitions: int) -> list[str]:
    """One probe device per partition: ``probe-N`` with the smallest N that hashes there."""
    names: list[str | None] = [None] * partitions
    number = 0
    while None in names:
        name = f"probe-{number:06d}"
        partition = partition_for(name.encode(), partitions)
        if names[partition] is None:
            names[partition] = name
        number += 1
    return [name for name in names if name is not None]


class LatestValues:
    """The ``temperature`` field of some hashes, read in one pipelined round trip.

    The commands are packed once (the poll runs every few milliseconds on the cores the
    measured worker uses), on the Redis sink's own connection class.
    """

    def __init__(self, redis_url: str, keys: list[str]) -> None:
        self.connection = RespPipeline(redis_url)
        self.commands = [pack("HGET", key, "temperature") for key in keys]

    async def read(self) -> list[float | None]:
        """Each hash's value (None: not there yet)."""
        replies = await self.connection.execute(self.commands)
        return [None if reply is None else float(reply) for reply in replies]

    async def close(self) -> None:
        await self.connection.close()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def wait_ready(
    workers: list[tuple[int, subprocess.Popen, Path]], partitions: int, timeout: float = 90.0
) -> None:
    """Until every worker (web port, process, log) is ready and together they own each of the
    ``partitions`` exactly once (a group of several is past its rebalances)."""
    deadline = time.monotonic() + timeout
    owned: list[int] = []
    while time.monotonic() < deadline:
        owned = []
        ready = True
        for port, worker, log_path in workers:
            if worker.poll() is not None:
                raise RuntimeError(f"pulse worker exited with {worker.returncode}; log {log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    health = json.loads(r.read())
            except OSError:
                ready = False
                continue
            ready = ready and bool(health.get("ready"))
            owned += health.get("partitions", [])
        if ready and sorted(owned) == list(range(partitions)):
            return
        time.sleep(0.2)
    raise RuntimeError(
        f"pulse workers not ready after {timeout:.0f} s (partitions owned: {sorted(owned)}); "
        f"logs {[str(log_path) for _, _, log_path in workers]}"
    )


def measure_latency(
    env: dict[str, str],
    bootstrap: str,
    topic: str,
    partitions: int,
    redis_url: str,
    prefix: str,
    work_dir: Path,
    rate: float = 10_000.0,
    seconds: float = 20.0,
    workers: int = 1,
    warmup: WarmUp | None = None,
) -> LatencyResult:
    """Start ``workers`` x ``python -m pulse worker`` with ``env`` (one consumer group) on a
    fresh ``topic``, produce, measure."""
    asyncio.run(create_topic(bootstrap, topic, partitions))
    started: list[tuple[int, subprocess.Popen, Path]] = []
    try:
        for number in range(workers):
            worker_dir = work_dir / f"worker-{number}"
            worker_dir.mkdir(exist_ok=True)
            port = int(env["PULSE_WEB_PORT"]) if number == 0 else free_port()
            log_path = worker_dir / "worker.log"
            with log_path.open("wb") as log:
                worker = subprocess.Popen(
                    [sys.executable, "-m", "pulse", "worker", "-l", "warn"],
                    cwd=worker_dir, env={**env, "PULSE_WEB_PORT": str(port)},
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            started.append((port, worker, log_path))
        wait_ready(started, partitions)
        pids = {f"worker-{n}": worker.pid for n, (_, worker, _) in enumerate(started, 1)}
        result = asyncio.run(
            produce_and_poll(
                bootstrap,
                topic,
                partitions,
                redis_url,
                prefix,
                rate,
                seconds,
                warmup=warmup,
                cpu_pids={**server_pids(), **pids},
            )
        )
    finally:
        for _, worker, _ in started:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for _, worker, _ in started:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    result.workers = workers
    result.note = f"{workers} x python -m pulse worker"
    return result
