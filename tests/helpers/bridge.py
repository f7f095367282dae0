"""Helpers of the bridge's tests: gateways' entries, the topics read back with their headers,
and the check that every entry is in Kafka exactly once, in its stream's order."""

from __future__ import annotations

import asyncio
import random
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
from aiokafka import AIOKafkaConsumer, TopicPartition

from models.entries import entry_order
from tests.helpers import kafka
from tests.helpers.worker import WorkerProcess
from tests.reference import Invalid, Valid


@dataclass(frozen=True)
class Entry:
    """An entry a gateway appends, and what it means."""

    stream: str
    fields: dict[str, str]
    meaning: Valid | Invalid | None = None
    """None: a valid reading without ts (its event time is the entry id's)."""


@dataclass(frozen=True)
class StoredEntry:
    """A record of the readings or dead-letter topic the bridge wrote."""

    topic: str
    partition: int
    offset: int
    stream: str
    entry_id: str
    token: int
    key: bytes | None
    value: bytes | None


def bridge_env(prefix: str, broker: str, redis_url: str, lease: float = 1.0) -> dict[str, str]:
    return {
        "PULSE_BROKER": broker,
        "PULSE_REDIS_URL": redis_url,
        "PULSE_APP_ID": f"{prefix}app",
        "PULSE_TOPIC_READINGS": f"{prefix}-readings",
        "PULSE_TOPIC_AGGREGATES": f"{prefix}-aggregates",
        "PULSE_TOPIC_DLQ": f"{prefix}-dlq",
        "PULSE_TOPIC_ALERTS": f"{prefix}-alerts",
        "PULSE_TOPIC_OUTPUT_DLQ": f"{prefix}-output-dlq",
        "PULSE_REDIS_PREFIX": prefix,
        "PULSE_PARTITIONS": "4",
        "PULSE_BRIDGE_LEASE": str(lease),
        "PULSE_MAX_MESSAGE_BYTES": "2048",
    }


def stream_name(prefix: str, gateway: int) -> str:
    return f"{prefix}:ingest:gw-{gateway}"


def append(client: redis.Redis, entries: Iterable[Entry]) -> list[tuple[str, str]]:
    """XADD each entry in order (one pipeline); returns (stream, entry id) of each."""
    entries = list(entries)
    pipe = client.pipeline(transaction=False)
    for entry in entries:
        pipe.xadd(entry.stream, entry.fields)  # type: ignore[arg-type]
    ids = pipe.execute()
    return [(e.stream, i.decode()) for e, i in zip(entries, ids, strict=True)]


async def read_stored(broker: str, topic: str) -> list[StoredEntry]:
    """Every record of ``topic`` the bridge wrote (the others are left out), in offset
    order per partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap(broker),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    out: list[StoredEntry] = []
    try:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        done: set[TopicPartition] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while len(done) < len(tps) and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for r in records:
                    headers = dict(r.headers)
                    if "pulse-stream" not in headers:
                        continue
                    out.append(
                        StoredEntry(
                            r.topic,
                            r.partition,
                            r.offset,
                            headers["pulse-stream"].decode(),
                            headers["pulse-entry"].decode(),
                            int(headers["pulse-lease"]),
                            r.key,
                            r.value,
                        )
                    )
            for tp in tps:
                highwater = consumer.highwater(tp)
                if highwater is not None and await consumer.position(tp) >= highwater:
                    done.add(tp)
        assert len(done) == len(tps), f"could not read {topic} to its end"
    finally:
        await consumer.stop()
    return sorted(out, key=lambda r: (r.partition, r.offset))


async def read_entries(
    broker: str, env: dict[str, str]
) -> tuple[list[StoredEntry], list[StoredEntry]]:
    """The bridge's records of the readings topic and of the dead-letter topic."""
    readings = await read_stored(broker, env["PULSE_TOPIC_READINGS"])
    letters = await read_stored(broker, env["PULSE_TOPIC_DLQ"])
    return readings, letters


def stored_entries(broker: str, env: dict[str, str]) -> tuple[list[StoredEntry], list[StoredEntry]]:
    """:func:`read_entries` outside an event loop."""
    return asyncio.run(read_entries(broker, env))


def assert_exactly_once(
    appended: Sequence[tuple[str, str]],
    readings: Sequence[StoredEntry],
    letters: Sequence[StoredEntry],
    invalid: set[tuple[str, str]] | None = None,
) -> None:
    """Every appended entry once in Kafka (a dead letter if it is in ``invalid``), none
    twice, nothing else; in each partition each stream's records in entry order."""
    seen: dict[tuple[str, str], list[StoredEntry]] = {}
    for record in [*readings, *letters]:
        seen.setdefault((record.stream, record.entry_id), []).append(record)
    twice = {k: [(r.topic, r.partition, r.offset, r.token) for r in v] for k, v in seen.items()}
    twice = {k: v for k, v in twice.items() if len(v) > 1}
    assert twice == {}, f"entries in Kafka more than once: {list(twice.items())[:5]}"
    missing = [k for k in appended if k not in seen]
    assert missing == [], f"{len(missing)} entries not in Kafka, e.g. {missing[:5]}"
    assert set(seen) == set(appended), "records of entries nobody appended"
    if invalid is not None:
        assert {(r.stream, r.entry_id) for r in letters} == invalid
    for records in (readings, letters):
        last: dict[tuple[int, str], tuple[int, int]] = {}
        for record in records:
            order = entry_order(record.entry_id)
            where = (record.partition, record.stream)
            assert order > last.get(where, (-1, -1)), f"out of stream order: {record}"
            last[where] = order


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def backlog(client: redis.Redis, streams: Iterable[str]) -> int:
    """Entries of the streams not yet in Kafka (the bridge trims what it has produced)."""
    return sum(int(client.xlen(s)) for s in streams)


class BridgeProcess(WorkerProcess):
    """``pulse bridge`` as a child process of the test (health and metrics on
    ``PULSE_BRIDGE_PORT``)."""

    def __init__(self, env: dict[str, str], work_dir: Path, name: str = "bridge") -> None:
        super().__init__(env, work_dir, name, command="bridge", port_variable="PULSE_BRIDGE_PORT")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
            return str(r.read().decode())

    def send(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)


@dataclass
class Gateways:
    """Several gateways appending paced entries to their streams, each in a thread of its
    own (a client each): fast up to :attr:`allowed` entries in all, then a trickle."""

    redis_url: str
    entries_by_gateway: list[list[Entry]]
    trickle_per_s: float = 20.0
    allowed: int = 0
    appended: list[tuple[str, str]] = field(default_factory=list)
    meanings: dict[tuple[str, str], Valid | Invalid | None] = field(default_factory=dict)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"gateway-{i}", daemon=True)
            for i in range(len(self.entries_by_gateway))
        ]

    @property
    def total(self) -> int:
        return sum(len(e) for e in self.entries_by_gateway)

    def allow(self, fraction: float) -> None:
        self.allowed = max(self.allowed, min(self.total, round(fraction * self.total)))

    def start(self) -> Gateways:
        for thread in self._threads:
            thread.start()
        return self

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"a gateway failed: {self.error!r}") from self.error

    def finish(self, timeout: float = 120.0) -> None:
        self.allow(1.0)
        for thread in self._threads:
            thread.join(timeout)
        self.check()
        assert len(self.appended) == self.total

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _run(self, gateway: int) -> None:
        try:
            client = redis.Redis.from_url(self.redis_url)
            rng = random.Random(gateway)
            entries = self.entries_by_gateway[gateway]
            i = 0
            while i < len(entries) and not self._stop.is_set():
                fast = len(self.appended) < self.allowed
                chunk = entries[i : i + (rng.randint(5, 40) if fast else 1)]
                ids = append(client, chunk)
                with self._lock:
                    self.appended += ids
                    for (stream, entry_id), entry in zip(ids, chunk, strict=True):
                        self.meanings[(stream, entry_id)] = entry.meaning
                i += len(chunk)
                time.sleep(0.002 if fast else 1 / self.trickle_per_s)
            client.close()
        except BaseException as exc:
            self.error = exc


def reading_fields(
    device: str,
    metric: str,
    value: float,
    t_us: int | None,
    tags: dict[str, str] | None,
    style: str,
) -> dict[str, str]:
    """A valid reading as entry fields (``fields`` or ``json`` style)."""
    if style == "json":
        doc: dict[str, Any] = {"device": device, "metric": metric, "value": value}
        if t_us is not None:
            doc["ts"] = t_us / 1_000_000
        if tags:
            doc["tags"] = tags
        return {"json": orjson.dumps(doc).decode()}
    fields = {"device": device, "metric": metric, "value": repr(float(value))}
    if t_us is not None:
        fields["ts"] = f"{t_us // 1_000_000}.{t_us % 1_000_000:06d}"
    for key, tag in (tags or {}).items():
        fields[f"tag.{key}"] = tag
    return fields


def kill(process: BridgeProcess) -> None:
    process.stop(signal.SIGKILL)
