"""pulse/measurements.py: the writers' lines hold exactly the names the declarations give."""

from __future__ import annotations

import re

import pytest

from models.outputs import AGGREGATES, ClosedWindow
from models.reading import DEAD_LETTER_REASONS
from pulse.measurements import MEASUREMENTS, PULSE_STATS, PULSE_STATS_SINK, WINDOWS
from pulse.sinks.influx import line_protocol, line_protocol_lines
from tables.aggregators import Summary

S = 1_000_000


def parse(line: str) -> tuple[str, dict[str, str], dict[str, str], int]:
    """(measurement, tags, fields as text, time) of a line without escaped characters."""
    head, fields, time = line.split(" ")
    measurement, *tags = head.split(",")
    return (
        measurement,
        dict(tag.split("=", 1) for tag in tags),
        dict(field.split("=", 1) for field in fields.split(",")),
        int(time),
    )


def window(tags: dict[str, str] | None) -> ClosedWindow:
    state = Summary.initialize(1_795_315_440 * S, 21.5, tags)
    Summary.add(state, 1_795_315_441 * S, 22.0, tags)
    return ClosedWindow("dev-1", "temperature", "10s", 1_795_315_440 * S, 1_795_315_450 * S, state)


@pytest.mark.parametrize("tags", [None, {"site": "plant-a"}, {"site": "b", "line": "2"}])
def test_window_lines_are_the_declared_ones(tags: dict[str, str] | None) -> None:
    closed = window(tags)
    # The Python line and the C extension's (the flush path) are the same text.
    assert line_protocol_lines([closed]) == [line_protocol(closed)]
    measurement, tag_values, fields, time = parse(line_protocol(closed))
    assert measurement == closed.metric  # WINDOWS.name is None: named by the metric
    assert time == closed.start_us // 1000
    assert list(fields) == list(WINDOWS.field_names) == list(AGGREGATES)
    for name, text in fields.items():
        assert text.endswith("i") == WINDOWS.field(name).integer, name
    always = {tag.name for tag in WINDOWS.tags if tag.always}
    assert set(tag_values) == always | set(tags or {})
    assert (tag_values["device"], tag_values["window"]) == ("dev-1", "10s")


def test_stats_line_formats_integers_floats_and_escaped_tags() -> None:
    fields = {name: i for i, name in enumerate(PULSE_STATS.field_names)}
    line = PULSE_STATS.line({"worker": "host a,1", "partition": "3"}, fields, 1_700_000_000_000)
    assert line == (
        r"pulse_stats,partition=3,worker=host\ a\,1 "
        + ",".join(f"{name}={i}i" for i, name in enumerate(PULSE_STATS.field_names))
        + " 1700000000000"
    )
    assert [f"dead_letters_{reason}" for reason in DEAD_LETTER_REASONS] == [
        name for name in PULSE_STATS.field_names if name.startswith("dead_letters_")
    ]


def test_a_line_must_match_its_declaration() -> None:
    fields = dict.fromkeys(PULSE_STATS_SINK.field_names, 0)
    tags = {"worker": "w", "sink": "kafka"}
    assert PULSE_STATS_SINK.line(tags, fields, 0).startswith(
        "pulse_stats_sink,sink=kafka,worker=w "
    )
    with pytest.raises(ValueError, match="tags"):
        PULSE_STATS_SINK.line({**tags, "partition": "1"}, fields, 0)
    with pytest.raises(ValueError, match="tags"):
        PULSE_STATS_SINK.line({"worker": "w"}, fields, 0)
    with pytest.raises(ValueError, match="fields"):
        PULSE_STATS_SINK.line(tags, {**fields, "errors": 1}, 0)
    with pytest.raises(ValueError, match="fields"):
        PULSE_STATS_SINK.line(tags, {"errors_refused": 1}, 0)
    with pytest.raises(ValueError, match="line_protocol"):
        WINDOWS.line({"device": "d", "window": "10s"}, dict.fromkeys(AGGREGATES, 1), 0)


def test_names_need_no_escaping_and_do_not_collide() -> None:
    name = re.compile(r"[a-z][a-z0-9_]*")
    names = [m.name for m in MEASUREMENTS if m.name is not None]
    assert len(set(names)) == len(names)
    for measurement in MEASUREMENTS:
        assert measurement.name is None or name.fullmatch(measurement.name)
        for item in (*measurement.field_names, *measurement.tag_names):
            assert name.fullmatch(item), item
        assert len(set(measurement.field_names)) == len(measurement.fields)
        assert not set(measurement.field_names) & set(measurement.tag_names)
