"""Freshness: delay from a reading's production to its effect being visible in Redis.

A real ``python -m pulse worker`` (unmodified, production defaults except names and ports)
reads a fresh topic while this process produces readings at a steady rate (default 10,000/s
for 20 s) with event time = the wall clock: 10,000 devices x 2 metrics as in the dataset.
Every ``--probe-every`` seconds one of those readings is a probe: a reading of its own device
``probe-NNNNNN`` (keyed, partitioned and parsed like any other). Its production time is read
just before its batch is handed to the producer (``send_batch``); it is visible when Redis
hash ``{prefix}:device:probe-NNNNNN`` holds its ``temperature:ts``. A poller asks Redis for
all outstanding probes in one pipeline every ``--poll-ms`` and takes the time the answer
arrived, so each delay is an upper bound by at most one poll period and one Redis round trip.

The producer fills one batch per partition per 10 ms tick (the rate is kept against the
clock: a late tick produces the readings it owes), so producing costs little CPU beside the
worker. Reports p50, p90, p99 and max over the probes, and probes never seen.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from bench.dataset import create_topic, device_id, partition_for

TICK_SECONDS = 0.01


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
    note: str = ""


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, round(q * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


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
) -> LatencyResult:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    client = aioredis.Redis.from_url(redis_url)
    await producer.start()
    rng = random.Random(7)
    produced_at: dict[int, float] = {}
    seen_at: dict[int, float] = {}
    outstanding: dict[int, str] = {}  # probe number -> Redis key
    # The partition of each key, computed once: murmur2 in Python per reading was a tenth
    # of this process's CPU (py-spy), which the worker's two cores share.
    partition_of: dict[bytes, int] = {}
    producing = True

    async def poll() -> None:
        while producing or (outstanding and time.perf_counter() < poll_deadline):
            if outstanding:
                numbers = list(outstanding)
                pipe = client.pipeline(transaction=False)
                for number in numbers:
                    pipe.hexists(outstanding[number], "temperature:ts")
                answers = await pipe.execute()
                now = time.perf_counter()
                for number, present in zip(numbers, answers, strict=True):
                    if present:
                        seen_at[number] = now
                        del outstanding[number]
            await asyncio.sleep(poll_ms / 1000)

    poll_deadline = float("inf")
    poller = asyncio.ensure_future(poll())
    pending = []
    produced = 0
    probes = 0
    next_probe = 0.0
    try:
        started = time.perf_counter()
        end = started + seconds
        tick = started
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            owed = int((now - started) * rate) - produced
            batches: dict[int, Any] = {}
            probe_partition: int | None = None
            probe_number = -1
            for _ in range(owed):
                wall = time.time()
                if probe_number < 0 and now - started >= next_probe:
                    next_probe = max(next_probe + probe_every, now - started)
                    probe_number = probes
                    probes += 1
                    device = f"probe-{probe_number:06d}"
                    metric, value = "temperature", 20.0
                else:
                    device = device_id(rng.randrange(devices))
                    metric = "temperature" if rng.random() < 0.5 else "humidity"
                    value = round(rng.gauss(30.0, 5.0), 2)
                key = device.encode()
                partition = partition_of.get(key)
                if partition is None:
                    partition = partition_of[key] = partition_for(key, partitions)
                if device.startswith("probe-"):
                    probe_partition = partition
                payload = orjson.dumps(
                    {"device": device, "metric": metric, "value": value, "ts": round(wall, 6)}
                )
                batch = batches.get(partition)
                if batch is None:
                    batch = batches[partition] = producer.create_batch()
                if batch.append(key=key, value=payload, timestamp=None) is None:
                    batch.close()
                    pending.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = batches[partition] = producer.create_batch()
                    batch.append(key=key, value=payload, timestamp=None)
                produced += 1
            # The probe's batch goes first; its production time is taken just before.
            order = sorted(batches, key=lambda p: p != probe_partition)
            for partition in order:
                batch = batches[partition]
                batch.close()
                if partition == probe_partition:
                    produced_at[probe_number] = time.perf_counter()
                    outstanding[probe_number] = f"{prefix}:device:probe-{probe_number:06d}"
                pending.append(await producer.send_batch(batch, topic, partition=partition))
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
        await client.aclose()
    delay_of = {n: (seen_at[n] - produced_at[n]) * 1000 for n in seen_at if n in produced_at}
    delays = sorted(delay_of.values())
    worst: list[float | None] = [None] * (int(elapsed) + 1)
    for n, delay in delay_of.items():
        second = min(int(produced_at[n] - started), len(worst) - 1)
        worst[second] = max(delay, worst[second] or 0.0)
    return LatencyResult(
        rate=rate,
        seconds=round(elapsed, 2),
        produced=produced,
        achieved_rate=round(produced / elapsed, 1),
        probes=len(produced_at),
        seen=len(delays),
        p50_ms=_round(percentile(delays, 0.50)),
        p90_ms=_round(percentile(delays, 0.90)),
        p99_ms=_round(percentile(delays, 0.99)),
        max_ms=_round(delays[-1] if delays else None),
        worst_by_second=[_round(delay) for delay in worst],
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def wait_ready(port: int, worker: subprocess.Popen, log_path: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"pulse worker exited with {worker.returncode}; log {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if json.loads(answer.read()).get("ready"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"pulse worker not ready after {timeout:.0f} s; log {log_path}")


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
) -> LatencyResult:
    """Start ``python -m pulse worker`` with ``env`` on a fresh ``topic``, produce, measure."""
    asyncio.run(create_topic(bootstrap, topic, partitions))
    log_path = work_dir / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "pulse", "worker", "-l", "warn"],
            cwd=work_dir, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_ready(int(env["PULSE_WEB_PORT"]), worker, log_path)
        result = asyncio.run(
            produce_and_poll(bootstrap, topic, partitions, redis_url, prefix, rate, seconds)
        )
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    result.note = "python -m pulse worker"
    return result
