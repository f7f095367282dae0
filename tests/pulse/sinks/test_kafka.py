"""closed_window_json: the value of an ``aggregates`` record."""

from __future__ import annotations

import orjson

from models.outputs import ClosedWindow
from pulse.sinks.kafka import closed_window_json
from tables.aggregators import Summary

S = 1_000_000


def closed_window_document(window: ClosedWindow) -> dict:
    return orjson.loads(closed_window_json(window))


def window(tags_last: dict[str, str] | None = None) -> ClosedWindow:
    state = Summary.initialize(12 * S, 2.0, {"site": "old"})
    Summary.add(state, 11 * S, 1.0, None)
    Summary.add(state, 13 * S, 4.5, tags_last)
    return ClosedWindow("dev-1", "temperature", "10s", 10 * S, 20 * S, state)


def test_closed_window_document() -> None:
    doc = closed_window_document(window({"site": "plant-a"}))
    assert doc == {
        "device": "dev-1",
        "metric": "temperature",
        "window": "10s",
        "start": 10,
        "end": 20,
        "count": 3,
        "sum": 7.5,
        "min": 1.0,
        "max": 4.5,
        "mean": 2.5,
        "first": 1.0,
        "last": 4.5,
        "p50": doc["p50"],
        "p95": doc["p95"],
        "p99": doc["p99"],
        "tags": {"site": "plant-a"},
    }
    assert list(doc) == [
        "device",
        "metric",
        "window",
        "start",
        "end",
        "count",
        "sum",
        "min",
        "max",
        "mean",
        "first",
        "last",
        "p50",
        "p95",
        "p99",
        "tags",
    ]
    assert abs(doc["p50"] - 2.0) <= 0.02
    assert abs(doc["p95"] - 2.0) <= 0.02  # rank floor(0.95 * 2) = 1 of [1, 2, 4.5]
    assert abs(doc["p99"] - 2.0) <= 0.02
    assert type(doc["count"]) is int
    # numbers survive JSON exactly
    assert orjson.loads(orjson.dumps(doc)) == doc


def test_closed_window_tags_are_those_of_last_even_when_none() -> None:
    assert closed_window_document(window(None))["tags"] == {}


def test_fractional_window_bounds() -> None:
    state = Summary.initialize(1_500, 1.0, None)
    doc = closed_window_document(ClosedWindow("d", "m", "500ms", 1_000, 501_000, state))
    assert (doc["start"], doc["end"]) == (0.001, 0.501)
