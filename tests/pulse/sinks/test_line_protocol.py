"""line_protocol: one InfluxDB line per closed window; record_line: the same line from the
window's ``aggregates`` record."""

from __future__ import annotations

import sys

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.outputs import ClosedWindow
from pulse.sinks.influx import line_protocol, line_protocol_lines, record_line
from pulse.sinks.kafka import aggregate_records, closed_window_json
from tables.aggregators import Summary
from tests.tables.test_speedups import closed_window, reading_values, tags

S = 1_000_000


def closed(
    tags: dict[str, str] | None,
    metric: str = "temperature",
    window: str = "10s",
    start_us: int = 1_795_315_440 * S,
    values: tuple[float, ...] = (21.5, 22.0),
) -> ClosedWindow:
    state = Summary.initialize(start_us, values[0], tags)
    for i, value in enumerate(values[1:], 1):
        Summary.add(state, start_us + i, value, tags)
    return ClosedWindow("dev-0042", metric, window, start_us, start_us + 10 * S, state)


def fields_of(window: ClosedWindow) -> str:
    doc = orjson.loads(closed_window_json(window))
    return f"count={doc['count']}i," + ",".join(
        f"{name}={doc[name]!r}"
        for name in ("sum", "min", "max", "mean", "first", "last", "p50", "p95", "p99")
    )


def test_line() -> None:
    window = closed({"site": "plant-a"})
    doc = orjson.loads(closed_window_json(window))
    assert line_protocol(window) == (
        "temperature,device=dev-0042,site=plant-a,window=10s "
        f"count=2i,sum=43.5,min=21.5,max=22.0,mean=21.75,first=21.5,last=22.0,"
        f"p50={doc['p50']!r},p95={doc['p95']!r},p99={doc['p99']!r} 1795315440000"
    )


def test_tags_sorted_and_escaped() -> None:
    window = closed({"zone": "a b", "area": "x,y=z", "b": "back\\slash"}, window="5m/1m")
    assert line_protocol(window) == (
        r"temperature,area=x\,y\=z,b=back\\slash,device=dev-0042,window=5m/1m,zone=a\ b "
        + fields_of(window)
        + " 1795315440000"
    )


def test_empty_tag_values_are_omitted() -> None:
    window = closed({"site": "", "line": "2"})
    assert line_protocol(window).split(" ")[0] == "temperature,device=dev-0042,line=2,window=10s"


def test_no_tags() -> None:
    window = closed(None, window="sliding:1m")
    assert line_protocol(window).split(" ")[0] == "temperature,device=dev-0042,window=sliding:1m"


def test_integer_count_and_float_fields() -> None:
    window = closed(None, values=(1.0, 2.0, 3.0, 1e300, -0.5))
    line = line_protocol(window)
    field_text = line.split(" ")[1]
    fields = dict(part.split("=") for part in field_text.split(","))
    assert fields["count"] == "5i"
    assert fields["sum"] == repr(1.0 + 2.0 + 3.0 + 1e300 + -0.5) == "1e+300"
    assert fields["min"] == "-0.5"
    assert fields["first"] == "1.0"
    assert fields["last"] == "-0.5"
    for name in ("sum", "min", "max", "mean", "first", "last", "p50", "p95", "p99"):
        float(fields[name])  # every float field parses back
        assert not fields[name].endswith("i")


def test_timestamp_is_window_start_in_milliseconds() -> None:
    assert line_protocol(closed(None, start_us=1_795_315_444_250_000)).endswith(" 1795315444250")
    assert line_protocol(closed(None, start_us=1_999)).endswith(" 1")
    assert line_protocol(closed(None, start_us=-20 * S)).endswith(" -20000")


def test_measurement_is_the_metric() -> None:
    assert line_protocol(closed(None, metric="power.kW-1_a")).startswith("power.kW-1_a,device=")


def test_the_sinks_write_each_window_as_its_python_definition() -> None:
    # Every window comes out as closed_window_json and line_protocol write it, in order (the
    # C speedups write the tag-less ones themselves).
    windows = [
        closed(None),
        closed({"site": "a b,c=d"}),  # escaped in line protocol, a JSON object
        closed(None, values=(0.1, 0.2, -3.0)),
        closed(None, window="1m", start_us=0, values=(1e-300,)),
        closed({}, metric="m.x", values=(-0.0,)),
        closed(None, start_us=-1500, values=(2.5,)),  # before the epoch: ms floored
        closed(None, values=(1e290, 1e290))._replace(text=None),  # formatted on the spot
    ]
    windows[-1].state[1] = sys.float_info.max  # the largest sum: a number, as every sum is
    assert aggregate_records(windows) == [
        (window.device.encode(), closed_window_json(window)) for window in windows
    ]
    assert line_protocol_lines(windows) == [line_protocol(window) for window in windows]
    assert aggregate_records(windows)[5][1].startswith(b'{"device":"dev-0042"')


# -- the line of an aggregates record (what the InfluxDB writer reads back) ------------------

aligned_windows = st.builds(
    closed_window,
    st.sampled_from(["dev-1", "dév-2", "d" * 128]),
    st.sampled_from(["temperature", "m", "power.kW-1_a"]),
    st.sampled_from(["10s", "1m", "5m/1m", "250ms"]),
    # Window starts are whole milliseconds (window steps are), from long before the epoch
    # to far beyond any reading.
    st.integers(-(2**40), 2**40).map(lambda ms: ms * 1000) | st.sampled_from([0, 1_000]),
    st.lists(reading_values, min_size=1, max_size=4),
    tags,
    st.booleans(),
)


@settings(max_examples=500, deadline=None)
@given(window=aligned_windows)
def test_an_aggregates_record_gives_the_line_of_its_window(window: ClosedWindow) -> None:
    line = line_protocol(window)
    assert record_line(closed_window_json(window)) == line
    # Again, its series read before: with no tags, a start of whole seconds other than 0 and
    # an ASCII head, cut from its text (tables._native.aggregates_line), the same line.
    assert record_line(closed_window_json(window)) == line
    # The same record written by another JSON writer (other float texts, e.g. 1e300 for
    # 1e+300): the same point, field by field.
    again = record_line(orjson.dumps(orjson.loads(closed_window_json(window))))
    assert point(again) == point(line)


def point(line: str) -> tuple[str, dict[str, float | str], str]:
    """(series, fields by name as numbers, timestamp) of a line of Pulse's."""
    series, fields, timestamp = line.rsplit(" ", 2)
    values: dict[str, float | str] = {}
    for field in fields.split(","):
        name, text = field.split("=")
        values[name] = text if text.endswith("i") else float(text)
    return series, values, timestamp


def test_the_records_of_the_tests_windows_give_their_lines() -> None:
    windows = [
        closed({"site": "plant-a"}),
        closed({"zone": "a b", "area": "x,y=z", "b": "back\\slash"}, window="5m/1m"),
        closed({"site": "", "line": "2"}),
        closed(None, values=(1.0, 2.0, 3.0, 1e300, -0.5)),
        closed(None, start_us=1_795_315_444_250_000),
        closed(None, start_us=-20 * S, values=(-0.0,)),
    ]
    for window in windows:
        assert record_line(closed_window_json(window)) == line_protocol(window)


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"not json",
        b"[]",
        b'{"device": "d"}',
        orjson.dumps({**orjson.loads(closed_window_json(closed(None))), "count": 2.5}),
        orjson.dumps({**orjson.loads(closed_window_json(closed(None))), "sum": "1"}),
        orjson.dumps({**orjson.loads(closed_window_json(closed(None))), "device": ""}),
        orjson.dumps({**orjson.loads(closed_window_json(closed(None))), "tags": {"a": 1}}),
        orjson.dumps({**orjson.loads(closed_window_json(closed(None))), "start": "10"}),
    ],
)
def test_a_record_that_is_no_aggregates_record_is_refused_with_a_reason(
    value: bytes | None,
) -> None:
    record_line(closed_window_json(closed(None)))  # its series read before: bad is still bad
    with pytest.raises(ValueError, match="not an aggregates record"):
        record_line(value)
