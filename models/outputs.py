"""The output contract: what a closed window and a rejected record look like to the outside.

Pure formatting shared by every sink, so that the ``aggregates`` topic, Redis and InfluxDB
carry the same numbers. Numbers keep full precision: counts are ints, the other aggregates
Python floats (written with ``repr``, which round-trips exactly).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from tables.aggregators import Summary
from tables.partition_state import ClosedWindow

US_PER_SECOND = 1_000_000


def seconds(t_us: int) -> int | float:
    """Epoch microseconds as epoch seconds: an int when whole, else the nearest float."""
    whole, rest = divmod(t_us, US_PER_SECOND)
    return whole if rest == 0 else t_us / US_PER_SECOND


def closed_window_document(window: ClosedWindow) -> dict[str, Any]:
    """The value of an ``aggregates`` record (and of ``pulse:closed:*`` without ``tags``)."""
    doc: dict[str, Any] = {
        "device": window.device,
        "metric": window.metric,
        "window": window.window,
        "start": seconds(window.start_us),
        "end": seconds(window.end_us),
    }
    doc.update(window.result())
    doc["tags"] = Summary.tags(window.state)
    return doc


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
