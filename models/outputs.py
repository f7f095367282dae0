"""The output contract: the values a flush hands to every sink, immutable.

A closed window, the newest open window of a series, a latest value and a rejected record.
Each sink turns these into its own format (pulse/sinks); the aggregates themselves are
computed by tables/ and carried here as ``state`` and, formatted once for every sink, as
``text`` in the order of :data:`AGGREGATES`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, NamedTuple

AGGREGATES = ("count", "sum", "min", "max", "mean", "first", "last", "p50", "p95", "p99")
"""The aggregates of every window, in the order every output writes them."""

WINDOW_FIELDS = (*AGGREGATES, "start", "end")
"""The fields of a window as readers see it (API, history, Redis), in this order."""

AggregateText = tuple[str, ...]
"""The text of each aggregate, in the order of :data:`AGGREGATES`: ``count`` in decimal, the
others as the shortest text that reads back as the same float, always finite (see
models.reading.MAX_ABS_VALUE). Valid in JSON, line protocol and Redis alike."""

WindowState = list[Any]
"""A window's aggregator state, opaque here (its layout belongs to tables.aggregators)."""


class ClosedWindow(NamedTuple):
    """A window's final aggregates, emitted once when the watermark passes its end."""

    device: str
    metric: str
    window: str
    start_us: int
    end_us: int
    state: WindowState
    text: AggregateText | None = None
    """The aggregates' text, computed once at the drain for all sinks (None: not yet)."""


class OpenView(NamedTuple):
    """The newest open window of a series, or ``state=None`` when none is open any more;
    ``start_us`` and ``end_us`` are then those of the window whose close left the series
    without one (the version of the open window's removal in Redis)."""

    device: str
    metric: str
    window: str
    start_us: int
    end_us: int
    state: WindowState | None
    text: AggregateText | None = None
    """The aggregates' text when the view was drained: a snapshot, unlike ``state``."""


class Latest(NamedTuple):
    """The applied reading with the latest event time of a (device, metric)."""

    device: str
    metric: str
    t_us: int
    value: float
    offset: int
    """The partition's next input offset when the value was drained: with ``t_us``, the
    value's version (a later drain of the partition has applied at least as much input)."""


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
    timestamp: int | None = None
    """The record's Kafka timestamp (epoch ms; on the readings topic Pulse creates, the
    broker's time of appending it, which a replay reads again): the letter's event time, by
    which the indexer files it (pulse/search/documents.py). None, or negative: it has none."""

    def document(self) -> dict[str, Any]:
        """The JSON value of the dead-letter record.

        ``timestamp`` (after ``offset``) is the record's, when it has one. The original value
        is kept as a UTF-8 string when it is valid UTF-8, else in base64
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
        }
        if self.timestamp is not None and self.timestamp >= 0:
            doc["timestamp"] = self.timestamp
        doc["key"] = _text_or_none(self.key)
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


@dataclass(frozen=True, slots=True)
class EntryDeadLetter:
    """A Redis stream entry that ``pulse bridge`` did not produce, with why (it is no valid
    reading): for the readings' dead-letter topic, like a :class:`DeadLetter`, but found in a
    stream rather than a topic. ``stream`` and ``entry_id`` say which entry (together, a
    unique id of the dead letter); ``key`` is its device field, if any; ``value`` the JSON
    form's text or, for the fields form, the entry's fields as a JSON object."""

    reason: str
    detail: str
    stream: str
    entry_id: str
    key: bytes | None
    value: bytes | None
    max_value_bytes: int

    def document(self) -> dict[str, Any]:
        """The JSON value of the dead-letter record: a :class:`DeadLetter`'s members (its
        ``topic``, ``partition`` and ``offset`` null: the entry never was a record) and
        ``stream`` and ``entry_id``."""
        doc = DeadLetter(
            self.reason, self.detail, "", -1, -1, self.key, self.value, self.max_value_bytes
        ).document()
        doc.update(topic=None, partition=None, offset=None)
        doc["stream"] = self.stream
        doc["entry_id"] = self.entry_id
        return doc


@dataclass(frozen=True, slots=True)
class RefusedOutput:
    """An output its target refused for its content (a line InfluxDB will not take, a record
    Kafka refuses as too large), for the output dead-letter topic.

    ``sink``: which sink (``influx``, ``kafka``, ``alert-history``, ``webhooks``...);
    ``target``: where it was going (a topic, a bucket, a table, a webhook); ``reason``:
    ``refused`` (the target refused it), ``unreadable`` (a record of an output topic a writer
    cannot read) or ``undeliverable`` (a webhook delivery that failed every try);
    ``answer``: what the target said;
    ``key``: the output's key (the device); ``output``: the output itself as it was sent.
    """

    sink: str
    target: str
    reason: str
    answer: str
    key: bytes | None
    output: bytes
    max_output_bytes: int

    def document(self) -> dict[str, Any]:
        """The JSON value of the dead-letter record: the fields above, the output as UTF-8
        text (base64 with ``"output_encoding": "base64"`` when not UTF-8), cut to
        ``max_output_bytes`` (``"output_truncated": true`` and ``"output_size"``) so that
        the dead letter of an output refused as too large is not too large itself."""
        doc: dict[str, Any] = {
            "reason": self.reason,
            "sink": self.sink,
            "target": self.target,
            "answer": self.answer[:MAX_ANSWER_CHARS],
            "key": _text_or_none(self.key),
        }
        output = self.output
        if len(output) > self.max_output_bytes:
            doc["output_truncated"] = True
            doc["output_size"] = len(output)
            output = output[: self.max_output_bytes]
        try:
            doc["output"] = output.decode("utf-8")
        except UnicodeDecodeError:
            doc["output"] = base64.b64encode(output).decode("ascii")
            doc["output_encoding"] = "base64"
        return doc


MAX_ANSWER_CHARS = 4096
"""A target's answer is kept up to this long in a dead letter (InfluxDB's are a few lines)."""


def _text_or_none(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    return raw.decode("utf-8", "replace")
