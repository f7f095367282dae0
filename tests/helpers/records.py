"""Kafka records of readings for the tests of the batch path: single ones and generated
streams that mix the common reading with every kind of record the batch path leaves to
parse_reading (ints, tags, no ts, bad JSON, a wrong key, extreme numbers, other layouts,
readings too far ahead of their record's timestamp, records without one)."""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka.structs import ConsumerRecord
from hypothesis import strategies as st

T0 = 1_795_315_440.0
"""An instant on the 10 s and 1 min grid, in seconds."""
STAMP = 1_795_315_640_000
"""The records' Kafka timestamp unless a test gives one (ms): T0 + 200 s, after the event
times of the readings here, so that none is too far ahead of it (PULSE_MAX_FUTURE)."""
MAX_FUTURE_US = 30_000_000
"""PULSE_MAX_FUTURE's default, in microseconds."""


def record(
    offset: int, value: bytes | None, key: bytes | None = b"d1", timestamp: Any = STAMP
) -> ConsumerRecord:
    size = len(value) if value is not None else -1
    return ConsumerRecord("readings", 0, offset, timestamp, 0, key, value, None, 2, size, ())


def reading(
    offset: int,
    device: str = "d1",
    ts: Any = T0,
    value: Any = 1.5,
    timestamp: Any = STAMP,
    **more: Any,
) -> ConsumerRecord:
    doc = {"device": device, "metric": "m", "value": value, "ts": ts, **more}
    return record(offset, orjson.dumps(doc), device.encode(), timestamp)


devices = st.sampled_from(["d1", "d2", "d3"])
times = st.integers(0, 240).map(lambda k: T0 + k / 2) | st.floats(T0, T0 + 150)


@st.composite
def records_(draw: Any) -> list[ConsumerRecord]:
    out = []
    offset = 0
    for _ in range(draw(st.integers(0, 60))):
        offset = draw(
            st.sampled_from([offset + 1, offset + 1, offset + 1, offset + 3, max(offset - 2, 0)])
        )
        kind = draw(
            st.sampled_from(
                ["common"] * 6
                + ["int", "tags", "no_ts", "bad", "key", "edge", "spaced", "repeated", "colon"]
            )
        )
        device = draw(devices)
        ts: Any = draw(times)
        # The record's timestamp: after every event time, among them (a reading may then be
        # too far ahead of it), or none, or at the ends of the integers.
        stamp = draw(
            st.one_of(
                st.just(STAMP),
                st.integers(0, 240).map(lambda k: round(T0 * 1000) + k * 500),
                st.sampled_from([None, -1, 0, 2**63 - 1, 2**64]),
            )
        )
        value: Any = draw(st.floats(-1e6, 1e6, allow_nan=False))
        if kind == "bad":
            bad = draw(st.sampled_from([None, b"{", b'"x"', b"{}"]))
            out.append(record(offset, bad, timestamp=stamp))
            continue
        more: dict[str, Any] = {}
        if kind == "int":
            value = draw(st.integers(-1000, 1000))
        elif kind == "tags":
            more["tags"] = {"site": draw(st.sampled_from(["x", "y"]))}
        elif kind == "no_ts":
            ts = None
        elif kind == "colon":  # a ':' in a string: the batch path leaves it to parse_reading
            more["unit"] = "m:s"
        elif kind == "edge":  # magnitudes where arithmetic overflows (value, ts or both)
            extreme = st.one_of(st.floats(min_value=1e290), st.floats(max_value=-1e290))
            if draw(st.booleans()):
                value = draw(extreme)
            if draw(st.booleans()):
                ts = draw(extreme)
        r = reading(offset, device, ts, value, stamp, **more)
        if kind == "spaced":  # a common reading, not in the compact shape: orjson reads it
            r.value = orjson.dumps(orjson.loads(r.value), option=orjson.OPT_INDENT_2)
        if ts is None:
            r.value = orjson.dumps({"device": device, "metric": "m", "value": value})
        if kind == "key":
            r.key = b"d9"
        if kind == "repeated":  # a member twice: rejected, whichever copy a parser takes
            r.value = r.value[:-1] + b',"value":' + orjson.dumps(value + 1) + b"}"
        out.append(r)
    return out
