"""Soak run, outside the suite: minutes-long outages of InfluxDB and of Redis, with figures.

    scripts/soak                                  # the issue's run: two 3-minute outages
    scripts/soak --outage 45 --seconds 30         # a short look
    scripts/soak --broker kafka                   # on Apache Kafka instead of tansu

A real worker on the local stack (the broker, redis-server and VictoriaMetrics, started here
on free ports) gets ``--rate`` readings a second from ``--devices`` devices x 2 metrics,
stamped with the wall clock, so windows close as time passes. After ``--seconds`` of normal
running, VictoriaMetrics (the InfluxDB stand-in) is stopped with SIGTERM for ``--outage``
seconds and started again on the same port and data directory; after ``--seconds`` more,
Redis is frozen (SIGSTOP) for a third of ``--outage``, then killed, and started again empty
on the same port once ``--outage`` seconds have passed; then ``--seconds`` more. The suite
covers the same for seconds (tests/integration/test_influx_outage.py, test_redis_outage.py).

Measured per phase: Redis freshness (one probe device per partition sends its reading number
every ``--probe-every`` seconds; a poller reads the probes' ``{prefix}:device:{device}``
hashes in one round trip, so each delay is production to visibility, plus at most a poll),
the newest window end in the ``aggregates`` topic against the wall clock and its records per
second, the worker's RSS and ``/health`` sink states; and how long after each return until
InfluxDB holds every window the topic held then, and until every device's latest values in
Redis are at least those produced by then.

At the end production stops, idle close ends every window, and every output is compared with
the independent reference (tests/reference.py) computed from the records as the broker stored
them: every window in the ``aggregates`` topic and in InfluxDB, Redis's last closed windows,
top sets and latest values, and no dead letter. The soak keeps the readings as compact arrays
(a few dozen bytes each) and computes the reference a chunk of event time at a time: the
windows are tumbling and a partition's readings are stamped in offset order, so no reading is
late and each chunk (a multiple of every window size) holds whole windows. Prints a summary
with every figure and each goal; exits 1 if one was missed.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import faulthandler
import math
import os
import signal
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pulse.local.stack import ServerProcess, free_port, start_broker, start_redis, start_victoria
from pulse.settings import Settings
from tests.helpers import kafka
from tests.helpers.worker import WorkerProcess
from tests.integration.test_pipeline import FIELDS, STATE_TTL, assert_redis
from tests.reference import (
    QUANTILE_ACCURACY,
    Expected,
    Record,
    Valid,
    assert_window_fields,
    compute,
)

PARTITIONS = 4
METRICS = ("temperature", "humidity")
TICK_SECONDS = 0.05
"""One batch per partition per tick, as a producer with ``linger.ms=50`` would send them."""
FRESHNESS_GOAL_S = 1.0
"""Redis freshness p99 while InfluxDB is away (issue 20)."""
STOP_TIMEOUT = 120.0


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1]


def fmt(value: float | None, unit: str = "s", digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} {unit}"


@dataclass
class PhaseFigures:
    """What the samplers saw while one phase lasted."""

    name: str
    began: float = 0.0
    ended: float = 0.0
    probe_delays: list[float] = field(default_factory=list)
    probes_unseen: int = 0
    aggregates_lag: list[float] = field(default_factory=list)
    """Wall clock minus the newest window end in the topic, once a second."""
    aggregates_records: int = 0
    rss: list[float] = field(default_factory=list)
    sink_states: dict[str, set[str]] = field(default_factory=dict)


class Readings:
    """Every produced reading, compactly, per partition in offset order: event time (us),
    device number, metric number, value; offsets come from each batch's base offset."""

    def __init__(self, partitions: int) -> None:
        self.t_us = [array("q") for _ in range(partitions)]
        self.device = [array("I") for _ in range(partitions)]
        self.metric = [array("B") for _ in range(partitions)]
        self.value = [array("d") for _ in range(partitions)]
        self.batches: list[list[tuple[int, asyncio.Future[Any]]]] = [[] for _ in range(partitions)]
        """Per partition, (index of the batch's first reading, its send future)."""

    def add(self, partition: int, t_us: int, device: int, metric: int, value: float) -> None:
        self.t_us[partition].append(t_us)
        self.device[partition].append(device)
        self.metric[partition].append(metric)
        self.value[partition].append(value)

    def offsets(self, partition: int) -> array[int]:
        """The offset of each reading of ``partition`` as the broker stored it."""
        out = array("q", [-1]) * len(self.t_us[partition])
        batches = self.batches[partition]
        for number, (first, future) in enumerate(batches):
            last = batches[number + 1][0] if number + 1 < len(batches) else len(out)
            base = future.result().offset
            for index in range(first, last):
                out[index] = base + index - first
        return out


class Soak:
    """The servers, the worker and the measurements of one run."""

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.prefix = "soak"
        self.devices = [f"{self.prefix}-{n:05d}" for n in range(args.devices)]
        self.probes = [f"{self.prefix}-probe-{p}" for p in range(PARTITIONS)]
        self.names = self.devices + self.probes
        self.readings = Readings(PARTITIONS)
        self.newest_produced: dict[tuple[int, int], int] = {}
        """(device number, metric number) -> event time (us) of its newest reading sent."""
        self.phases: list[PhaseFigures] = []
        self.producing = True
        self.sent = 0
        self.outstanding: list[deque[tuple[int, float]]] = [deque() for _ in range(PARTITIONS)]
        self.probe_number = [0] * PARTITIONS
        self.aggregates: dict[tuple[str, str, str, int | float], bytes] = {}
        self.repeats_differing: list[tuple[Any, ...]] = []
        self.newest_end = 0.0
        self.transitions: list[str] = []
        self.failures: list[str] = []
        self.figures: list[str] = []
        self.broker: ServerProcess | None = None
        self.redis: ServerProcess | None = None
        self.influx: ServerProcess | None = None
        self.worker: WorkerProcess | None = None
        self.env: dict[str, str] = {}

    @property
    def phase(self) -> PhaseFigures:
        return self.phases[-1]

    def goal(self, held: bool, text: str) -> None:
        self.figures.append(f"[{'ok' if held else 'MISSED'}] {text}")
        if not held:
            self.failures.append(text)

    # -- servers and worker ---------------------------------------------------------------

    def start(self) -> None:
        servers = self.root / "servers"
        self.broker = start_broker(servers, kind=self.args.broker, stop_with_parent=True)
        self.redis_port, self.influx_port = free_port(), free_port()
        self.redis = start_redis(servers, port=self.redis_port, stop_with_parent=True)
        self.influx = start_victoria(servers, port=self.influx_port, stop_with_parent=True)
        p = self.prefix
        self.env = {
            "PULSE_BROKER": self.broker.url,
            "PULSE_REDIS_URL": self.redis.url,
            "PULSE_INFLUX_URL": self.influx.url,
            "PULSE_APP_ID": f"{p}app",
            "PULSE_TOPIC_READINGS": f"{p}-readings",
            "PULSE_TOPIC_AGGREGATES": f"{p}-aggregates",
            "PULSE_TOPIC_DLQ": f"{p}-dlq",
            "PULSE_TOPIC_OUTPUT_DLQ": f"{p}-output-dlq",
            "PULSE_REDIS_PREFIX": p,
            "PULSE_WINDOWS": self.args.windows,
            "PULSE_PARTITIONS": str(PARTITIONS),
            "PULSE_IDLE_CLOSE": str(self.args.idle_close),
            "PULSE_STATE_TTL": str(STATE_TTL),
        }
        self.settings = Settings.from_env(self.env)
        for spec in self.settings.windows:
            if spec.size_us != spec.step_us or spec.label.startswith("sliding"):
                raise SystemExit(f"--windows: {spec.label}: only tumbling windows are soaked")
        self.chunk_us = math.lcm(*(spec.size_us for spec in self.settings.windows))
        self.worker = WorkerProcess(self.env, self.root, "worker").start()
        self.worker.wait_ready()
        assert self.worker.process is not None
        self.pid = self.worker.process.pid

    def stop(self) -> None:
        if self.worker is not None:
            try:
                self.worker.stop(timeout=STOP_TIMEOUT)
            except AssertionError:
                print(f"the worker took more than {STOP_TIMEOUT:.0f} s to stop; killed")
        for server in (self.influx, self.redis, self.broker):
            if server is not None and server.alive():
                if server.kind == "redis" and server.pid is not None:
                    os.kill(server.pid, signal.SIGCONT)  # a frozen server cannot stop
                server.stop()

    # -- the producer ---------------------------------------------------------------------

    async def produce(self) -> None:
        """``--rate`` readings a second over the devices and metrics in turn, each stamped
        with the wall clock (never behind its partition's previous one: offset order is event
        time order), plus one probe per partition every ``--probe-every`` seconds."""
        assert self.broker is not None
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap(self.broker.url), linger_ms=0, acks="all"
        )
        await producer.start()
        rate, devices = self.args.rate, len(self.devices)
        last_t = [0] * PARTITIONS
        topic = self.env["PULSE_TOPIC_READINGS"]
        batches: dict[int, Any] = {}
        """Per partition, the tick's batch; ``firsts``: the index of its first reading."""
        firsts: dict[int, int] = {}

        async def send(partition: int) -> None:
            batch = batches.pop(partition)
            batch.close()
            future = await producer.send_batch(batch, topic, partition=partition)
            self.readings.batches[partition].append((firsts[partition], future))

        async def add(partition: int, device: int, metric: int, value: float) -> None:
            t_us = max(time.time_ns() // 1000, last_t[partition])
            last_t[partition] = t_us
            name = self.names[device]
            doc = {"device": name, "metric": METRICS[metric], "value": value, "ts": t_us / 1e6}
            key, payload = name.encode(), orjson.dumps(doc)
            batch = batches.get(partition)
            if batch is None or batch.append(key=key, value=payload, timestamp=None) is None:
                if batch is not None:  # full: send it, go on in a new one
                    await send(partition)
                batch = batches[partition] = producer.create_batch()
                firsts[partition] = len(self.readings.t_us[partition])
                batch.append(key=key, value=payload, timestamp=None)
            self.readings.add(partition, t_us, device, metric, value)
            self.newest_produced[(device, metric)] = t_us

        try:
            began = time.monotonic()
            next_probe, tick = 0.0, began
            number = 0
            while self.producing:
                now = time.monotonic()
                owed = int((now - began) * rate) - number
                probe_due = now - began >= next_probe
                if probe_due:
                    next_probe += self.args.probe_every
                probed: list[tuple[int, int]] = []
                for _ in range(owed):
                    device = number % devices
                    metric = (number // devices) % len(METRICS)
                    value = ((number * 7919) % 10007) / 100
                    await add(device % PARTITIONS, device, metric, value)
                    number += 1
                if probe_due:
                    for partition in range(PARTITIONS):
                        self.probe_number[partition] += 1
                        n = self.probe_number[partition]
                        await add(partition, devices + partition, 0, float(n))
                        probed.append((partition, n))
                sent_at = time.monotonic()
                for partition, n in probed:
                    self.outstanding[partition].append((n, sent_at))
                for partition in list(batches):
                    await send(partition)
                self.sent = number
                tick += TICK_SECONDS
                await asyncio.sleep(max(0.0, tick - time.monotonic()))
            await producer.flush()
            for partition in range(PARTITIONS):
                await asyncio.gather(*(f for _, f in self.readings.batches[partition]))
        finally:
            await producer.stop()

    # -- samplers -------------------------------------------------------------------------

    async def poll_probes(self) -> None:
        """Reads the probe devices' latest values every ``--poll`` seconds; a probe is seen
        once its number (or a later one) is there. Redis away: tries again."""
        assert self.redis is not None
        client = aioredis.Redis.from_url(
            self.redis.url, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        keys = [f"{self.prefix}:device:{name}" for name in self.probes]
        try:
            while True:
                try:
                    async with client.pipeline(transaction=False) as pipe:
                        for key in keys:
                            pipe.hget(key, "temperature")
                        values = await pipe.execute()
                except (redis.RedisError, OSError):
                    await asyncio.sleep(0.2)
                    continue
                now = time.monotonic()
                for partition, value in enumerate(values):
                    if value is None:
                        continue
                    seen = float(value)
                    waiting = self.outstanding[partition]
                    while waiting and waiting[0][0] <= seen:
                        _, sent_at = waiting.popleft()
                        self.phase_of(sent_at).probe_delays.append(now - sent_at)
                await asyncio.sleep(self.args.poll)
        finally:
            await client.aclose()

    def phase_of(self, at: float) -> PhaseFigures:
        """The phase during which monotonic time ``at`` fell."""
        for phase in reversed(self.phases):
            if phase.began <= at:
                return phase
        return self.phases[0]

    async def consume_aggregates(self) -> None:
        """Reads the aggregates topic from its start: the newest window end, the records per
        phase, and every window's record (repeats must be identical) for the final check."""
        assert self.broker is not None
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap(self.broker.url),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        topic = self.env["PULSE_TOPIC_AGGREGATES"]
        self.aggregates_consumer = consumer
        try:
            while (partitions := consumer.partitions_for_topic(topic)) is None:
                await consumer._client.force_metadata_update()
                await asyncio.sleep(0.5)
            self.aggregates_tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(self.aggregates_tps)
            await consumer.seek_to_beginning(*self.aggregates_tps)
            while True:
                fetched = await consumer.getmany(timeout_ms=200)
                for records in fetched.values():
                    for record in records:
                        assert record.value is not None
                        doc = orjson.loads(record.value)
                        key = (doc["device"], doc["metric"], doc["window"], doc["start"])
                        before = self.aggregates.get(key)
                        if before is not None and orjson.loads(before) != doc:
                            self.repeats_differing.append(key)
                        self.aggregates[key] = record.value
                        self.newest_end = max(self.newest_end, float(doc["end"]))
                        self.phase.aggregates_records += 1
        finally:
            await consumer.stop()

    async def aggregates_drained(self) -> bool:
        """Whether the consumer has read every aggregates partition to its high watermark."""
        consumer = self.aggregates_consumer
        for tp in self.aggregates_tps:
            highwater = consumer.highwater(tp)
            if highwater is None or await consumer.position(tp) < highwater:
                return False
        return True

    async def sample(self) -> None:
        """Once a second: the worker's RSS, its sinks' states, the topic's lag."""
        assert self.worker is not None
        states: dict[str, str] = {}
        began = time.monotonic()
        while True:
            self.worker.check_alive()
            phase = self.phase
            phase.rss.append(rss_mib(self.pid))
            if self.newest_end:
                phase.aggregates_lag.append(time.time() - self.newest_end)
            health = await asyncio.to_thread(self.worker.health) or {}
            for sink, state in sorted(health.get("sinks", {}).items()):
                phase.sink_states.setdefault(sink, set()).add(state["state"])
                if states.get(sink) != state["state"]:
                    states[sink] = state["state"]
                    reason = f" ({state['reason']})" if state.get("reason") else ""
                    at = time.monotonic() - began
                    line = f"{at:6.0f} s  {phase.name}: {sink} {state['state']}{reason}"
                    self.transitions.append(line)
                    print(f"  health {line}", flush=True)
            await asyncio.sleep(1.0)

    # -- phases ---------------------------------------------------------------------------

    def begin(self, name: str) -> PhaseFigures:
        now = time.monotonic()
        if self.phases:
            self.phases[-1].ended = now
            self.report_phase(self.phases[-1])
        self.phases.append(PhaseFigures(name, began=now))
        print(f"-- {name}", flush=True)
        return self.phase

    def report_phase(self, phase: PhaseFigures) -> None:
        unseen = sum(1 for q in self.outstanding for _, at in q if phase.began <= at < phase.ended)
        phase.probes_unseen = unseen
        length = phase.ended - phase.began
        lag = phase.aggregates_lag
        print(
            f"   {phase.name}: {length:.0f} s; Redis freshness p50 "
            f"{fmt(percentile(phase.probe_delays, 0.5))} p99 "
            f"{fmt(percentile(phase.probe_delays, 0.99))} max "
            f"{fmt(max(phase.probe_delays, default=None))} ({len(phase.probe_delays)} probes, "
            f"{unseen} unseen at its end); aggregates lag p50 {fmt(percentile(lag, 0.5), digits=1)}"
            f" max {fmt(max(lag, default=None), digits=1)}, "
            f"{phase.aggregates_records / max(length, 1e-9):,.0f} records/s; RSS "
            f"{fmt(min(phase.rss, default=None), 'MiB', 1)}-"
            f"{fmt(max(phase.rss, default=None), 'MiB', 1)}; "
            f"sinks {', '.join(f'{k} {sorted(v)}' for k, v in sorted(phase.sink_states.items()))}",
            flush=True,
        )

    async def pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.worker is not None
            self.worker.check_alive()
            await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    async def influx_holds(self, keys: set[tuple[str, str, str, int]]) -> bool:
        """Whether VictoriaMetrics holds a count point for every window of ``keys``."""
        assert self.influx is not None
        match = f'{{__name__=~"({"|".join(METRICS)})_count",device=~"{self.prefix}-.*"}}'
        try:
            series = await asyncio.to_thread(export, self.influx.url, match, None, None)
        except OSError:
            return False
        found = set()
        for one in series:
            labels = one["metric"]
            metric = labels["__name__"].rsplit("_", 1)[0]
            for ts in one["timestamps"]:
                found.add((labels["device"], metric, labels["window"], ts))
        return keys <= found

    async def redis_current(self, client: redis.Redis, newest: dict[tuple[int, int], int]) -> bool:
        """Whether every device's latest value in Redis is at least as new as ``newest``."""

        def read() -> list[dict[bytes, bytes]]:
            with client.pipeline(transaction=False) as pipe:
                for name in self.names:
                    pipe.hgetall(f"{self.prefix}:device:{name}")
                return pipe.execute()

        try:
            hashes = await asyncio.to_thread(read)
        except (redis.RedisError, OSError):
            return False
        for (device, metric), t_us in newest.items():
            shown = hashes[device].get(f"{METRICS[metric]}:ts".encode())
            if shown is None or round(float(shown) * 1e6) < t_us:
                return False
        return True

    async def wait_for(
        self, condition: Callable[[], Any], timeout: float, poll: float
    ) -> float | None:
        """Seconds until ``await condition()`` is true, or None after ``timeout``."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            if await condition():
                return time.monotonic() - began
            assert self.worker is not None
            self.worker.check_alive()
            await asyncio.sleep(poll)
        return None

    async def run(self) -> None:
        args = self.args
        self.begin("normal, before the outages")
        tasks = [
            asyncio.create_task(self.consume_aggregates()),
            asyncio.create_task(self.poll_probes()),
            asyncio.create_task(self.sample()),
        ]
        producing = asyncio.create_task(self.produce())
        watched = [*tasks, producing]
        try:
            await self.watch(self.pause(args.seconds), watched)

            # Phase 1: InfluxDB away, stopped as an operator stops it (SIGTERM: it stores
            # what it acknowledged), then back on its port and data directory.
            self.begin(f"InfluxDB away ({args.outage:.0f} s)")
            assert self.influx is not None
            await asyncio.to_thread(self.influx.stop)
            await self.watch(self.pause(args.outage), watched)
            servers = self.root / "servers"
            self.influx = await asyncio.to_thread(
                start_victoria, servers, port=self.influx_port, stop_with_parent=True
            )
            back = self.begin("normal, InfluxDB back")
            held = {(d, m, w, round(s * 1000)) for d, m, w, s in self.aggregates}
            catch_up = await self.watch(
                self.wait_for(lambda: self.influx_holds(held), max(args.seconds, 120.0), 1.0),
                watched,
            )
            self.goal(
                catch_up is not None,
                f"InfluxDB held every one of the {len(held):,} windows the topic held at its "
                f"return {fmt(catch_up, digits=1)} after it",
            )
            await self.watch(self.pause(args.seconds - (time.monotonic() - back.began)), watched)

            # Phase 2: Redis frozen (answers nothing), then killed, then an empty server.
            self.begin(f"Redis away ({args.outage:.0f} s: frozen, then killed)")
            assert self.redis is not None and self.redis.pid is not None
            away = time.monotonic()
            os.kill(self.redis.pid, signal.SIGSTOP)
            await self.watch(self.pause(args.outage / 3), watched)
            os.kill(self.redis.pid, signal.SIGKILL)
            await asyncio.to_thread(self.redis.stop)
            await self.watch(self.pause(args.outage - (time.monotonic() - away)), watched)
            self.redis = await asyncio.to_thread(
                start_redis, self.root / "servers", port=self.redis_port, stop_with_parent=True
            )
            back = self.begin("normal, Redis back (empty)")
            newest = dict(self.newest_produced)
            client = redis.Redis.from_url(self.redis.url, socket_timeout=5)
            current = await self.watch(
                self.wait_for(lambda: self.redis_current(client, newest), 60.0, 0.05), watched
            )
            self.goal(
                current is not None,
                f"every device's latest values in Redis at least those produced at its return "
                f"{fmt(current, digits=2)} after it",
            )
            await self.watch(self.pause(args.seconds - (time.monotonic() - back.began)), watched)

            # The end: no more readings; idle close ends every window.
            self.producing = False
            await self.watch(producing, tasks)
            self.begin("production stopped: idle close")
            await self.watch(self.finish(client), tasks)
        finally:
            self.producing = False
            for task in watched:
                task.cancel()
            await asyncio.gather(*watched, return_exceptions=True)

    async def watch(self, step: Any, tasks: list[asyncio.Task[Any]]) -> Any:
        """Runs ``step``; a background task that fails stops the run with its error."""
        main = asyncio.ensure_future(step)
        while True:
            done, _ = await asyncio.wait([main, *tasks], return_when=asyncio.FIRST_COMPLETED)
            if main in done:
                return main.result()
            for task in done:
                error = task.exception()
                if error is not None:
                    main.cancel()
                    raise error
                tasks = [t for t in tasks if t is not task]

    # -- the end: every output against the reference ---------------------------------------

    async def finish(self, client: redis.Redis) -> None:
        assert self.worker is not None and self.influx is not None
        ends = {p: self.readings.offsets(p)[-1] + 1 for p in range(PARTITIONS)}
        self.offsets = [self.readings.offsets(p) for p in range(PARTITIONS)]
        began = time.monotonic()
        await asyncio.to_thread(self.worker.wait_caught_up, ends, 120.0)
        caught_up = time.monotonic() - began
        series = len(self.names) * len(self.settings.windows) * len(METRICS) - PARTITIONS * len(
            self.settings.windows
        )  # the probes send one metric only

        async def all_closed() -> bool:
            def count() -> tuple[int, int]:
                opened = sum(1 for _ in client.scan_iter(f"{self.prefix}:open:*", count=1000))
                closed = sum(1 for _ in client.scan_iter(f"{self.prefix}:closed:*", count=1000))
                return opened, closed

            opened, closed = await asyncio.to_thread(count)
            return opened == 0 and closed == series

        closed_after = await self.wait_for(all_closed, 120.0, 0.5)
        self.goal(
            closed_after is not None,
            f"idle close ended every window: no open window left in Redis, {series:,} series "
            f"closed, {fmt(closed_after, digits=1)} after the worker caught up "
            f"({caught_up:.1f} s after production stopped)",
        )
        drained = await self.wait_for(self.aggregates_drained, 60.0, 0.5)
        await asyncio.sleep(1.0)
        assert drained is not None, "could not read the aggregates topic to its end"
        self.phase.ended = time.monotonic()
        self.report_phase(self.phase)
        await asyncio.to_thread(self.check_exact, client)

    def check_exact(self, client: redis.Redis) -> None:
        """Every output against the reference, a chunk of event time at a time."""
        assert self.influx is not None
        labels_us = {spec.label: spec.size_us for spec in self.settings.windows}
        windows_us: dict[str, int | tuple[int, int]] = dict(labels_us)
        first = min(t[0] for t in self.readings.t_us if t)
        last = max(t[-1] for t in self.readings.t_us if t)
        chunk = first - first % self.chunk_us
        latest: dict[tuple[str, str], tuple[int, float]] = {}
        newest: dict[tuple[str, str, str], tuple[int, dict[str, Any]]] = {}
        windows = topic_wrong = influx_wrong = 0
        examples: list[str] = []
        unsorted = [
            p for p in range(PARTITIONS) if list(self.offsets[p]) != sorted(self.offsets[p])
        ]
        assert not unsorted, f"offsets out of send order in partitions {unsorted}"
        while chunk <= last:
            records = []
            for p in range(PARTITIONS):
                times = self.readings.t_us[p]
                lo = bisect.bisect_left(times, chunk)
                hi = bisect.bisect_left(times, chunk + self.chunk_us)
                for i in range(lo, hi):
                    name = self.names[self.readings.device[p][i]]
                    metric = METRICS[self.readings.metric[p][i]]
                    meaning = Valid(name, metric, self.readings.value[p][i], times[i])
                    records.append(Record(p, self.offsets[p][i], meaning))
            expected = compute(records, windows_us, self.settings.grace_us)
            assert not expected.dead_letters and not expected.late_for_some
            latest.update(expected.latest)
            for (device, metric, label, start), agg in expected.windows.items():
                newest[(device, metric, label)] = (start, agg)
            documents = expected.aggregate_documents(labels_us)
            windows += len(documents)
            for key, want in documents.items():
                found = self.aggregates.pop(key, None)
                try:
                    assert found is not None, ("missing", key)
                    assert_window_fields(orjson.loads(found), want, key)
                except AssertionError as exc:
                    topic_wrong += 1
                    if len(examples) < 5:
                        examples.append(f"topic: {exc}")
            influx_wrong += self.check_influx(chunk, expected, examples)
            print(
                f"   checked {len(records):,} readings' windows from {chunk / 1e6:.0f} s",
                flush=True,
            )
            chunk += self.chunk_us
        extra = len(self.aggregates)
        self.goal(
            topic_wrong == 0 and extra == 0 and not self.repeats_differing,
            f"aggregates topic: all {windows:,} windows equal the reference ({topic_wrong} "
            f"differ or missing, {extra} not in it, {len(self.repeats_differing)} repeated with "
            f"other content)",
        )
        self.goal(
            influx_wrong == 0,
            f"InfluxDB: all {windows:,} windows x {len(FIELDS)} fields equal the reference "
            f"({influx_wrong} series-chunks differ)",
        )
        reference = Expected(
            windows={(d, m, lab, s): agg for (d, m, lab), (s, agg) in newest.items()},
            latest=latest,
            window_sizes=labels_us,
        )
        try:
            assert_redis(client, self.prefix, reference)
            redis_error = ""
        except AssertionError as exc:
            redis_error = f": {str(exc)[:300]}"
        self.goal(
            not redis_error,
            f"Redis: {len(newest):,} last closed windows, top sets and {len(latest):,} latest "
            f"values equal the reference{redis_error}",
        )
        letters = {
            topic: len(asyncio.run(kafka.read_all(self.env["PULSE_BROKER"], self.env[topic])))
            for topic in ("PULSE_TOPIC_DLQ", "PULSE_TOPIC_OUTPUT_DLQ")
        }
        self.goal(
            not any(letters.values()),
            f"no dead letter (readings {letters['PULSE_TOPIC_DLQ']}, outputs "
            f"{letters['PULSE_TOPIC_OUTPUT_DLQ']})",
        )
        for example in examples:
            print(f"   {example[:400]}")

    def check_influx(self, chunk: int, expected: Expected, examples: list[str]) -> int:
        """The chunk's windows in VictoriaMetrics (by their start); the series that differ."""
        assert self.influx is not None
        wanted: dict[tuple[tuple[str, str], ...], dict[int, float]] = {}
        for (device, metric, label, start), agg in expected.windows.items():
            for name in FIELDS:
                series = {"__name__": f"{metric}_{name}", "device": device, "window": label}
                wanted.setdefault(tuple(sorted(series.items())), {})[start // 1000] = float(
                    agg[name]
                )
        match = f'{{__name__=~"({"|".join(METRICS)})_.*",device=~"{self.prefix}-.*"}}'
        found: dict[tuple[tuple[str, str], ...], dict[int, float]] = {}
        for exported in export(self.influx.url, match, chunk, chunk + self.chunk_us - 1000):
            points = found.setdefault(tuple(sorted(exported["metric"].items())), {})
            points.update(zip(exported["timestamps"], exported["values"], strict=True))
        wrong = 0
        for labels in set(wanted) | set(found):
            name = dict(labels)["__name__"].rsplit("_", 1)[1]
            rel = QUANTILE_ACCURACY + 1e-9 if name in ("p50", "p95", "p99") else 1e-11
            want, have = wanted.get(labels, {}), found.get(labels, {})
            if set(want) != set(have) or any(
                not math.isclose(have[ts], v, rel_tol=rel, abs_tol=1e-9) for ts, v in want.items()
            ):
                wrong += 1
                if len(examples) < 5:
                    examples.append(f"influx: {dict(labels)}: {want} != {have}")
        return wrong

    def summary(self) -> int:
        rss = [r for phase in self.phases for r in phase.rss]
        for phase in self.phases:  # probes never seen, by the phase they were produced in
            phase.probes_unseen = sum(
                1 for q in self.outstanding for _, at in q if phase.began <= at < phase.ended
            )
        baseline = max(self.phases[0].rss)
        print("\nsummary")
        print(
            f"  {self.args.rate:,} readings/s over {self.args.devices} devices x {len(METRICS)} "
            f"metrics (+ {PARTITIONS} probe devices), windows {self.args.windows}, broker "
            f"{self.args.broker}, outages {self.args.outage:.0f} s, normal running "
            f"{self.args.seconds:.0f} s; {self.sent:,} readings produced"
        )
        for phase in self.phases:
            print(
                f"  {phase.name}: Redis freshness p50 {fmt(percentile(phase.probe_delays, 0.5))}, "
                f"p99 {fmt(percentile(phase.probe_delays, 0.99))}, max "
                f"{fmt(max(phase.probe_delays, default=None))} ({len(phase.probe_delays)} probes, "
                f"{phase.probes_unseen} never seen);"
                f" aggregates lag max {fmt(max(phase.aggregates_lag, default=None), digits=1)}, "
                f"{phase.aggregates_records / max(phase.ended - phase.began, 1e-9):,.0f} "
                f"records/s; RSS max {fmt(max(phase.rss, default=None), 'MiB', 1)}"
            )
        print(
            f"  worker RSS: start {rss[0]:.1f} MiB, peak {max(rss):.1f} MiB, end {rss[-1]:.1f} MiB"
        )
        influx_phase = self.phases[1]
        p99 = percentile(influx_phase.probe_delays, 0.99)
        self.goal(
            p99 is not None and p99 < FRESHNESS_GOAL_S and influx_phase.probes_unseen == 0,
            f"Redis freshness while InfluxDB was away: p99 {fmt(p99)} < {FRESHNESS_GOAL_S:g} s",
        )
        self.goal(
            influx_phase.sink_states.get("influx", set()) >= {"waiting"}
            and influx_phase.sink_states.get("redis") == {"ok"}
            and influx_phase.sink_states.get("redis-latest") == {"ok"}
            and influx_phase.sink_states.get("kafka") == {"ok"},
            "/health while InfluxDB was away: influx waiting, redis, redis-latest and kafka ok "
            f"({ {k: sorted(v) for k, v in sorted(influx_phase.sink_states.items())} })",
        )
        redis_phase = self.phases[3]
        lag_goal = (
            min(spec.size_us for spec in self.settings.windows) / 1e6
            + self.settings.grace
            + self.settings.close_spread
            + 10.0
        )
        lag = max(redis_phase.aggregates_lag, default=math.inf)
        rate = redis_phase.aggregates_records / (redis_phase.ended - redis_phase.began)
        self.goal(
            lag < lag_goal and rate > 0,
            f"aggregates topic while Redis was away: newest window end at most {lag:.1f} s "
            f"behind the wall clock (< {lag_goal:.0f} s: the shortest window, grace, close "
            f"spread and 10 s), {rate:,.0f} records/s",
        )
        self.goal(
            redis_phase.sink_states.get("redis", set()) >= {"waiting"}
            and redis_phase.sink_states.get("redis-latest", set()) >= {"waiting"}
            and redis_phase.sink_states.get("kafka") == {"ok"},
            "/health while Redis was away: redis and redis-latest waiting, kafka ok "
            f"({ {k: sorted(v) for k, v in sorted(redis_phase.sink_states.items())} })",
        )
        end_states = {k: sorted(v) for k, v in sorted(self.phases[-1].sink_states.items())}
        self.goal(
            all(v == ["ok"] for v in end_states.values()) and len(end_states) == 4,
            f"/health at the end: every sink ok ({end_states})",
        )
        limit = baseline * (1 + self.args.rss_growth / 100)
        self.goal(
            max(rss) <= limit,
            f"worker RSS bounded: peak {max(rss):.1f} MiB <= {limit:.1f} MiB (the peak before "
            f"the outages, {baseline:.1f} MiB, + {self.args.rss_growth:g} %)",
        )
        for line in self.figures:
            print(f"  {line}")
        print(f"soak process RSS at the end: {rss_mib(os.getpid()):.1f} MiB")
        print("result:", "every goal held" if not self.failures else f"{len(self.failures)} missed")
        return 1 if self.failures else 0


def export(
    influx_url: str, match: str, start_us: int | None, end_us: int | None
) -> list[dict[str, Any]]:
    """VictoriaMetrics' export of ``match``, points from ``start_us`` to ``end_us`` (all if
    None); a new series shows only after a few seconds, so callers poll."""
    params = {"match[]": match, "start": "0", "nocache": "1"}
    if start_us is not None and end_us is not None:
        params.update(start=f"{start_us / 1e6:.3f}", end=f"{end_us / 1e6:.3f}")
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{influx_url}/api/v1/export?{query}", timeout=30) as response:
        return [orjson.loads(line) for line in response.read().splitlines() if line.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=180.0, help="seconds each outage lasts")
    parser.add_argument("--seconds", type=float, default=60.0, help="normal running between")
    parser.add_argument("--rate", type=int, default=2000, help="readings per second")
    parser.add_argument("--devices", type=int, default=300, help="devices (2 metrics each)")
    parser.add_argument("--windows", default="10s,1m", help="PULSE_WINDOWS (tumbling only)")
    parser.add_argument("--broker", choices=("tansu", "kafka"), default="tansu")
    parser.add_argument("--idle-close", type=float, default=5.0, help="PULSE_IDLE_CLOSE")
    parser.add_argument("--probe-every", type=float, default=0.05, help="seconds between probes")
    parser.add_argument("--poll", type=float, default=0.01, help="seconds between probe reads")
    parser.add_argument("--rss-growth", type=float, default=50.0, help="RSS growth (%%) that fails")
    args = parser.parse_args()
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 PID: where each thread is
    root = Path(tempfile.mkdtemp(prefix="soak-outages-"))
    soak = Soak(args, root)
    try:
        soak.start()
        print(
            f"worker {soak.pid} on {args.broker}: {args.rate:,} readings/s; outages of "
            f"{args.outage:.0f} s, {args.seconds:.0f} s of normal running between (in {root})",
            flush=True,
        )
        asyncio.run(soak.run())
        return soak.summary()
    finally:
        soak.stop()


if __name__ == "__main__":
    sys.exit(main())
