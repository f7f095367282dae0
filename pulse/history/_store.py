"""What a reader of the time-series store gives: closed windows of one series in a range.

A window is a dict of :data:`models.outputs.WINDOW_FIELDS` (times in epoch seconds, an
integer when whole, as the ``aggregates`` records write them). Both readers read what the
InfluxDB writer wrote (pulse/sinks/influx.py: measurement = metric, tags ``device`` and
``window``, one field per aggregate, time = window start in milliseconds).
"""

from __future__ import annotations

from typing import Any, Protocol

from models.outputs import AGGREGATES

Window = dict[str, Any]


class StoreUnavailable(Exception):
    """The store could not answer (away, refusing, answering an error); the message says
    what it said, without a secret."""


class HistoryStore(Protocol):
    """Reads closed windows back from the time-series store."""

    @property
    def name(self) -> str:
        """What and where the store is, for messages (no secret)."""
        ...

    async def read(
        self, device: str, metric: str, window: str, since: float, until: float
    ) -> list[Window]:
        """The windows of (device, metric, window label) whose start is in ``[since,
        until)`` (epoch seconds), oldest first; :class:`StoreUnavailable` if the store
        cannot answer."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def seconds(ms: int) -> int | float:
    """Epoch milliseconds as the epoch seconds the ``aggregates`` records write: an integer
    when whole."""
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


def window_of(start_ms: int, size_ms: int, fields: dict[str, float]) -> Window | None:
    """A window from its start, its size and its aggregates as the store returned them (a
    float each; ``count`` a whole number); None when an aggregate is missing (a point not
    fully written)."""
    if any(fields.get(name) is None for name in AGGREGATES):
        return None
    out: Window = {name: float(fields[name]) for name in AGGREGATES}
    out["count"] = int(fields["count"])
    out["start"] = seconds(start_ms)
    out["end"] = seconds(start_ms + size_ms)
    return out
