"""pulse/measurements.py: the writers' lines hold exactly the names the declarations give."""

from __future__ import annotations

import re

import pytest

from models.outputs import AGGREGATES, ClosedWindow
from models.reading import DEAD_LETTER_REASONS
from pulse.measurements import (
    ALERTS,
    MEASUREMENTS,
    PULSE_STATS,
    PULSE_STATS_SINK,
    WINDOWS,
    FieldValue,
)
from pulse.sinks.alerts import alert_record
from pulse.sinks.influx import alert_line, line_protocol, line_protocol_lines
from tables.aggregators import Summary
from tests.helpers.alerts import absence_alert, window_alert

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


def test_alert_lines_are_the_declared_ones() -> None:
    firing = window_alert("hot", "dev-1", "t", "5m/1m", 60, 1, "firing", 91.5, site="plant a,1")
    absence = absence_alert("quiet", "dev-2", "h", "resolved", 25.5, 30, silenced=True)
    lines = [alert_line(alert_record(t.json())) for t in (firing, absence)]
    # Spelled out from the transitions: tags sorted and escaped, fields in declared order
    # (value only where there is one), the id quoted, time = the end in nanoseconds.
    assert lines == [
        r"alerts,device=dev-1,metric=t,rule=hot,severity=warning,site=plant\ a\,1,state=firing,"
        f'window=5m/1m value=91.5,threshold=80.0,silenced=false,id="{firing.id}" '
        f"{firing.end_us * 1000}",
        "alerts,device=dev-2,metric=h,rule=quiet,severity=critical,state=resolved "
        f'threshold=30.0,silenced=true,id="{absence.id}" {absence.end_us * 1000}',
    ]
    for line in lines:
        _, tags, fields, _ = parse(line.replace(r"\ ", "_").replace(r"\,", "_"))
        assert set(tags) <= set(ALERTS.tag_names)
        assert {t.name for t in ALERTS.tags if t.always} <= set(tags)
        assert list(fields) == [f for f in ALERTS.field_names if f in fields]
    assert ALERTS.precision == "ns"


def test_boolean_string_and_optional_fields_keep_to_their_kind() -> None:
    tags = {name: "x" for name in ("rule", "device", "severity", "state", "metric")}
    fields: dict[str, FieldValue] = {"threshold": 1, "silenced": False, "id": 'a"b\\c'}
    assert ALERTS.line(tags, fields, 5) == (
        "alerts,device=x,metric=x,rule=x,severity=x,state=x "
        r'threshold=1.0,silenced=false,id="a\"b\\c" 5'
    )
    with pytest.raises(ValueError, match="fields"):
        ALERTS.line(tags, {"value": 1.0, "silenced": True, "id": "i"}, 0)  # no threshold
    with pytest.raises(ValueError, match="not true or false"):
        ALERTS.line(tags, {**fields, "silenced": 1}, 0)
    with pytest.raises(ValueError, match="not text"):
        ALERTS.line(tags, {**fields, "id": 7}, 0)
    with pytest.raises(ValueError, match="not a number"):
        ALERTS.line(tags, {**fields, "threshold": "1"}, 0)
