"""Alerts end to end on real servers (issue 23, "Tests on real servers").

A worker (``pulse worker``, a child process) judges a two-partition stream by a registry in
PostgreSQL that the test changes at quiet points of the stream; the ``alerts`` topic, Redis's
active alerts and the alert events of ``P:events`` must equal what the independent reference
(tests/reference.py, ``AlertReference``) computes from the same records and registry
versions.

The stream: 6 devices (``x`` never registered, ``d`` disabled until the first change), each
device produced to an explicit partition so that the test knows each partition's records and
watermark; readings of ``temperature`` and ``humidity`` over 4 phases of 120 s of event time
(2023, far in the past; ``PULSE_IDLE_CLOSE`` long enough that no wall clock closes anything),
some out of order within the grace, some too late, with gaps of a metric that absence rules
see. The registry: rules of every comparison (``> >= < <=``), clear thresholds (hysteresis),
``for`` of 1, 2 and 3, on tumbling and hopping windows, aggregates mean, min, p50, count,
max; absence rules; silences of a rule, a device, a site; site selectors, a device selector.
Between the phases (the quiet points) production pauses, the test waits until the worker
has applied every record produced, commits each change through ``RegistryStore`` and waits
until ``/metrics`` shows every partition's ``pulse_registry_version`` at that version, then
goes on: a device enabled, a rule's threshold lowered (removed and added again), silences
added, a device disabled while its alerts fire, an absence rule removed while it fires (it
resolves at the watermark), absence and window rules added, a rule replaced with another
comparison, a device moved to another site, a rule's thresholds replaced in one version.

The reference, per partition in offset order: each window the worker emitted (read back
from ``aggregates``, whose content is checked against ``compute``) is judged by the version
the partition used when it closed: a window whose end the partition's watermark had reached
before a quiet point closed under the version before it (PULSE_CLOSE_SPREAD=0: a drain
closes every window the watermark has passed), the others under the version after;
absences record by record (``AlertReference.watermark`` after each applied reading, and
once with the new version at each switch, as the partition re-judges its absence entries
then). With ``PULSE_REGISTRY_REQUIRED=true`` (the crash test) a reading of a device the
version in use lacks or disables is dead-lettered as ``unknown_device`` and moves nothing.

Compared: the distinct transitions of the topic by (id, state), each with one content (a
repeat only identical), equal to the reference's; the active alerts in Redis, the firing
ones at the end; each transition one ``alert`` event; and one row each in PostgreSQL's
``alert_history`` (the worker's alerts' history writer); and what ``pulse notifier`` (a
child process) delivered to a webhook of every alert, a real HTTP receiver: each transition
that is not silenced under its key ``{id}:{state}`` with the transition as its body, and
nothing else. The second test SIGKILLs the worker twice mid-stream (records still arriving,
between two rule changes) and once right after it switched to a change that resolves a
firing absence, and the notifier once mid-stream, restarting each at once: the transitions
must still be exactly the reference's, and the deliveries too (repeats only identical).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import redis
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from models.alerts import AbsenceRule, AlertRule, Device, Registry, Selector, Silence
from pulse.local.stack import free_port
from pulse.registry.store import RegistryStore
from pulse.settings import Settings
from tests.helpers import kafka
from tests.helpers.scenarios import assert_dead_letter_set, next_offsets, wait_until
from tests.helpers.webhooks import Receiver
from tests.helpers.worker import WorkerProcess
from tests.integration.test_pipeline import pipeline_env
from tests.reference import (
    AlertReference,
    Expected,
    Invalid,
    Record,
    Valid,
    assert_window_fields,
    compute,
)

pytestmark = pytest.mark.integration

S = 1_000_000
T0_US = 1_700_000_000 * S
PHASE_S = 120
PHASES = 4
GRACE_S = 2
WINDOWS = "10s,30s/10s"
SHAPES: dict[str, tuple[int, int]] = {"10s": (10 * S, 10 * S), "30s/10s": (30 * S, 10 * S)}
METRICS = ("temperature", "humidity")
PARTITIONS = 2

DEVICES: dict[str, int] = {"a": 0, "b": 0, "x": 0, "c": 1, "d": 1, "e": 1}
"""Device suffix -> its partition (``x`` is never registered)."""
GAPS: dict[tuple[str, str], list[tuple[int, int]]] = {
    # (device, metric): spans of event time (s after T0) without a reading of it
    ("b", "humidity"): [(20, 70), (150, 190), (280, 310)],
    ("c", "humidity"): [(205, 275)],  # firing when its absence rule is removed (240 s)
    ("a", "temperature"): [(210, 270)],  # firing when its device is disabled (240 s)
    ("c", "temperature"): [(380, 420)],
    ("b", "temperature"): [(440, 470)],
    ("d", "humidity"): [(400, 430)],
}
LEVELS: dict[tuple[str, str], list[tuple[int, int, float]]] = {
    # (device, metric): spans of event time whose values center on a level instead
    ("a", "humidity"): [(170, 240, 32.0)],  # "dry" fires, and fires when the device is disabled
}

Change = tuple[str, tuple[Any, ...], dict[str, Any]]
"""A registry change: (RegistryStore method, args, kwargs)."""


def change(method: str, *args: Any, **kwargs: Any) -> Change:
    return (method, args, kwargs)


def plan(prefix: str) -> list[list[Change]]:
    """The registry's changes: the first list before the stream, then one list per quiet
    point (before phases 1, 2 and 3), each change its own version."""

    def dev(suffix: str) -> str:
        return f"{prefix}-{suffix}"

    def at(seconds: int) -> int:
        return T0_US + seconds * S

    plant_a, plant_b = Selector(site="plant-a"), Selector(site="plant-b")
    temp, hum, crit = "temperature", "humidity", "critical"
    initial = [
        change("add_device", Device(dev("a"), "plant-a", {"rack": "r1"})),
        change("add_device", Device(dev("b"), "plant-b")),
        change("add_device", Device(dev("c"), "plant-a", {"rack": "r2"})),
        change("add_device", Device(dev("d"), "plant-b", enabled=False)),
        change("add_device", Device(dev("e"), None, {"line": "2"})),
        change("add_rule", AlertRule("hot", temp, "10s", "mean", ">", 30, 27, 2, plant_a, crit)),
        change("add_rule", AlertRule("cold", temp, "10s", "min", "<", 12, 15)),
        change("add_rule", AlertRule("dry", hum, "30s/10s", "p50", "<=", 40, 45, 2)),
        change(
            "add_rule",
            AlertRule("busy", temp, "10s", "count", ">=", 8, None, 3, Selector(dev("e")), "info"),
        ),
        change("add_rule", AlertRule("spiky", hum, "10s", "max", ">=", 65, None, 1, plant_b)),
        change("add_absence_rule", AbsenceRule("quiet-hum", hum, 25 * S)),
        change("add_absence_rule", AbsenceRule("quiet-temp", temp, 20 * S, plant_a, "critical")),
        change("add_silence", Silence(rule="cold", device=dev("e"), until_us=at(150))),
        change("add_silence", Silence(site="plant-b", until_us=at(90))),
    ]
    first = [
        change("set_device", dev("d"), enabled=True),
        change("remove_rule", "hot"),
        change("add_rule", AlertRule("hot", temp, "10s", "mean", ">", 29, 26, 2, plant_a, crit)),
        change("add_silence", Silence(rule="quiet-hum", device=dev("b"), until_us=at(200))),
    ]
    second = [
        change("set_device", dev("a"), enabled=False),
        change("remove_rule", "quiet-hum"),
        change("add_absence_rule", AbsenceRule("quiet-hum-b", hum, 15 * S, plant_b, "info")),
        change("remove_rule", "cold"),
        change("add_rule", AlertRule("cold", temp, "10s", "min", "<=", 13, 16, 2)),
    ]
    third = [
        change("set_device", dev("b"), site="plant-a"),
        change(
            "add_rule",
            AlertRule("warm-hop", temp, "30s/10s", "mean", ">=", 25, 23, 2, plant_a, "info"),
        ),
        change("add_silence", Silence(rule="hot", site="plant-a", until_us=at(420))),
        change("set_rule", AlertRule("dry", hum, "30s/10s", "p50", "<=", 42, 46, 2)),
    ]
    return [initial, first, second, third]


@dataclass(frozen=True)
class Reading:
    partition: int
    device: str
    metric: str
    value: float
    t_us: int
    phase: int

    def value_bytes(self) -> bytes:
        doc = {"device": self.device, "metric": self.metric, "value": self.value}
        return orjson.dumps({**doc, "ts": self.t_us / S})


def build(prefix: str, seed: int = 23) -> list[Reading]:
    """The readings in production order (by the time each is generated): per device a
    reading every 0.5-1.5 s (device ``e`` in bursts of several per second, 30 s of every
    100 s), values on slow waves that cross the rules' thresholds, no reading of a metric
    in its GAPS; 5 % stamped up to 1.9 s earlier (out of order, within the grace) and 1.5 %
    45 s earlier (late for every window)."""
    rng = random.Random(seed)
    made: list[tuple[float, str, str, float]] = []
    bases = {"a": 26.0, "b": 22.0, "x": 20.0, "c": 24.0, "d": 20.0, "e": 18.0}
    for i, suffix in enumerate(DEVICES):
        t = rng.uniform(0, 1)
        while t < PHASES * PHASE_S:
            bursty = suffix == "e" and t % 100 < 30
            if bursty:
                metric = "temperature" if rng.random() < 0.85 else "humidity"
            else:
                metric = METRICS[rng.randrange(2)]
            if any(lo <= t < hi for lo, hi in GAPS.get((suffix, metric), [])):
                metric = METRICS[1 - METRICS.index(metric)]
            levels = [v for lo, hi, v in LEVELS.get((suffix, metric), []) if lo <= t < hi]
            if not any(lo <= t < hi for lo, hi in GAPS.get((suffix, metric), [])):
                if levels:
                    value = levels[0] + rng.gauss(0, 1.5)
                elif metric == "temperature":
                    wave = 7 * _sin(t / (60 + 7 * i) + i)
                    value = bases[suffix] + wave + rng.gauss(0, 1.5)
                else:
                    amplitude = 17 if suffix == "b" else 15
                    value = 50 + amplitude * _sin(t / (80 + 5 * i) + 2 * i) + rng.gauss(0, 2)
                made.append((t, suffix, metric, round(value, 3)))
            t += rng.uniform(0.15, 0.45) if bursty else rng.uniform(0.5, 1.5)
    made.sort()
    out = []
    for t, suffix, metric, value in made:
        t_us = T0_US + round(t * 1000) * 1000
        shift = rng.random()
        if shift < 0.05:
            t_us -= rng.randrange(0, 1900) * 1000
        elif shift < 0.065:
            t_us -= 45 * S
        phase = int(t // PHASE_S)
        out.append(Reading(DEVICES[suffix], f"{prefix}-{suffix}", metric, value, t_us, phase))
    return out


def _sin(turns: float) -> float:
    return math.sin(2 * math.pi * turns)


# -- the reference ------------------------------------------------------------------------


def _open_window(t_us: int, watermark: int | None) -> bool:
    """Whether some window holding ``t_us`` is still open at ``watermark`` (else the reading
    is late), by brute force over the windows' starts."""
    if watermark is None:
        return True
    for size, step in SHAPES.values():
        start = t_us - t_us % step
        while start > t_us - size:
            if start + size > watermark:
                return True
            start -= step
    return False


def _enabled(registry: Registry, device: str) -> bool:
    return any(d.id == device and d.enabled for d in registry.devices)


@dataclass
class Timeline:
    """What the registry was when: the version the stream starts with and the versions
    switched to at each quiet point, in order."""

    initial: Registry
    switches: dict[int, list[Registry]] = field(default_factory=dict)
    """phase -> the registries switched to (in turn) before its records."""

    def at_close(self, end_us: int, pauses: list[int]) -> Registry:
        """The registry a window ending at ``end_us`` was judged by: the one in use when the
        partition's watermark first reached the end (``pauses[k]``: the watermark before
        the switches of phase k + 1)."""
        registry = self.initial
        for k, watermark in enumerate(pauses):
            if end_us > watermark:
                registry = self.switches[k + 1][-1]
        return registry


@dataclass
class Reference:
    records: list[Record]
    expected: Expected
    """compute()'s windows (all of them, closed or not) and dead letters."""
    final_watermark: dict[int, int]
    pauses: dict[int, list[int]]
    absences: list[dict[str, Any]]
    """The absence transitions, per partition in emission order."""


def reference(
    readings: list[Reading], offsets: list[tuple[int, int]], timeline: Timeline, required: bool
) -> Reference:
    """Record by record per partition: which readings the registry in use rejects, the
    watermark at each quiet point, and the absence transitions; then compute() of the
    records (unknown devices marked as dead letters) for the windows."""
    records: list[Record] = []
    final: dict[int, int] = {}
    pauses: dict[int, list[int]] = {}
    absences: list[dict[str, Any]] = []
    for partition in range(PARTITIONS):
        ref = AlertReference()
        registry = timeline.initial
        max_t: int | None = None
        latest: dict[tuple[str, str], int] = {}
        pauses[partition] = []
        phase = 0
        for reading, (p, offset) in zip(readings, offsets, strict=True):
            if p != partition:
                continue
            watermark = None if max_t is None else max_t - GRACE_S * S
            while phase < reading.phase:
                phase += 1
                assert watermark is not None
                pauses[partition].append(watermark)
                for registry in timeline.switches[phase]:
                    ref.watermark(registry, watermark, {})
            if required and not _enabled(registry, reading.device):
                records.append(Record(partition, offset, Invalid("unknown_device")))
                continue
            meaning = Valid(reading.device, reading.metric, reading.value, reading.t_us)
            records.append(Record(partition, offset, meaning))
            if not _open_window(reading.t_us, watermark):
                continue  # late: compute() dead-letters it
            max_t = reading.t_us if max_t is None else max(max_t, reading.t_us)
            pair = (reading.device, reading.metric)
            latest[pair] = max(latest.get(pair, reading.t_us), reading.t_us)
            ref.watermark(registry, max_t - GRACE_S * S, {pair: latest[pair]})
        assert max_t is not None and len(pauses[partition]) == PHASES - 1
        final[partition] = max_t - GRACE_S * S
        absences += ref.out
    expected = compute(records, SHAPES, GRACE_S * S)
    return Reference(records, expected, final, pauses, absences)


def rules_changed(timeline: Timeline, **fields: Any) -> Timeline:
    """The same timeline with every window rule's ``fields`` replaced (what-ifs that show
    what the dataset exercises)."""

    def changed(registry: Registry) -> Registry:
        rules = tuple(dataclasses.replace(rule, **fields) for rule in registry.rules)
        return dataclasses.replace(registry, rules=rules)

    return Timeline(
        changed(timeline.initial),
        {phase: [changed(r) for r in regs] for phase, regs in timeline.switches.items()},
    )


def judge_windows(
    emitted: dict[tuple[str, str, str, int], dict[str, Any]],
    partition_of: dict[str, int],
    timeline: Timeline,
    pauses: dict[int, list[int]],
) -> list[dict[str, Any]]:
    """The window rules' transitions: each emitted window (key (device, metric, label, start
    µs), value its aggregates record), per series in close order, judged by the registry in
    use when it closed."""
    refs = {p: AlertReference() for p in range(PARTITIONS)}
    keyed = []
    for (device, metric, label, start), doc in emitted.items():
        end = start + SHAPES[label][0]
        keyed.append((end, device, metric, label, start, doc))
    for end, device, metric, label, start, doc in sorted(keyed, key=lambda k: k[:5]):
        partition = partition_of[device]
        registry = timeline.at_close(end, pauses[partition])
        refs[partition].window(registry, device, metric, label, start, end, doc)
    return [doc for p in range(PARTITIONS) for doc in refs[p].out]


# -- the servers ---------------------------------------------------------------------------


class Registrar:
    """The registry's changes through RegistryStore, on an event loop of its own."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.store = RegistryStore(Settings.from_env({"PULSE_POSTGRES_URL": url}))
        self.loop.run_until_complete(self.store.open())

    def apply(self, change: Change) -> int:
        """Commit the change; its version."""
        method, args, kwargs = change
        made = self.loop.run_until_complete(getattr(self.store, method)(*args, **kwargs))
        return int(made[1] if isinstance(made, tuple) else made)

    def history(self, limit: int) -> list[dict[str, Any]]:
        """The alert history's rows, newest first."""
        return self.loop.run_until_complete(self.store.alert_history(limit))

    def registry(self, version: int) -> Registry:
        return self.loop.run_until_complete(self.store.snapshot(version)).registry

    def close(self) -> None:
        self.loop.run_until_complete(self.store.close())
        self.loop.close()


class PhasedProducer:
    """Produces the readings in order, each to its partition and acknowledged before the
    next (so each offset is known), in a thread of its own, up to :meth:`release`'s limit;
    ``pace`` seconds between two records."""

    def __init__(self, broker: str, topic: str, readings: list[Reading], pace: float) -> None:
        self.broker, self.topic, self.readings, self.pace = broker, topic, readings, pace
        self.limit = 0
        self.offsets: list[tuple[int, int]] = []
        self.error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="phased-producer", daemon=True)

    def start(self) -> PhasedProducer:
        self._thread.start()
        return self

    def release(self, upto: int) -> None:
        self.limit = max(self.limit, upto)

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"producer failed: {self.error!r}") from self.error

    def wait_sent(self, upto: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.offsets) < upto:
            self.check()
            assert time.monotonic() < deadline, f"produced {len(self.offsets)} of {upto}"
            time.sleep(0.01)

    def close(self) -> None:
        self._stop = True
        self._thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._produce())
        except BaseException as exc:
            self.error = exc

    async def _produce(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap(self.broker), acks="all", linger_ms=0
        )
        await producer.start()
        try:
            for i, reading in enumerate(self.readings):
                while self.limit <= i:
                    if self._stop:
                        return
                    await asyncio.sleep(0.005)
                meta = await producer.send_and_wait(
                    self.topic,
                    value=reading.value_bytes(),
                    key=reading.device.encode(),
                    partition=reading.partition,
                )
                self.offsets.append((meta.partition, meta.offset))
                if self.pace:
                    await asyncio.sleep(self.pace)
        finally:
            await producer.stop()


def registry_versions(worker: WorkerProcess) -> dict[int, int]:
    """``pulse_registry_version`` per partition from the worker's ``/metrics`` ({} when it
    does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return {
        int(sample.labels["partition"]): int(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "pulse_registry_version"
    }


def wait_version(worker: WorkerProcess, version: int) -> None:
    """Until every partition judges by ``version`` (the drain that switched is done; the
    worker applies no record before its flush is stored)."""

    def using() -> bool:
        versions = registry_versions(worker)
        return sorted(versions) == list(range(PARTITIONS)) and set(versions.values()) == {version}

    wait_until(using, f"registry version {version} on every partition", [worker], poll=0.02)


def wait_applied(worker: WorkerProcess, ends: dict[int, int], producer: PhasedProducer) -> None:
    """Until the worker's partitions have applied every record below ``ends``."""

    def applied() -> bool:
        offsets = next_offsets(worker)
        return sorted(offsets) == list(range(PARTITIONS)) and all(
            offsets[p] >= ends.get(p, 0) for p in offsets
        )

    wait_until(applied, f"records up to {ends} applied", [worker], timeout=60)


def scenario_env(
    prefix: str, broker: str, redis_url: str, registry_url: str, required: bool
) -> dict[str, str]:
    env = pipeline_env(prefix, broker, redis_url, "http://127.0.0.1:9")
    env.update(
        PULSE_WINDOWS=WINDOWS,
        PULSE_GRACE=str(GRACE_S),
        PULSE_PARTITIONS=str(PARTITIONS),
        PULSE_POSTGRES_URL=registry_url,
        PULSE_REGISTRY_REQUIRED="true" if required else "false",
        PULSE_CLOSE_SPREAD="0",
        # No wall clock closes a window or fires an absence during the test (the stream is
        # of 2023): only records move the watermarks.
        PULSE_IDLE_CLOSE="3600",
        PULSE_INFLUX_WRITER="off",
        PULSE_STATS_INTERVAL="0",
        PULSE_WORKER_SERVES_API="false",
        PULSE_SESSION_TIMEOUT="2",
        PULSE_FLUSH_INTERVAL="0.1",
    )
    return env


# -- reading the outputs back --------------------------------------------------------------


def emitted_windows(
    broker: str, env: dict[str, str]
) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    """The aggregates topic by (device, metric, label, start µs); a repeat only identical."""
    found: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    for record in asyncio.run(kafka.read_all(broker, env["PULSE_TOPIC_AGGREGATES"])):
        assert record.value is not None
        doc = orjson.loads(record.value)
        key = (doc["device"], doc["metric"], doc["window"], round(doc["start"] * S))
        assert found.setdefault(key, doc) == doc, ("a window emitted twice, differently", key)
    return found


def distinct_transitions(
    docs: list[dict[str, Any]], what: str
) -> dict[tuple[str, str], dict[str, Any]]:
    """Transitions by (id, state); each key with one content."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in docs:
        key = (doc["id"], doc["state"])
        assert out.setdefault(key, doc) == doc, (f"{what}: one transition, two contents", key)
    return out


def alert_field(doc: dict[str, Any]) -> str:
    return f"{doc['rule']}:{doc['device']}:{doc['metric']}:{doc['window'] or ''}"


def active_at_the_end(transitions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The alerts the last transition of which (each alert's in emission order) fires."""
    last: dict[str, dict[str, Any]] = {}
    for doc in transitions:
        last[alert_field(doc)] = doc
    return {name: doc for name, doc in last.items() if doc["state"] == "firing"}


def assert_redis(redis_url: str, prefix: str, want: list[dict[str, Any]]) -> None:
    """The alerts writer's Redis: the firing alerts in ``P:alerts:active``, and each
    transition once in ``P:events``; waited for (it reads the topic at its own pace)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    wanted_active = active_at_the_end(want)
    wanted_events = distinct_transitions(want, "the reference")
    deadline = time.monotonic() + 30
    while True:
        active = {k: orjson.loads(v) for k, v in client.hgetall(f"{prefix}:alerts:active").items()}
        entries = cast(list[tuple[str, dict[str, str]]], client.xrange(f"{prefix}:events"))
        events = [orjson.loads(fields["alert"]) for _, fields in entries if "alert" in fields]
        if len(events) >= len(wanted_events) and active == wanted_active:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert active == wanted_active
    assert len(events) == len(wanted_events), "an alert event missing or twice"
    assert distinct_transitions(events, "the events") == wanted_events


def assert_history(registrar: Registrar, wanted: dict[tuple[str, str], dict[str, Any]]) -> None:
    """The alerts' history writer's PostgreSQL ``alert_history``: one row per transition,
    keyed by (id, state), holding its record; waited for (it reads the topic at its own
    pace)."""
    deadline = time.monotonic() + 30
    while True:
        rows = registrar.history(10 * len(wanted) + 100)
        found = {(row["id"], row["state"]): row["alert"] for row in rows}
        if len(found) >= len(wanted) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(rows) == len(found), "a transition twice in the history"
    assert sorted(found) == sorted(wanted)
    for key, doc in wanted.items():
        assert found[key] == doc, key


class NotifierProcess:
    """``pulse notifier`` in a subprocess of its own, its log in ``tmp_path``."""

    def __init__(self, env: dict[str, str], tmp_path: Path, name: str) -> None:
        self.env = {**os.environ, **env, "PULSE_NOTIFIER_PORT": str(free_port())}
        self.log = tmp_path / f"{name}.log"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pulse", "notifier", "-l", "info"],
                cwd=tmp_path, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(30)


def assert_delivered(receiver: Receiver, wanted: dict[tuple[str, str], dict[str, Any]]) -> int:
    """Once the notifier has caught up: the receiver got every transition that is not
    silenced, each under its key ``{id}:{state}`` with the transition as its body (repeats,
    after a notifier's crash, identical), and nothing else. Returns the requests."""
    expected = {f"{i}:{state}": doc for (i, state), doc in wanted.items() if not doc["silenced"]}

    def caught_up() -> bool:
        return {r.key for r in receiver.received("/all")} >= set(expected)

    deadline = time.monotonic() + 90
    while not caught_up():
        assert time.monotonic() < deadline, "the notifier did not deliver every transition"
        time.sleep(0.1)
    time.sleep(0.5)  # anything more would be an extra
    received = receiver.received("/all")
    bodies: dict[str, Any] = {}
    for request in received:
        body = orjson.loads(request.body)
        assert bodies.setdefault(request.key, body) == body, request.key
        assert request.headers["Pulse-Alert-Id"] == body["id"]
    assert set(bodies) == set(expected)
    for key, doc in expected.items():
        assert bodies[key] == doc, key
    return len(received)


# -- the scenario --------------------------------------------------------------------------


@dataclass
class Run:
    """A scenario's inputs and what the worker wrote."""

    readings: list[Reading]
    offsets: list[tuple[int, int]]
    timeline: Timeline
    env: dict[str, str]
    kills: list[tuple[int, int, int]] = field(default_factory=list)
    """(records applied, records produced, records of the phases so far) at each SIGKILL."""


def run_scenario(
    broker: str,
    redis_url: str,
    registry_url: str,
    prefix: str,
    tmp_path: Path,
    *,
    required: bool,
    kill_in: tuple[int, ...] = (),
    kill_after: tuple[tuple[int, int], ...] = (),
    kill_notifier_in: tuple[int, ...] = (),
    pace: float = 0.0,
) -> tuple[Run, dict[str, Any]]:
    """Produce the phases with the registry's changes at the quiet points between them;
    SIGKILL the worker in each phase of ``kill_in`` once half of its records are applied
    (restarted at once, while production goes on), and right after it switched to the
    change ``(phase, index)`` of ``kill_after`` (``plan``'s; before or after the flush that
    emits what the switch resolved, by chance), then awaiting that version again; a
    ``pulse notifier`` delivers to a webhook of every alert (a real receiver), SIGKILLed
    and restarted in each phase of ``kill_notifier_in`` as the phase's records arrive; then
    check the outputs (check_outputs) while the last worker runs (its alerts writer keeps
    Redis), and the deliveries."""
    env = scenario_env(prefix, broker, redis_url, registry_url, required)
    topic = env["PULSE_TOPIC_READINGS"]
    readings = build(prefix)
    changes = plan(prefix)
    asyncio.run(kafka.create_topics(broker, {topic: PARTITIONS}))
    registrar = Registrar(registry_url)
    receiver = Receiver().start()
    changes[0].append(("add_webhook", (receiver.url("/all"),), {}))
    producer = PhasedProducer(broker, topic, readings, pace).start()
    workers = [WorkerProcess(env, tmp_path, "worker-0").start()]
    notifiers = [NotifierProcess(env, tmp_path, "notifier-0")]
    kills: list[tuple[int, int, int]] = []
    try:
        versions = [registrar.apply(change) for change in changes[0]]
        timeline = Timeline(registrar.registry(versions[-1]))
        workers[-1].wait_ready()
        wait_version(workers[-1], versions[-1])
        ends: dict[int, int] = {}
        produced = 0
        for phase in range(PHASES):
            if phase:
                timeline.switches[phase] = []
                for index, change in enumerate(changes[phase]):
                    version = registrar.apply(change)
                    wait_version(workers[-1], version)
                    timeline.switches[phase].append(registrar.registry(version))
                    if (phase, index) in kill_after:
                        workers[-1].stop(signal.SIGKILL)
                        kills.append((produced, produced, produced))
                        workers.append(restart(env, tmp_path, len(workers)))
                        wait_version(workers[-1], version)
            start = produced
            while produced < len(readings) and readings[produced].phase == phase:
                ends[readings[produced].partition] = ends.get(readings[produced].partition, 0) + 1
                produced += 1
            producer.release(produced)
            if phase in kill_notifier_in:
                delivered = len(receiver.received())

                def some_delivered(delivered: int = delivered) -> int:
                    return len(receiver.received()) - delivered

                wait_until(some_delivered, "deliveries in the phase", [workers[-1]], poll=0.01)
                notifiers[-1].stop(signal.SIGKILL)
                notifiers.append(NotifierProcess(env, tmp_path, f"notifier-{len(notifiers)}"))
            if phase in kill_in:
                worker = workers[-1]
                half = (start + produced) // 2

                def halfway(worker: WorkerProcess = worker, half: int = half) -> int:
                    done = sum(next_offsets(worker).values())
                    return done if done >= half else 0

                done = wait_until(halfway, f"{half} records applied", [worker], poll=0.005)
                worker.stop(signal.SIGKILL)
                kills.append((done, len(producer.offsets), produced))
                workers.append(restart(env, tmp_path, len(workers)))
            producer.wait_sent(produced)
            wait_applied(workers[-1], ends, producer)
        assert produced == len(readings)
        run = Run(readings, list(producer.offsets), timeline, env, kills)
        figures = check_outputs(broker, redis_url, registrar, run, required)
        figures["deliveries"] = assert_delivered(receiver, figures["wanted"])
        return run, figures
    finally:
        producer.close()
        registrar.close()
        for notifier in notifiers[:-1]:
            notifier.stop(signal.SIGKILL)
        assert notifiers[-1].stop() == 0, notifiers[-1].log.read_text()[-3000:]
        receiver.stop()
        for worker in workers[:-1]:
            worker.stop(signal.SIGKILL)
        assert workers[-1].stop() == 0, workers[-1].log_tail()


def restart(env: dict[str, str], tmp_path: Path, number: int) -> WorkerProcess:
    worker = WorkerProcess(env, tmp_path, f"worker-{number}").start()
    worker.wait_ready()
    return worker


def check_outputs(
    broker: str, redis_url: str, registrar: Registrar, run: Run, required: bool
) -> dict[str, Any]:
    """Every alert output equals the reference; returns figures for the test to check the
    dataset with."""
    env, prefix = run.env, run.env["PULSE_REDIS_PREFIX"]
    assert [p for p, _ in run.offsets] == [r.partition for r in run.readings]
    ref = reference(run.readings, run.offsets, run.timeline, required)
    partition_of = {f"{prefix}-{s}": p for s, p in DEVICES.items()}
    # The windows: those the watermark passed, each once, as compute() has them.
    emitted = emitted_windows(broker, env)
    closed = {
        key: agg
        for key, agg in ref.expected.windows.items()
        if key[3] + SHAPES[key[2]][0] <= ref.final_watermark[partition_of[key[0]]]
    }
    assert set(emitted) == set(closed)
    for (device, metric, label, start), agg in closed.items():
        doc = {
            "device": device, "metric": metric, "window": label, "start": start // S,
            "end": (start + SHAPES[label][0]) // S, **agg,
        }  # fmt: skip
        assert_window_fields(emitted[(device, metric, label, start)], doc, (device, label, start))
    assert_dead_letter_set(broker, env, ref.expected)
    # The alerts.
    want = judge_windows(emitted, partition_of, run.timeline, ref.pauses) + ref.absences
    wanted = distinct_transitions(want, "the reference")
    stored = asyncio.run(kafka.read_all(broker, env["PULSE_TOPIC_ALERTS"]))
    for record in stored:
        assert record.value is not None
        assert record.key == orjson.loads(record.value)["device"].encode()
    found = distinct_transitions([orjson.loads(r.value or b"") for r in stored], "the topic")
    missing = sorted(set(wanted) - set(found), key=lambda k: wanted[k]["end"])
    extra = sorted(set(found) - set(wanted), key=lambda k: found[k]["end"])
    assert (missing, extra) == ([], []), (
        [wanted[k] for k in missing][:5],
        [found[k] for k in extra][:5],
    )
    for key, doc in wanted.items():
        assert found[key] == doc, key
    assert_redis(redis_url, prefix, want)
    assert_history(registrar, wanted)
    # What-ifs: without hysteresis, or with every ``for`` 1, the window rules' transitions
    # would differ.
    windows = want[: len(want) - len(ref.absences)]
    return {
        "transitions": want,
        "wanted": wanted,
        "pauses": ref.pauses,
        "stored": len(stored),
        "hysteresis matters": windows
        != judge_windows(
            emitted, partition_of, rules_changed(run.timeline, clear_threshold=None), ref.pauses
        ),
        "for matters": windows
        != judge_windows(
            emitted, partition_of, rules_changed(run.timeline, for_count=1), ref.pauses
        ),
    }


def assert_the_dataset_exercises_everything(figures: dict[str, Any], prefix: str) -> None:
    """The scenario must show what it is meant to: every rule firing and resolving, silenced
    and not, an absence resolved at a switch, a window rule resolved because it stopped
    applying to a device."""
    transitions: list[dict[str, Any]] = figures["transitions"]
    states = {(d["rule"], d["state"]) for d in transitions}
    rules = ("hot", "cold", "dry", "busy", "spiky", "quiet-hum", "quiet-temp", "quiet-hum-b")
    for rule in (*rules, "warm-hop"):
        assert {(rule, "firing"), (rule, "resolved")} <= states, rule
    assert {d["silenced"] for d in transitions} == {True, False}
    assert figures["hysteresis matters"] and figures["for matters"]
    pauses = {w for ws in figures["pauses"].values() for w in ws}
    at_switch = [
        d for d in transitions
        if d["window"] is None and d["state"] == "resolved" and round(d["start"] * S) in pauses
    ]  # fmt: skip
    assert {(d["rule"], d["device"]) for d in at_switch} >= {
        ("quiet-hum", f"{prefix}-c"),
        ("quiet-temp", f"{prefix}-a"),
    }
    disabled = figures["pauses"][DEVICES["a"]][1]  # device a's partition at the 2nd change
    assert any(
        d["device"] == f"{prefix}-a" and d["state"] == "resolved" and d["window"] is not None
        for d in transitions
        if round(d["end"] * S) > disabled
    ), "no alert of the disabled device resolved"


@pytest.mark.parametrize("broker", ["tansu"], indirect=True)
def test_alerts_equal_the_reference_across_registry_changes(
    broker: str, redis_url: str, registry_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    _, figures = run_scenario(
        broker, redis_url, registry_url, topic_prefix, tmp_path, required=False
    )
    assert_the_dataset_exercises_everything(figures, topic_prefix)
    print(f"{len(figures['transitions'])} transitions, {figures['stored']} records of alerts")


@pytest.mark.parametrize("broker", ["tansu"], indirect=True)
def test_alerts_are_exact_through_sigkills_between_registry_changes(
    broker: str, redis_url: str, registry_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    run, figures = run_scenario(
        broker,
        redis_url,
        registry_url,
        topic_prefix,
        tmp_path,
        required=True,
        kill_in=(1, 2),
        kill_after=((2, 1),),  # "quiet-hum" removed while it fires for device c
        kill_notifier_in=(2,),
        pace=0.002,
    )
    print(f"kills (applied, produced, phase end): {run.kills}; {figures['deliveries']} deliveries")
    mid_stream = [kill for kill in run.kills if kill[0] != kill[1] or kill[1] != kill[2]]
    assert len(mid_stream) == 2
    for applied, _, phase_end in mid_stream:
        assert applied < phase_end, "a kill must come while the phase's records arrive"
    assert_the_dataset_exercises_everything(figures, topic_prefix)
    print(f"{len(figures['transitions'])} transitions, {figures['stored']} records of alerts")
