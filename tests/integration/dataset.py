"""A deterministic multi-partition dataset that exercises every rule of the readings contract.

Event times start at ``T0`` (2023-11-14), far in the past, so that once the data is consumed
the idle close finishes every window and the final outputs are known exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from tests.reference import Invalid, Valid

T0_US = 1_700_000_000 * 1_000_000
METRICS = ("temperature", "humidity")
MAX_MESSAGE_BYTES = 2048


@dataclass(frozen=True)
class Entry:
    partition: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None
    meaning: Valid | Invalid


def _iso(t_us: int, zone: str) -> str:
    text = datetime.fromtimestamp(t_us // 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    text += f".{t_us % 1_000_000:06d}"
    return text + ("Z" if zone == "Z" else "+00:00")


def build(
    prefix: str,
    partitions: int = 4,
    per_device: int = 120,
    seed: int = 7,
    grace_us: int = 5_000_000,
) -> list[Entry]:
    """Readings of 6 devices (two per partition, some partitions shared), in production order."""
    rng = random.Random(seed)
    devices = [f"{prefix}-dev-{c}" for c in "abcdef"]
    entries: list[Entry] = []
    max_t: dict[int, int] = {}
    clock = {d: T0_US + i * 333_333 for i, d in enumerate(devices)}

    def valid(
        device: str, metric: str, value: float, t_us: int, style: str, tags: dict[str, str] | None
    ) -> None:
        partition = devices.index(device) % partitions
        doc: dict[str, object] = {"device": device, "metric": metric, "value": value}
        timestamp_ms = None
        if style == "epoch":
            doc["ts"] = t_us / 1_000_000
        elif style in ("Z", "offset"):
            doc["ts"] = _iso(t_us, style)
        else:  # no ts: the record timestamp is the event time (millisecond precision)
            t_us -= t_us % 1000
            timestamp_ms = t_us // 1000
        if tags is not None:
            doc["tags"] = tags
        entries.append(
            Entry(
                partition,
                device.encode(),
                orjson.dumps(doc),
                timestamp_ms,
                Valid(device, metric, float(value), t_us, tags),
            )
        )
        max_t[partition] = max(max_t.get(partition, t_us), t_us)

    for step in range(per_device):
        for device in devices:
            clock[device] += rng.randint(300_000, 900_000)
            t = clock[device]
            metric = METRICS[rng.randrange(2)]
            value = round(rng.uniform(-40, 60), 3) if rng.random() < 0.9 else rng.randint(-5, 5)
            style = ("epoch", "epoch", "epoch", "Z", "offset", "none")[rng.randrange(6)]
            tags = (
                None
                if rng.random() < 0.3
                else {"site": f"site-{rng.randrange(3)}", "line": str(step % 4)}
            )
            partition = devices.index(device) % partitions
            kind = rng.random()
            if kind < 0.06:  # out of order, within the grace period
                t = max_t.get(partition, t) - rng.randint(0, grace_us - 1)
            elif kind < 0.09:  # far too late for every window
                t = max_t.get(partition, t) - 300_000_000
            elif kind < 0.13 and partition in max_t:
                # Late for the 10s window, in time for the 1m one when that is still open.
                watermark = max_t[partition] - grace_us
                t = watermark - watermark % 10_000_000 - 1
            valid(device, metric, value, t, style, tags)
            if step % 37 == 5:  # an exact tie in event time: last/first go by offset
                valid(device, metric, value + 1.5, t, "epoch", tags)
        if step % 15 == 3:
            entries.extend(_malformed(devices[step % len(devices)], partitions, devices, step))
    return entries


def _malformed(device: str, partitions: int, devices: list[str], step: int) -> list[Entry]:
    partition = devices.index(device) % partitions
    key = device.encode()
    good = {"device": device, "metric": "temperature", "value": 1.0, "ts": T0_US / 1_000_000 + step}

    def entry(value: bytes | None, reason: str, entry_key: bytes | None = key) -> Entry:
        return Entry(partition, entry_key, value, None, Invalid(reason))

    cases = [
        entry(b"{not json", "invalid_json"),
        entry(b"\xff\xfe\x00binary", "invalid_json"),
        entry(None, "invalid_json"),
        entry(orjson.dumps([1, 2, 3]), "invalid_reading"),
        entry(orjson.dumps({**good, "value": True}), "invalid_reading"),
        entry(orjson.dumps({**good, "value": "21.5"}), "invalid_reading"),
        entry(orjson.dumps({k: v for k, v in good.items() if k != "metric"}), "invalid_reading"),
        entry(orjson.dumps({**good, "device": "bad device!"}), "invalid_reading"),
        entry(orjson.dumps(good), "invalid_reading", entry_key=b"someone-else"),
        entry(orjson.dumps({**good, "tags": {"window": "x"}}), "invalid_reading"),
        entry(orjson.dumps({**good, "ts": "2023-11-14T22:13:20"}), "invalid_reading"),
        entry(orjson.dumps({**good, "ts": 1e303}), "invalid_reading"),  # microseconds: inf
        entry(orjson.dumps({**good, "pad": "x" * MAX_MESSAGE_BYTES}), "too_large"),
    ]
    return [cases[(step + i) % len(cases)] for i in range(4)] if step < 40 else cases
