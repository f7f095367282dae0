"""How long a registry change takes to be used by a worker under load:
``python -m bench.registry_delay``.

Starts its own stack (``pulse.local.stack``: the broker, ``redis-server``, PostgreSQL with the
registry's schema), registers ``--devices`` devices, a window rule on every series
(``hot``: temperature, 10 s windows, mean above a threshold, ``for`` 2) and an absence rule,
starts one ``python -m pulse worker`` (``PULSE_POSTGRES_URL`` set; InfluxDB writers off, no
InfluxDB) and bench.latency's producer at ``--rate`` readings/s in a process of its own
(real-time event times, the same devices; its probes measure the readings' freshness
meanwhile). After ``--warmup`` seconds, ``--changes`` times: wait a random 0.5-1.5 s (so that
changes fall anywhere between flushes), move ``hot``'s threshold (``RegistryStore.set_rule``:
one version), note the time the commit returned, then scrape the worker's ``/metrics`` every
``--poll`` seconds until every partition's ``pulse_registry_version`` is that version, and
read in that scrape:

* **used**: the latest ``pulse_registry_switched_seconds`` over the partitions (when the
  flush that switched each partition to the version drained it: every record after it is
  judged by the version), minus the commit time: the delay issue 23's goal is about (p99
  under 1 s);
* **loaded**: when the worker's registry cache took the version in (the scrape's time minus
  ``pulse_registry_snapshot_age_seconds``; within the scrape's own few ms), minus the commit
  time: NOTIFY, then the snapshot read from Redis or PostgreSQL.

The metric holds the switch's time, so the poll's period does not count in the delay. Prints
JSON: every change's figures in ms, p50, p99 and max of each, the freshness
(bench.latency.LatencyResult) over the measured part, and the work directory (logs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.dataset import create_topic, device_id
from bench.latency import LatencyResult, WarmUp, percentile, started_load, wait_ready
from bench.measure import metrics_text
from models.alerts import AbsenceRule, AlertRule, Device
from pulse.local.stack import (
    BROKERS,
    ServerProcess,
    free_port,
    start_broker,
    start_postgres,
    start_redis,
)
from pulse.registry import migrate
from pulse.registry.store import RegistryStore
from pulse.settings import Settings

PARTITIONS = 4
THRESHOLD = 36.0
"""``hot``'s first threshold; the producer's values are Gaussian around 30 (sd 5)."""


@dataclass
class Change:
    version: int
    commit_ms: float
    """The change's transaction, from its call to its commit's answer."""
    loaded_ms: float | None
    used_ms: float
    spread_ms: float
    """Between the first and the last partition's switch."""


@dataclass
class DelayResult:
    changes: list[Change] = field(default_factory=list)
    used_p50_ms: float | None = None
    used_p99_ms: float | None = None
    used_max_ms: float | None = None
    loaded_p50_ms: float | None = None
    loaded_p99_ms: float | None = None
    loaded_max_ms: float | None = None
    freshness: LatencyResult | None = None
    note: str = ""


def scrape(port: int) -> tuple[float, dict[str, dict[str, float]]]:
    """The worker's ``/metrics``: the scrape's time (the middle of the request) and, per
    metric name, its samples by their ``partition`` label ('' without one)."""
    began = time.time()
    text = metrics_text(f"http://127.0.0.1:{port}")
    at = (began + time.time()) / 2
    samples: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[sample.labels.get("partition", "")] = sample.value
    return at, samples


def rule(threshold: float) -> AlertRule:
    return AlertRule("hot", "temperature", "10s", "mean", ">", threshold, threshold - 2, 2)


async def register(store: RegistryStore, devices: int) -> None:
    """The devices (each its own change, a few at a time), then the rules."""
    names = [device_id(n) for n in range(devices)]
    for begin in range(0, len(names), 4):
        await asyncio.gather(*(store.add_device(Device(n)) for n in names[begin : begin + 4]))
    await store.add_rule(rule(THRESHOLD))
    await store.add_absence_rule(AbsenceRule("quiet", "humidity", 60_000_000))


async def change_and_wait(
    store: RegistryStore, port: int, threshold: float, poll: float, timeout: float = 30.0
) -> Change:
    """One change, and the worker's use of it (see the module doc)."""
    began = time.time()
    version = await store.set_rule(rule(threshold))
    committed = time.time()
    deadline = time.monotonic() + timeout
    while True:
        at, samples = await asyncio.to_thread(scrape, port)
        versions = samples.get("pulse_registry_version", {})
        if len(versions) == PARTITIONS and min(versions.values()) >= version:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"version {version} not used after {timeout} s: {versions}")
        await asyncio.sleep(poll)
    if max(versions.values()) != version:
        raise RuntimeError(f"a later version than {version} in use: {versions}")
    switched = samples["pulse_registry_switched_seconds"].values()
    loaded = None
    if samples.get("pulse_registry_cache_version", {}).get("") == version:
        age = samples["pulse_registry_snapshot_age_seconds"][""]
        loaded = round((at - age - committed) * 1000, 1)
    return Change(
        version=version,
        commit_ms=round((committed - began) * 1000, 1),
        loaded_ms=loaded,
        used_ms=round((max(switched) - committed) * 1000, 1),
        spread_ms=round((max(switched) - min(switched)) * 1000, 1),
    )


async def measure(args: argparse.Namespace, store: RegistryStore, port: int) -> list[Change]:
    rng = random.Random(args.seed)
    changes = []
    for number in range(args.changes):
        await asyncio.sleep(rng.uniform(0.5, 1.5))
        threshold = THRESHOLD + (0.5 if number % 2 == 0 else 0.0)
        changes.append(await change_and_wait(store, port, threshold, args.poll))
        print(f"change {number + 1}/{args.changes}: {changes[-1]}", file=sys.stderr)
    return changes


def run(args: argparse.Namespace) -> DelayResult:
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="pulse-bench-registry-"))
    servers: list[ServerProcess] = []
    worker: subprocess.Popen | None = None
    app_id = f"bench-registry-{time.strftime('%Y%m%d%H%M%S')}"
    try:
        servers.append(start_broker(work_dir / "stack", kind=args.broker))
        servers.append(start_redis(work_dir / "stack"))
        servers.append(start_postgres(work_dir / "stack"))
        broker, redis, postgres = servers
        bootstrap = f"127.0.0.1:{broker.port}"
        topic = f"{app_id}-readings"
        port = free_port()
        env = {
            **os.environ,
            "PULSE_BROKER": broker.url,
            "PULSE_REDIS_URL": redis.url,
            "PULSE_POSTGRES_URL": postgres.url,
            "PULSE_INFLUX_WRITER": "off",
            "PULSE_STATS_INTERVAL": "0",
            "PULSE_APP_ID": app_id,
            "PULSE_WINDOWS": "10s,1m",
            "PULSE_GRACE": "5",
            "PULSE_TOPIC_READINGS": topic,
            "PULSE_TOPIC_AGGREGATES": f"{app_id}-aggregates",
            "PULSE_TOPIC_DLQ": f"{app_id}-dlq",
            "PULSE_TOPIC_ALERTS": f"{app_id}-alerts",
            "PULSE_TOPIC_OUTPUT_DLQ": f"{app_id}-output-dlq",
            "PULSE_REDIS_PREFIX": app_id,
            "PULSE_PARTITIONS": str(PARTITIONS),
            "PULSE_WEB_PORT": str(port),
        }
        settings = Settings.from_env({"PULSE_POSTGRES_URL": postgres.url})
        migrate.upgrade(settings)

        async def setup() -> None:
            store = RegistryStore(settings)
            await store.open()
            try:
                await register(store, args.devices)
            finally:
                await store.close()

        began = time.monotonic()
        asyncio.run(setup())
        print(f"registered in {time.monotonic() - began:.1f} s", file=sys.stderr)
        asyncio.run(create_topic(bootstrap, topic, PARTITIONS))
        log_path = work_dir / "worker.log"
        with log_path.open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "pulse", "worker", "-l", "info"],
                cwd=work_dir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_ready([(port, worker, log_path)], PARTITIONS)

        # The warm-up, the changes (at most 1.5 s apart plus the delay each) and a margin.
        seconds = args.changes * 2.5 + 5.0
        producer, results = started_load(
            bootstrap=bootstrap,
            topic=topic,
            partitions=PARTITIONS,
            redis_url=redis.url,
            prefix=app_id,
            rate=args.rate,
            seconds=seconds,
            devices=args.devices,
            warmup=WarmUp(longest=10, settle=0.0, fixed=args.warmup),
        )
        time.sleep(args.warmup)

        async def changes() -> list[Change]:
            store = RegistryStore(settings)
            await store.open()
            try:
                return await measure(args, store, port)
            finally:
                await store.close()

        result = DelayResult(changes=asyncio.run(changes()))
        used = sorted(c.used_ms for c in result.changes)
        loaded = sorted(c.loaded_ms for c in result.changes if c.loaded_ms is not None)
        result.used_p50_ms = percentile(used, 0.50)
        result.used_p99_ms = percentile(used, 0.99)
        result.used_max_ms = used[-1]
        result.loaded_p50_ms = percentile(loaded, 0.50)
        result.loaded_p99_ms = percentile(loaded, 0.99)
        result.loaded_max_ms = loaded[-1] if loaded else None
        result.freshness = results.get(timeout=seconds + 60)
        producer.join(30)
        result.note = (
            f"{args.broker}, 1 worker, {PARTITIONS} partitions, {args.devices} devices "
            f"registered, {args.rate:.0f} readings/s; logs in {work_dir}"
        )
        return result
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        for server in servers:
            server.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.registry_delay", description=__doc__)
    parser.add_argument("--changes", type=int, default=30, help="registry changes to time")
    parser.add_argument("--rate", type=float, default=3_000.0, help="readings per second")
    parser.add_argument("--devices", type=int, default=1_000, help="devices, all registered")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds before the changes")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between scrapes")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--broker", choices=sorted(BROKERS), default="kafka")
    parser.add_argument("--work-dir", help="where the servers and logs go (default: a temp dir)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    result = run(parse_args(argv))
    print(json.dumps(asdict(result), indent=2))


if __name__ == "__main__":
    main()
