"""Synthetic readings for demos, tests and benchmarks: deterministic for a given seed."""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer


@dataclass(frozen=True)
class SyntheticReadings:
    """``count`` readings over ``devices`` x ``metrics``, a random walk per series.

    Event time: ``start_ts + i * step`` seconds for reading ``i`` when ``start_ts`` is given
    (deterministic), else the wall clock when the reading is produced.
    """

    devices: int = 100
    metrics: tuple[str, ...] = ("temperature", "humidity")
    count: int = 10_000
    seed: int = 1
    start_ts: float | None = None
    step: float = 0.001
    sites: int = 4

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        rng = random.Random(self.seed)
        levels: dict[tuple[int, int], float] = {}
        width = max(4, len(str(self.devices - 1)))
        names = [f"dev-{i:0{width}d}" for i in range(self.devices)]
        for i in range(self.count):
            d = rng.randrange(self.devices)
            m = rng.randrange(len(self.metrics))
            level = levels.get((d, m), 20.0 + 10.0 * m) + rng.uniform(-0.5, 0.5)
            levels[(d, m)] = level
            ts = time.time() if self.start_ts is None else self.start_ts + i * self.step
            doc = {
                "device": names[d],
                "metric": self.metrics[m],
                "value": round(level, 3),
                "ts": round(ts, 6),
                "tags": {"site": f"site-{d % self.sites}"},
            }
            yield names[d].encode(), orjson.dumps(doc)


async def produce(
    kafka_options: Mapping[str, Any],
    topic: str,
    readings: SyntheticReadings,
    rate: float = 0.0,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Produce the readings (``rate`` per second, 0 = as fast as possible) with a producer
    made with ``kafka_options`` (:func:`pulse.kafka_clients.client_options`); returns the
    count."""
    producer = AIOKafkaProducer(**kafka_options, linger_ms=5, max_batch_size=64 << 10, acks="all")
    await producer.start()
    sent = 0
    began = time.monotonic()
    pending = []
    try:
        for key, value in readings:
            pending.append(await producer.send(topic, value=value, key=key))
            sent += 1
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - began)
                if ahead > 0.005:
                    await asyncio.sleep(ahead)
            if len(pending) >= 5_000:
                await asyncio.gather(*pending)
                pending.clear()
                if progress:
                    progress(sent)
        await asyncio.gather(*pending)
        if progress:
            progress(sent)
    finally:
        await producer.stop()
    return sent


def stream_of(prefix: str, device: bytes, streams: int) -> str:
    """The stream a gateway appends ``device``'s readings to: one of ``streams`` streams
    ``{prefix}:ingest:gw-{n}``, always the same for a device (its readings keep their order)."""
    return f"{prefix}:ingest:gw-{zlib.crc32(device) % streams}"


def entry_fields(value: bytes) -> dict[str, str]:
    """A reading's JSON as the fields of a stream entry (the fields form: ``tag.{key}`` for
    each tag)."""
    doc = orjson.loads(value)
    fields = {
        "device": doc["device"],
        "metric": doc["metric"],
        "value": repr(float(doc["value"])),
        "ts": repr(float(doc["ts"])),
    }
    for key, tag in (doc.get("tags") or {}).items():
        fields[f"tag.{key}"] = tag
    return fields


async def produce_to_streams(
    client: Any,
    prefix: str,
    readings: SyntheticReadings,
    streams: int = 4,
    rate: float = 0.0,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Append the readings to Redis streams as gateways do for ``pulse bridge`` (``client``:
    redis-py's asyncio client; ``rate`` per second, 0 = as fast as possible); returns the
    count."""
    sent = 0
    began = time.monotonic()
    pipe = client.pipeline(transaction=False)
    queued = 0
    for key, value in readings:
        pipe.xadd(stream_of(prefix, key, streams), entry_fields(value))
        queued += 1
        sent += 1
        if queued >= 500 or (rate > 0 and queued >= max(1, rate / 100)):
            await pipe.execute()
            queued = 0
            if progress:
                progress(sent)
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - began)
                if ahead > 0.005:
                    await asyncio.sleep(ahead)
    if queued:
        await pipe.execute()
    if progress:
        progress(sent)
    return sent
