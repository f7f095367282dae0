"""The output contract: what a closed window and a rejected record look like to the outside.

Pure formatting shared by every sink, so that the ``aggregates`` topic, Redis and InfluxDB
carry the same numbers. Numbers keep full precision: counts are ints, the other aggregates
Python floats (written with ``repr``, which round-trips exactly).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson

from tables import _speedups
from tables.aggregators import Summary
from tables.partition_state import ClosedWindow

seconds_text = _speedups.seconds_text
"""``seconds_text(t_us)``: epoch microseconds as epoch seconds in text, an integer when whole,
else the shortest repr of the nearest float (``1795315444250000`` -> ``1795315444.25``)::

    whole, rest = divmod(t_us, 1_000_000)
    return str(whole) if rest == 0 else repr(t_us / 1_000_000)

In C (tables/_speedups.c): every window output writes two and every latest value one."""


def tags_json(tags: dict[str, str]) -> str:
    return orjson.dumps(tags).decode() if tags else "{}"


def closed_window_json(window: ClosedWindow) -> bytes:
    """The value of an ``aggregates`` record: one JSON object, keys in this order::

        {"device", "metric", "window", "start", "end",
         "count", "sum", "min", "max", "mean", "first", "last", "p50", "p95", "p99", "tags"}

    Written from :meth:`ClosedWindow.aggregate_text` (the numbers every sink shares) rather
    than through a dict: device, metric and window label are validated names that JSON
    strings hold as they are (see models/reading.py and tables/windows.py).
    """
    count, total, low, high, mean, first, last, p50, p95, p99 = window.aggregate_text()
    return (
        f'{{"device":"{window.device}","metric":"{window.metric}","window":"{window.window}",'
        f'"start":{seconds_text(window.start_us)},"end":{seconds_text(window.end_us)},'
        f'"count":{count},"sum":{total},"min":{low},"max":{high},"mean":{mean},'
        f'"first":{first},"last":{last},"p50":{p50},"p95":{p95},"p99":{p99},'
        f'"tags":{tags_json(Summary.tags(window.state))}}}'
    ).encode()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that was not applied, with why. ``value`` is the record's original bytes."""

    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    max_value_bytes: int

    def document(self) -> dict[str, Any]:
        """The JSON value of the dead-letter record.

        The original value is kept as a UTF-8 string when it is valid UTF-8, else in base64
        with ``"value_encoding": "base64"``. A ``too_large`` value is cut to the size limit
        (``"value_truncated": true`` and ``"value_size"``) so that the dead letter itself
        cannot exceed the broker's message size.
        """
        doc: dict[str, Any] = {
            "reason": self.reason,
            "detail": self.detail,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": _text_or_none(self.key),
        }
        value = self.value
        if value is not None and len(value) > self.max_value_bytes:
            doc["value_truncated"] = True
            doc["value_size"] = len(value)
            value = value[: self.max_value_bytes]
        if value is None:
            doc["value"] = None
        else:
            try:
                doc["value"] = value.decode("utf-8")
            except UnicodeDecodeError:
                doc["value"] = base64.b64encode(value).decode("ascii")
                doc["value_encoding"] = "base64"
        return doc


def _text_or_none(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    return raw.decode("utf-8", "replace")
