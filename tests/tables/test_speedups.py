"""The C extension (tables/_speedups.c) equals its Python definitions (tables/_speedups_py.py).

Each test calls both sides on two deep copies of the same generated arguments and compares,
by ``repr`` (so that -0.0, the types of numbers and containers, and the order of lists, dicts
and sets count): what each returned or which exception type it raised, and every argument
afterwards (the functions update the containers they are given). The pipeline test does
that for every call the worker's steps make, on generated fetches of records.

Skipped when the extension is not in use (``PULSE_NO_EXTENSIONS=1``, or not built).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
import types
from collections.abc import Callable, Iterator, KeysView, Sequence, ValuesView
from typing import Any

import hiredis
import orjson
import pytest
from aiokafka.structs import ConsumerRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.ingest import process_records
from models.alerts import AbsenceRule, Device, Registry
from models.outputs import ClosedWindow, Latest, OpenView
from models.reading import VALID_NAMES
from pulse.kafka_records import KafkaRecord
from pulse.sinks import kafka, redis
from pulse.sinks._base import FlushBatch
from pulse.sinks._text import aggregate_text, seconds_text
from pulse.sinks.history import HistoryEntry
from pulse.sinks.influx import line_protocol, line_protocol_lines
from pulse.sinks.kafka import closed_window_json
from pulse.sinks.redis import WINDOW_FIELD, WINDOW_FIELDS, RedisSink
from tables import _native, aggregators, partition_state
from tables import _speedups_py as py
from tables.aggregators import QuantileSketch, Summary
from tables.partition_state import PartitionState
from tables.windows import parse_windows
from tests.helpers.json_texts import hand_written_json
from tests.helpers.records import MAX_FUTURE_US, records_

pytestmark = pytest.mark.skipif(
    not _native.IN_C, reason="the C extension is not in use (PULSE_NO_EXTENSIONS, or not built)"
)
c: Any = importlib.import_module("tables._speedups") if _native.IN_C else None

S = 1_000_000
DICT_VIEWS = (KeysView, ValuesView)


def outcome(function: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, ...]:
    try:
        return ("returned", function(*args))
    except Exception as exc:
        return ("raised", type(exc))


def same(name: str, *args: Any) -> tuple[Any, ...]:
    """Calls C's and Python's ``name`` on two deep copies of ``args``; asserts that they
    return (or raise) the same and leave the arguments the same. Returns C's outcome.
    Views of a dict's keys or values (iterated only) are compared as lists."""
    args = tuple(list(arg) if isinstance(arg, DICT_VIEWS) else arg for arg in args)
    c_args, py_args = copy.deepcopy(args), copy.deepcopy(args)
    c_outcome = outcome(getattr(c, name), c_args)
    py_outcome = outcome(getattr(py, name), py_args)
    assert repr(c_outcome) == repr(py_outcome), name
    assert repr(c_args) == repr(py_args), name
    return c_outcome


def test_the_extension_and_the_definitions_have_the_same_functions_and_signatures() -> None:
    in_c = {name for name in vars(c) if not name.startswith("_")}
    in_python = {
        name
        for name, value in vars(py).items()
        if inspect.isfunction(value) and value.__module__ == py.__name__ and name[0] != "_"
    }
    assert in_python == in_c | set(_native.PYTHON_ONLY)
    assert in_c == {*_native.FUNCTIONS, "configure"}
    for name in in_c:
        c_parameters = inspect.signature(getattr(c, name)).parameters.values()
        py_parameters = inspect.signature(getattr(py, name)).parameters.values()
        assert [(p.name, p.kind) for p in c_parameters] == [
            (p.name, p.kind) for p in py_parameters
        ], name


# -- generated values -----------------------------------------------------------------------------

EDGES = [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1e-9, -1e-9, 1.0000001e-9]
EDGES += [1e-3, 0.1, 0.5, 1.0, 1e15, 2.0**53, 1e290, -1e290, 1e300, 1.7976931348623157e308]
finite = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(EDGES),
    st.floats(min_value=1e280, max_value=1e300),  # the largest readings, and beyond them
    st.floats(min_value=-1e300, max_value=-1e280),
    st.floats(-1e-300, 1e-300),  # subnormals and the zero bucket
    st.floats(-100, 100).map(lambda x: round(x, 2)),  # readings as sensors write them
)
reading_values = finite.filter(lambda x: abs(x) <= 1e290)  # models.reading.MAX_ABS_VALUE
tags: st.SearchStrategy[dict[str, str] | None] = st.one_of(
    st.none(), st.just({}), st.dictionaries(st.sampled_from(["site", "z"]), st.text())
)
times = st.integers(-(2**62), 2**62) | st.integers(0, 100 * S)
names = st.text(max_size=8) | st.sampled_from(["dev-1", "t", "dév", "m" * 130])


# -- the sketch and the summary -------------------------------------------------------------------


readings = st.lists(st.tuples(st.integers(0, 20), reading_values, tags), min_size=1, max_size=30)


@settings(max_examples=100, deadline=None)
@given(value=finite, full=st.booleans())
def test_a_summary_counts_in_its_sketch_and_collapses_it_beyond_the_buckets(
    value: float, full: bool
) -> None:
    # A full sketch (MAX_BUCKETS buckets) merges its two lowest buckets for a new one.
    state = py.summary_initialize(0, 1.5, None)
    state[9] = {k: k % 3 + 1 for k in range(QuantileSketch.MAX_BUCKETS)} if full else {}
    assert same("summary_add", state, 1, value, None)[0] == "returned"


@settings(max_examples=500, deadline=None)
@given(readings=readings)
def test_summaries_and_their_text(readings: list[tuple[int, float, Any]]) -> None:
    t, value, tags_ = readings[0]
    state = same("summary_initialize", t, value, tags_)[1]
    for t, value, tags_ in readings[1:]:
        same("summary_add", state, t, value, tags_)
        c.summary_add(state, t, value, tags_)
    assert same("summary_text", state)[1] == tuple(repr(v) for v in Summary.values(state))


@settings(max_examples=500, deadline=None)
@given(
    count=st.integers(-1, 10**6),
    total=finite | st.sampled_from([math.inf, -math.inf]),
    values=st.lists(finite, min_size=5, max_size=5),
    sketch=st.dictionaries(
        st.integers(-100, 100)  # positive values' buckets
        | st.integers(0, 100).map(lambda k: (1 << 20) + k)  # negative values'
        | st.just(1 << 21),  # zero's
        st.integers(1, 9),
    ),
)
def test_summary_text_of_any_state(
    count: int, total: float, values: list[float], sketch: dict[int, int]
) -> None:
    # States as a corrupt changelog could hold them: a sum beyond the floats (no reading
    # makes one), an empty sketch, a count that disagrees with the sketch, zero and negative
    # buckets (keys past NEGATIVE).
    low, high, first, last, extra = values
    sketch = {**sketch, **({QuantileSketch.key(extra): 2} if extra else {})}
    state = [count, total, low, high, 1, first, 2, last, None, sketch]
    same("summary_text", state)
    same("summary_text", state[:9])  # too short: TypeError


@settings(max_examples=500, deadline=None)
@given(x=finite | st.sampled_from([math.inf, -math.inf, math.nan]))
def test_the_text_of_a_float_is_its_repr(x: float) -> None:
    # A window of one reading: each aggregate is the value, written as repr writes it.
    state: list[Any] = [1, x, x, x, 0, x, 0, x, None, {}]
    if x != 0:
        assert same("summary_text", state) == ("returned", (("1",) + (repr(x),) * 9))


@settings(max_examples=500, deadline=None)
@given(t=times | st.integers() | st.sampled_from([2**53 + 1, -(2**53) - 1, 10**30 + 1]))
def test_seconds_text(t: int) -> None:
    whole, rest = divmod(t, S)
    assert same("seconds_text", t) == ("returned", str(whole) if rest == 0 else repr(t / S))


# -- window state ---------------------------------------------------------------------------------

specs = st.lists(
    st.tuples(st.integers(1, 40), st.integers(1, 40)).map(lambda x: (max(x), min(x))),
    min_size=1,
    max_size=3,
).map(lambda sizes: tuple((i, size * S, step * S) for i, (size, step) in enumerate(sizes)))


@settings(max_examples=300, deadline=None)
@given(
    specs=specs,
    readings=st.lists(st.tuples(st.integers(-50, 200), reading_values, tags), max_size=20),
    watermark=st.integers(-100, 100).map(lambda w: w * S) | st.just(-(2**63)),
)
def test_apply_windows(
    specs: tuple[tuple[int, int, int], ...],
    readings: list[tuple[int, float, Any]],
    watermark: int,
) -> None:
    windows: dict[Any, list[Any]] = {}
    changed: set[Any] = set()
    for t_s, value, tags_ in readings:
        args = (windows, changed, specs, "d", "m", value, t_s * S, tags_, watermark)
        same("apply_windows", *args)
        c.apply_windows(*args)
    same("apply_windows", {}, set(), ((0, 0, 1),), "d", "m", 1.0, 0, None, 0)  # ValueError
    many = tuple((i, S, S) for i in range(65))
    same("apply_windows", {}, set(), many, "d", "m", 1.0, 0, None, 0)  # TypeError


def test_a_key_with_a_spec_index_out_of_range_is_an_index_error_on_both_sides() -> None:
    # The loops index the labels (and sizes) tuples with a key's spec index; a key that names
    # no configured spec must raise IndexError, never read past the tuple or wrap around.
    state = Summary.initialize(1 * S, 1.5, None)
    labels, sizes = ("10s", "1m"), (10 * S, 60 * S)
    for index in (2, -1):
        key, series = ("d", "m", index, 0), ("d", "m", index)
        windows = {key: state}
        for name, args in (
            ("delta_rows", ([key], None, labels)),
            ("open_views", ({series}, set(), {series: 0}, windows, labels, sizes, [], OpenView)),
            (
                "close_windows",
                ([key], 10 * S, windows, [], set(), set(), {}, set(), {}, labels, ClosedWindow),
            ),
        ):
            assert same(name, *args) == ("raised", IndexError)
            with pytest.raises(IndexError, match="spec index is out of range"):
                getattr(c, name)(*args)
            with pytest.raises(IndexError, match="spec index is out of range"):
                getattr(py, name)(*args)


pairs = st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(["m", "n"]))
latest_values = st.tuples(st.integers(0, 10 * S), reading_values)


@settings(max_examples=300, deadline=None)
@given(
    changed=st.sets(pairs),
    latest=st.dictionaries(pairs, latest_values),
    updates=st.lists(st.tuples(pairs, latest_values), max_size=10),
)
def test_latest_values(
    changed: set[tuple[str, str]],
    latest: dict[tuple[str, str], tuple[int, float]],
    updates: list[tuple[tuple[str, str], tuple[int, float]]],
) -> None:
    for (device, metric), (t, value) in updates:
        same("update_latest", latest, changed, device, metric, t, value)
        c.update_latest(latest, changed, device, metric, t, value)


def wrapped(name: str) -> Callable[..., Any]:
    """``name`` in use, checked against the other side at every call (see :func:`same`)."""
    in_use = getattr(_native, name)

    def call(*args: Any) -> Any:
        same(name, *args)
        return in_use(*args)

    return call


@pytest.fixture
def every_call_compared(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every call of the window state's and the sinks' functions compared on both sides."""
    for name in ("apply_common", "apply_windows", "close_windows", "delta_rows"):
        monkeypatch.setattr(partition_state, name, wrapped(name))
    for name in ("open_views", "update_latest"):
        monkeypatch.setattr(partition_state, name, wrapped(name))
    for name in ("latest_writes", "open_view_writes", "closed_window_writes", "window_write"):
        monkeypatch.setattr(_native, name, wrapped(name))
    for name in ("aggregate_records", "line_protocol_lines"):
        monkeypatch.setattr(_native, name, wrapped(name))
    monkeypatch.setattr(Summary, "initialize", staticmethod(wrapped("summary_initialize")))
    monkeypatch.setattr(Summary, "add", staticmethod(wrapped("summary_add")))
    monkeypatch.setattr(Summary, "text", staticmethod(wrapped("summary_text")))
    assert aggregators.Summary is Summary
    yield


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    windows=st.sampled_from(["10s", "10s,1m", "30s/10s", "10s,20s/5s", "10s,sliding:30s"]),
    grace_s=st.sampled_from([0, 2, 5]),
    records=records_(),
    chunk=st.integers(1, 25),
    drains=st.lists(st.sampled_from(["drain", "snapshot", "spread", "idle"]), min_size=3),
    registry=st.sampled_from(["none", "absence", "required"]),
)
def test_the_worker_steps_call_both_sides_alike(
    every_call_compared: None,
    windows: str,
    grace_s: int,
    records: list[ConsumerRecord],
    chunk: int,
    drains: list[str],
    registry: str,
) -> None:
    VALID_NAMES.clear()
    state = PartitionState(parse_windows(windows), grace_s * S)
    if registry != "none":
        # the batch path's stops: readings left for an absence rule, an unknown device (d3),
        # and right after the record whose watermark reaches an absence deadline
        state.use_registry(
            Registry(
                1,
                devices=(Device("d1"), Device("d2")),
                absence_rules=(AbsenceRule("quiet", "m", 3 * S),),
            ),
            required=registry == "required",
        )
    sink = RedisSink("redis://127.0.0.1:1", "pülse", ttl_seconds=60)
    flushes = iter(drains * (len(records) // chunk + 2))
    for begin in range(0, len(records) + 1, chunk):
        process_records(state, records[begin : begin + chunk], 4096, MAX_FUTURE_US, lambda *_: None)
        how = next(flushes)
        if how == "idle":
            state.advance_idle(state.watermark + 20 * S)
        drained = state.drain(snapshot=how == "snapshot", spread_us=4 * S if how == "spread" else 0)
        batch = FlushBatch.of([drained], [])
        sink._commands(batch)
        kafka.aggregate_records(batch.closed)
        redis.window_hset("k", ("1",) * 10, 0, S, "1:1")
        line_protocol_lines(batch.closed)


# -- the sinks' outputs ---------------------------------------------------------------------------


def closed_window(
    device: str, metric: str, label: str, start: int, values: list[float], tags_: Any, text: bool
) -> ClosedWindow:
    state = Summary.initialize(start, values[0], tags_)
    for value in values[1:]:
        Summary.add(state, start + 1, value, tags_)
    return ClosedWindow(
        device, metric, label, start, start + 10 * S, state, Summary.text(state) if text else None
    )


windows_ = st.builds(
    closed_window,
    st.sampled_from(["dev-1", "dév-2", "d" * 128]),
    st.sampled_from(["temperature", "m"]),
    st.sampled_from(["10s", "1m", "5m/1m"]),
    st.integers(-20, 20).map(lambda k: k * 5 * S) | times,
    st.lists(reading_values, min_size=1, max_size=4),
    tags,
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(closed=st.lists(windows_, max_size=8), largest=st.booleans())
def test_closed_window_outputs(closed: list[ClosedWindow], largest: bool) -> None:
    if largest and closed:  # the largest sum a window can hold: written as any other
        closed[0].state[1] = -1.7976931348623157e308
        closed[0] = closed[0]._replace(text=Summary.text(closed[0].state))
    same("aggregate_records", closed, closed_window_json)
    same("line_protocol_lines", closed, line_protocol)
    assert (
        same("closed_window_writes", closed, "pülse:closed:", "pülse:top:", WINDOW_FIELD)[0]
        == "returned"
    )
    same("closed_window_writes", closed, "p", "p", WINDOW_FIELDS)  # TypeError (a field per value)
    same("closed_window_writes", closed, "p", b"p", WINDOW_FIELD)  # TypeError
    same("closed_window_writes", closed, "p", "p", WINDOW_FIELD.encode())  # TypeError
    same("closed_window_writes", closed, "p", "p", WINDOW_FIELD, 60)  # TypeError (a TTL)
    long = closed_window_list("x" * 1000)
    same("closed_window_writes", long, "p" * 30, "p", WINDOW_FIELD)  # ValueError
    same("closed_window_writes", long, "p", "p" * 1020, WINDOW_FIELD)  # ValueError
    same("closed_window_writes", [("d", "m")], "p", "p", WINDOW_FIELD)  # TypeError
    same("aggregate_records", [("d", "m")], closed_window_json)  # TypeError


def open_view(window: ClosedWindow, closed: bool) -> OpenView:
    if closed:  # the removal, versioned by the start of the window that closed
        return OpenView(
            window.device, window.metric, window.window, window.start_us, window.end_us, None
        )
    return OpenView(*window)


ttl_sets = st.dictionaries(
    st.sampled_from(["p:10s:dev-1:m", "p:1m:dév-2:temperature", "p:10s:dev-1:temperature"]),
    st.tuples(st.integers(-20, 20).map(lambda k: k * 5 * S), st.floats(0, 200)),
)


@settings(max_examples=300, deadline=None)
@given(
    views=st.lists(st.tuples(windows_, st.booleans()).map(lambda x: open_view(*x)), max_size=8),
    ttl_set=ttl_sets,
    now=st.floats(0, 300),
    ttl=st.integers(1, 200),
)
def test_open_view_writes(
    views: list[OpenView], ttl_set: dict[str, tuple[int, float]], now: float, ttl: int
) -> None:
    assert same("open_view_writes", views, "p:", ttl_set, now, ttl, WINDOW_FIELD)[0] == "returned"
    same("open_view_writes", views, "p:", ttl_set, now, ttl, WINDOW_FIELDS)  # TypeError
    same("open_view_writes", views, "p:", ttl_set, now, ttl, WINDOW_FIELD.encode())  # TypeError
    same("open_view_writes", views, "p:", ttl_set, now, ttl, WINDOW_FIELD, "s")  # TypeError
    same("open_view_writes", views, "p:", ttl_set, "now", ttl, WINDOW_FIELD)  # TypeError
    same("open_view_writes", views, "p:", ttl_set, now, ttl + 0.5, WINDOW_FIELD)  # TypeError
    same("open_view_writes", views, "p:", ttl_set, now, 2**63, WINDOW_FIELD)  # OverflowError
    # A remembered time that is no number: TypeError if the start is the view's, else unread.
    for shift in (0, 1):
        odd = {f"p:{v.window}:{v.device}:{v.metric}": (v.start_us + shift, "soon") for v in views}
        same("open_view_writes", views, "p:", odd, now, ttl, WINDOW_FIELD)
    long = [open_view(w, False) for w in closed_window_list("x" * 1000)]
    same("open_view_writes", long, "p" * 30, {}, now, ttl, WINDOW_FIELD)  # ValueError
    # A version beyond 128 bytes (a start no int could be): ValueError on both sides.
    huge = [view._replace(start_us=10**130) for view in views]
    same("open_view_writes", huge, "p:", {}, now, ttl, WINDOW_FIELD)


def closed_window_list(device: str) -> list[ClosedWindow]:
    return [closed_window(device, "m", "10s", 0, [1.0], None, True)]


@settings(max_examples=300, deadline=None)
@given(
    latest=st.lists(
        st.builds(
            Latest,
            st.sampled_from(["dev-1", "dév-2", "d3"]),
            st.sampled_from(["temperature", "humidity", "m" * 128]),
            times,
            reading_values,
            st.integers(0, 2**63 - 1),
        ),
        max_size=10,
    ),
    ttl_set=st.dictionaries(st.sampled_from(["dev-1", "d3"]), st.floats(0, 200)),
    now=st.floats(0, 300),
    ttl=st.integers(1, 200),
)
def test_latest_writes(
    latest: list[Latest], ttl_set: dict[str, float], now: float, ttl: int
) -> None:
    same("latest_writes", latest, "pülse:device:", ttl_set, now, ttl)
    for bad in (
        Latest("d", "m" * 129, 0, 1.0, 0),  # ValueError
        Latest("d" * 1100, "m", 0, 1.0, 0),  # ValueError
        Latest("d", "m", 0, 1.0, 10**130),  # a version beyond 128 bytes: ValueError
        Latest("d", "m", 0, 1, 0),  # TypeError
    ):
        same("latest_writes", [bad], "p:", {}, now, ttl)
    same("latest_writes", [("d", "m", 0, 1.0)], "p:", {}, now, ttl)  # TypeError
    same("latest_writes", latest, "p:", {}, now, ttl, "s")  # TypeError
    same("latest_writes", latest, "p:", [], now, ttl)  # TypeError
    same("latest_writes", latest, "p:", {}, None, ttl)  # TypeError
    same("latest_writes", latest, "p:", {}, now, float(ttl))  # TypeError
    same("latest_writes", latest, "p:", {}, now, -(2**63) - 1)  # OverflowError


@settings(max_examples=300, deadline=None)
@given(
    key=st.text(max_size=20) | st.just("k" * 1025),
    version=st.text(max_size=20) | st.just("1" * 129),
    pairs_=st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), max_size=70),
)
def test_window_write(key: str, version: str, pairs_: list[tuple[str, str]]) -> None:
    names_ = tuple(name for name, _ in pairs_)
    values = tuple(value for _, value in pairs_)
    # More than 64 fields, a key over 1024 bytes or a version over 128: ValueError.
    same("window_write", key, version, names_, values)
    same("window_write", key, version, names_, (*values, "x"))  # ValueError
    same("window_write", key, version, names_, tuple(1 for _ in values))  # TypeError
    same("window_write", None, version, names_, values)  # TypeError
    same("window_write", key, 1, names_, values)  # TypeError
    same("window_write", key, version, list(names_), values)  # TypeError
    same("window_write", key, version, names_, list(values))  # TypeError
    same("window_write", key, version, names_)  # TypeError
    same("window_write", key, version, names_, values, 60)  # TypeError (a TTL)


# -- parsing --------------------------------------------------------------------------------------

DOCUMENT = {"device": "dev-1", "metric": "t", "value": 1.5, "ts": 1795315444.25}


@settings(max_examples=1000, deadline=None)
@given(
    value=st.one_of(
        hand_written_json(),
        st.fixed_dictionaries(
            {},
            optional={
                "device": names,
                "metric": names,
                "value": finite | st.integers(-(2**63), 2**63 - 1) | st.none(),
                "ts": finite | st.integers(0, 2**63 - 1) | st.sampled_from([0.5e-6, 1.5e-6, 4e9]),
                "tags": tags,
            },
        ).map(lambda doc: orjson.dumps({**DOCUMENT, **doc})),
        st.binary(max_size=30),
    ),
    key=st.sampled_from([b"dev-1", b"dev-2", b"t", b"", None]),
    max_bytes=st.sampled_from([4096, 30]),
    timestamp=st.one_of(
        st.integers(1_795_315_400_000, 1_795_315_500_000),  # around DOCUMENT's ts
        st.integers(-(2**64), 2**64),
        st.sampled_from([None, -1, 0, 4 * 10**12, 4 * 10**12 + 1, 2**63 - 1, 2**63, 1.5e12]),
    ),
    max_future_us=st.one_of(
        st.sampled_from([0, 30_000_000, 2**63 - 1]),
        st.integers(0, 10**8),
        st.sampled_from([-1, 2**63, 1.5]),  # ValueError, OverflowError, TypeError
    ),
)
def test_apply_common_parses_like_the_definition(
    value: bytes, key: bytes | None, max_bytes: int, timestamp: Any, max_future_us: Any
) -> None:
    # apply_common's C scans the common reading's JSON by hand (orjson only when unsure):
    # it must take and refuse exactly the records the Python definition does, also by how
    # far ahead of its record's timestamp (any int, or none) a reading is.
    VALID_NAMES.update({"dev-1": "dev-1", "dev-2": "dev-2", "t": "t", "temperature": "temperature"})
    applied_alike(key, value, max_bytes, timestamp, max_future_us)


def applied_alike(
    key: bytes | None,
    value: bytes,
    max_bytes: int,
    timestamp: Any = 1_795_315_444_250,
    max_future_us: Any = 30_000_000,
) -> tuple[Any, ...]:
    """apply_common on a fresh partition's state and one record, on both sides (see same)."""
    record = ConsumerRecord("readings", 0, 7, timestamp, 0, key, value, None, 0, 0, ())
    no_time = partition_state.NO_WATERMARK
    return same(
        "apply_common",
        [record],
        0,
        max_bytes,
        max_future_us,
        VALID_NAMES,
        orjson.loads,
        ((0, 10 * S, 10 * S),),
        0,
        [0, no_time, no_time, partition_state.NO_DEADLINE],
        {},
        set(),
        {},
        [],
        {},
        set(),
        {},
        {},
        set(),
        {},
        None,
    )


def test_the_common_reading_is_applied_alike() -> None:
    VALID_NAMES.update({"dev-1": "dev-1", "t": "t"})
    assert applied_alike(b"dev-1", orjson.dumps(DOCUMENT), 4096) == ("returned", 1)
    position = [
        0,
        partition_state.NO_WATERMARK,
        partition_state.NO_WATERMARK,
        partition_state.NO_DEADLINE,
    ]
    latest: dict[Any, Any] = {}
    value = orjson.dumps(DOCUMENT)
    stamp = 1_795_315_444_250 - 30_000  # the ts is exactly PULSE_MAX_FUTURE ahead of it
    record = ConsumerRecord("readings", 0, 7, stamp, 0, b"dev-1", value, None, 0, 0, ())
    args: tuple[Any, ...] = (
        30_000_000,
        VALID_NAMES,
        orjson.loads,
        ((0, 10 * S, 10 * S),),
        0,
        position,
        {},
        set(),
        {},
        [],
    )
    assert c.apply_common([record], 0, 4096, *args, {}, set(), {}, latest, set(), {}, None) == 1
    assert latest == {("dev-1", "t"): (1795315444250000, 1.5)}
    assert position == [8, 1795315444250000, 1795315444250000, partition_state.NO_DEADLINE]


@pytest.mark.parametrize(
    ("ts", "stamp", "taken"),
    [
        (1795315444.25, 1_795_315_414_250, True),  # exactly PULSE_MAX_FUTURE ahead
        (1795315444.250001, 1_795_315_414_250, False),  # a microsecond more
        (1795315444.25, 1_795_315_414_249, False),
        (1795315444.25, 1_795_315_444_250 - 10 * 365 * 86_400_000, False),  # ten years
        (1795315444.25, None, False),  # no timestamp to hold it to
        (1795315444.25, -1, False),
    ],
)
def test_a_reading_too_far_ahead_of_its_record_is_left_on_both_sides(
    ts: float, stamp: int | None, taken: bool
) -> None:
    # The batch path takes a reading at most PULSE_MAX_FUTURE ahead of its record's
    # timestamp, and leaves a later one to parse_reading (which rejects it): in C as in
    # Python, in the compact shape and through orjson.
    VALID_NAMES.update({"dev-1": "dev-1", "t": "t"})
    doc = {**DOCUMENT, "ts": ts}
    for value in (orjson.dumps(doc), orjson.dumps(doc, option=orjson.OPT_INDENT_2)):
        assert applied_alike(b"dev-1", value, 4096, stamp) == ("returned", 1 if taken else 0)


# -- reading aggregates records back ------------------------------------------------------------

NUMBER_TEXTS = ["0", "-0", "7", "-7", "0.5", "-0.25", "21.0", "1e5", "1E+5", "2.5e-7", "01", "1."]
NUMBER_TEXTS += [".5", "1.5e", "-", "", "1_0", "1" * 19, "12345678901234567", "0x10", "inf"]


def mutated(value: bytes, how: int, where: int, text: str) -> bytes:
    """``value`` with one change, or none (``how`` 0): a number replaced by ``text``, the
    tags filled, a cut, a space or a byte changed at ``where``."""
    where %= len(value)
    if how == 1:  # the number after the where-th colon
        colons = [i for i, b in enumerate(value) if b == ord(":")]
        at = colons[where % len(colons)] + 1
        end = at
        while end < len(value) and value[end] not in b',}"':
            end += 1
        return value[:at] + text.encode() + value[end:] if value[at] != ord('"') else value
    if how == 2:
        return value.replace(b'"tags":{}', b'"tags":{"site":"a"}')
    if how == 3:
        return value[:where]
    if how == 4:
        return value[:where] + b" " + value[where:]
    if how == 5:
        return value[:where] + bytes([value[where] ^ 0x11]) + value[where + 1 :]
    return value


@settings(max_examples=500, deadline=None)
@given(
    window=windows_,
    how=st.integers(0, 5),
    where=st.integers(0, 10_000),
    text=st.sampled_from(NUMBER_TEXTS),
    known=st.sampled_from(["yes", "no", "none", "bytes"]),
)
def test_aggregates_records_are_read_alike(
    window: ClosedWindow, how: int, where: int, text: str, known: str
) -> None:

    value = mutated(closed_window_json(window), how, where, text)
    series_text = value[: value.find(b',"start":')] if b',"start":' in value else b"x"
    entry_of = {"yes": "h:key", "no": "other", "none": None, "bytes": b"h:key"}[known]
    series: dict[bytes, Any] = {series_text if known != "no" else b"{}": entry_of}
    heads: dict[bytes, Any] = {
        series_text if known != "no" else b"{}": (
            f"{window.metric},device={window.device},window={window.window} "
            if known == "yes"
            else entry_of
        )
    }
    entry = same("aggregates_entry", value, series, HistoryEntry)
    line = same("aggregates_line", value, heads)
    if how or known != "yes":
        return
    # Pulse's own record of a known series: cut when it has no tags and, for the entry, no
    # number with an exponent; for the line, a start of whole seconds other than 0 and an
    # ASCII head. What is cut is what parsing the record gives.
    doc = orjson.loads(value)
    texts = [*aggregate_text(window), seconds_text(window.start_us), seconds_text(window.end_us)]
    plain = not any(mark in text for text in texts for mark in "eE")
    if doc["tags"] or not plain:
        assert entry == ("returned", None)
    else:
        member = orjson.dumps({name: doc[name] for name in WINDOW_FIELDS})
        expected = HistoryEntry("h:key", float(doc["start"]), doc["count"], member, value)
        assert entry == ("returned", expected)
    whole = window.start_us % S == 0 and window.start_us != 0
    if doc["tags"] or not whole or not heads[series_text].isascii():
        assert line == ("returned", None)
    else:
        assert line == ("returned", line_protocol(window))


def test_aggregates_records_of_the_wrong_types_are_refused_alike() -> None:
    value = closed_window_json(closed_window_list("dev-1")[0])
    same("aggregates_entry", value.decode(), {}, HistoryEntry)  # TypeError
    same("aggregates_entry", value, [], HistoryEntry)  # TypeError
    same("aggregates_entry", value, {}, int)  # TypeError
    same("aggregates_entry", value, {}, HistoryEntry, 1)  # TypeError
    same("aggregates_line", bytearray(value), {})  # TypeError
    same("aggregates_line", value, None)  # TypeError


# -- the records of a fetch -----------------------------------------------------------------------


class BatchRecord(types.SimpleNamespace):
    """A decoded record as aiokafka's batch hands it out (its attributes only)."""


batch_record_ = st.builds(
    BatchRecord,
    offset=st.integers(0, 2**63 - 1),
    timestamp=st.integers(-1, 2**63 - 1),
    timestamp_type=st.sampled_from([0, 1]),
    key=st.none() | st.binary(max_size=12),
    value=st.none() | st.binary(max_size=40),
    checksum=st.none() | st.integers(0, 2**32 - 1),
    headers=st.lists(st.tuples(st.text(max_size=5), st.binary(max_size=5)), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(
    batch=st.lists(batch_record_, max_size=12),
    first_offset=st.integers(0, 2**63 - 1) | st.integers(0, 20),
    partition=st.integers(0, 1000),
)
def test_batch_records_are_made_alike(
    batch: list[BatchRecord], first_offset: int, partition: int
) -> None:
    outcome_ = same("batch_records", batch, first_offset, "readings", partition, KafkaRecord)
    # Each record from the first offset on, with aiokafka's ConsumerRecord's fields.
    expected = [
        KafkaRecord(
            "readings",
            partition,
            r.offset,
            r.timestamp,
            r.timestamp_type,
            r.key,
            r.value,
            r.checksum,
            -1 if r.key is None else len(r.key),
            -1 if r.value is None else len(r.value),
            tuple(r.headers),
        )
        for r in batch
        if r.offset >= first_offset
    ]
    assert outcome_ == ("returned", expected)
    assert all(type(record) is KafkaRecord for record in outcome_[1])


def test_bad_batches_and_arguments_are_refused_alike() -> None:
    good = dict(offset=3, timestamp=1, timestamp_type=0, key=b"k", value=b"v", checksum=None)
    record = BatchRecord(**good, headers=[])
    for args in [
        ([record], "3", "t", 0, KafkaRecord),  # TypeError: the offset
        ([record], 3, b"t", 0, KafkaRecord),  # TypeError: the topic
        ([record], 3, "t", 0, dict),  # TypeError: no tuple type
        ([record], 2**63, "t", 0, KafkaRecord),  # OverflowError
        (None, 3, "t", 0, KafkaRecord),  # TypeError: not iterable
        ([record, 1], 0, "t", 0, KafkaRecord),  # AttributeError: no offset
        ([BatchRecord(**{**good, "offset": 4.0}, headers=[])], 0, "t", 0, KafkaRecord),
        ([BatchRecord(**{**good, "offset": 2**64}, headers=[])], 0, "t", 0, KafkaRecord),
        ([BatchRecord(**{**good, "key": 5}, headers=[])], 0, "t", 0, KafkaRecord),
        ([BatchRecord(**good, headers=None)], 0, "t", 0, KafkaRecord),  # TypeError
        ([BatchRecord(**good)], 0, "t", 0, KafkaRecord),  # AttributeError: no headers
    ]:
        assert same("batch_records", *args)[0] == "raised", args
    assert same("batch_records", [BatchRecord(**good)], 4, "t", 0, KafkaRecord) == (
        "returned",
        [],
    )  # skipped before the headers are read


# -- the history script's calls -------------------------------------------------------------------


def hiredis_calls(
    entries: Sequence[tuple[Any, ...]],
    per_call: int,
    sha: str,
    first: str | None,
    tail: tuple[int, ...],
) -> list[bytes]:
    """The calls as hiredis packs the script's arguments (pulse/sinks/history.py documents
    them): the reference both sides must equal."""
    out = []
    for begin in range(0, len(entries), per_call):
        chunk = entries[begin : begin + per_call]
        keys = list(dict.fromkeys(entry[0] for entry in chunk))
        args = [
            item
            for key, start, readings, member, event in chunk
            for item in (keys.index(key) + 2, start, readings, member, event)
        ]
        head = ("EVALSHA", sha, len(keys) + 1, chunk[0][0] if first is None else first)
        out.append(hiredis.pack_command((*head, *keys, *tail, *args)))
    return out


history_entry_ = st.builds(
    HistoryEntry,
    key=st.sampled_from(["p:history:10s:dev-1:t", "p:history:1m:dév-2:t", "k"]),
    start=st.floats() | st.integers(0, 2**34).map(float),
    readings=st.integers(1, 2**63 - 1),
    member=st.binary(max_size=20),
    event=st.binary(max_size=20),
)


@settings(max_examples=300, deadline=None)
@given(
    entries=st.lists(history_entry_, max_size=12),
    per_call=st.integers(1, 5),
    first=st.none() | st.sampled_from(["p:events", "ü"]),
    tail=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4).map(tuple),
)
def test_history_calls_are_made_alike_and_as_hiredis_packs_them(
    entries: list[HistoryEntry], per_call: int, first: str | None, tail: tuple[int, ...]
) -> None:
    sha = "a" * 40
    made = same("history_calls", entries, per_call, sha, first, tail)
    assert made == ("returned", hiredis_calls(entries, per_call, sha, first, tail))


def test_bad_history_entries_and_arguments_are_refused_alike() -> None:
    good = HistoryEntry("k", 1.5, 3, b"m", b"e")
    for args in [
        ((good,), 0, "s", None, ()),  # ValueError: per_call
        ((good,), 2**64, "s", None, ()),  # ValueError
        ((good,), 1.0, "s", None, ()),  # TypeError
        ({good}, 1, "s", None, ()),  # TypeError: a set
        ([good], 1, b"s", None, ()),  # TypeError: the sha
        ([good], 1, "s", 5, ()),  # TypeError: the first key
        ([good], 1, "s", None, [1]),  # TypeError: the tail
        ([good], 1, "s", None, (1.0,)),  # TypeError
        ([good], 1, "s", None, (2**63,)),  # OverflowError
        ([good], 1, "s", None, (0,) * 9),  # ValueError
        ([good], 1, "\ud800", None, ()),  # UnicodeEncodeError
        ([good, ("k", 1, 3, b"m", b"e")], 1, "s", None, ()),  # TypeError: an int start
        ([good, ("k", 1.0, True, b"m", b"e")], 1, "s", None, ()),  # TypeError: a bool
        ([good, ("k", 1.0, 3, "m", b"e")], 1, "s", None, ()),  # TypeError: a str member
        ([good, ("k", 1.0, 3, b"m")], 1, "s", None, ()),  # TypeError: four fields
        ([good, ("\ud800", 1.0, 3, b"m", b"e")], 1, "s", None, ()),  # UnicodeEncodeError
        ([good, ("k", 1.0, 2**63, b"m", b"e")], 1, "s", None, ()),  # OverflowError
    ]:
        assert same("history_calls", *args)[0] == "raised", args
    assert same("history_calls", [], 50, "s", None, (1,)) == ("returned", [])
