"""The text every sink writes for a window: its aggregates, its times and its tags.

Shared so that the ``aggregates`` topic, Redis and InfluxDB carry the same numbers: counts
in decimal, floats as their shortest round-trip ``repr``.
"""

from __future__ import annotations

import orjson

from models.outputs import AggregateText, ClosedWindow, OpenView
from tables import _native
from tables.aggregators import Summary

seconds_text = _native.seconds_text
"""``seconds_text(t_us)``: epoch microseconds as epoch seconds in text, an integer when whole,
else the shortest repr of the nearest float (``1795315444250000`` -> ``1795315444.25``)."""


def aggregate_text(window: ClosedWindow | OpenView) -> AggregateText:
    """The window's aggregates as every output writes them: the text the drain computed once,
    or (a sliding view) computed now."""
    if window.text is not None:
        return window.text
    assert window.state is not None, "no open window"
    return Summary.text(window.state)


def tags_json(tags: dict[str, str]) -> str:
    return orjson.dumps(tags).decode() if tags else "{}"
