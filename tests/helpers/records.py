"""Kafka records of readings for the tests of the batch path: single ones and generated
streams that mix the common reading with every kind of record the batch path leaves to
parse_reading (ints, tags, no ts, bad JSON, a wrong key, extreme numbers, other layouts)."""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka.structs import ConsumerRecord
from hypothesis import strategies as st

T0 = 1_795_315_440.0
"""An instant on the 10 s and 1 min grid, in seconds."""


def record(offset: int, value: bytes | None, key: bytes | None = b"d1") -> ConsumerRecord:
    size = len(value) if value is not None else -1
    return ConsumerRecord(
        "readings", 0, offset, 1_795_315_400_000, 0, key, value, None, 2, size, ()
    )


def reading(
    offset: int, device: str = "d1", ts: Any = T0, value: Any = 1.5, **more: Any
) -> ConsumerRecord:
    doc = {"device": device, "metric": "m", "value": value, "ts": ts, **more}
    return record(offset, orjson.dumps(doc), device.encode())


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
                ["common"] * 6 + ["int", "tags", "no_ts", "bad", "key", "edge", "spaced"]
            )
        )
        device = draw(devices)
        ts: Any = draw(times)
        value: Any = draw(st.floats(-1e6, 1e6, allow_nan=False))
        if kind == "bad":
            out.append(record(offset, draw(st.sampled_from([None, b"{", b'"x"', b"{}"]))))
            continue
        more: dict[str, Any] = {}
        if kind == "int":
            value = draw(st.integers(-1000, 1000))
        elif kind == "tags":
            more["tags"] = {"site": draw(st.sampled_from(["x", "y"]))}
        elif kind == "no_ts":
            ts = None
        elif kind == "edge":  # magnitudes where arithmetic overflows (value, ts or both)
            extreme = st.one_of(st.floats(min_value=1e290), st.floats(max_value=-1e290))
            if draw(st.booleans()):
                value = draw(extreme)
            if draw(st.booleans()):
                ts = draw(extreme)
        r = reading(offset, device, ts, value, **more)
        if kind == "spaced":  # a common reading, not in the compact shape: orjson reads it
            r.value = orjson.dumps(orjson.loads(r.value), option=orjson.OPT_INDENT_2)
        if ts is None:
            r.value = orjson.dumps({"device": device, "metric": "m", "value": value})
        if kind == "key":
            r.key = b"d9"
        out.append(r)
    return out
