"""history_entry: an ``aggregates`` record read back into a history entry, or a ValueError
saying why it is none (the history writer dead-letters it with that reason)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse.sinks.history import _parsed_entry, history_entry
from pulse.sinks.redis import RedisKeys

KEYS = RedisKeys("p")

RECORD: dict[str, Any] = {
    "device": "d-1",
    "metric": "temperature",
    "window": "10s",
    "start": 1700000000,
    "end": 1700000010,
    "count": 3,
    "sum": 6.5,
    "min": 1.0,
    "max": 3.5,
    "mean": 2.1666666666666665,
    "first": 1.0,
    "last": 3.5,
    "p50": 2.0,
    "p95": 3.5,
    "p99": 3.5,
    "tags": {"site": "a"},
}


def record(**changed: Any) -> bytes:
    doc = {**RECORD, **changed}
    for name in [n for n, v in changed.items() if v is ...]:
        del doc[name]
    return orjson.dumps(doc)


def test_a_record_gives_its_series_key_start_count_member_and_itself() -> None:
    value = record()
    entry = history_entry(KEYS, value)
    assert entry.key == "p:history:10s:d-1:temperature"
    assert entry.start == 1700000000.0
    assert entry.readings == 3
    # The member: the window's fields in the readers' order, nothing else.
    assert entry.member == (
        b'{"count":3,"sum":6.5,"min":1.0,"max":3.5,"mean":2.1666666666666665,"first":1.0,'
        b'"last":3.5,"p50":2.0,"p95":3.5,"p99":3.5,"start":1700000000,"end":1700000010}'
    )
    assert entry.event == value


def test_each_series_gets_its_own_key_also_when_seen_before() -> None:
    keys = [
        history_entry(KEYS, record(device=device, metric=metric, window=window)).key
        for device, metric, window in [
            ("d-1", "temperature", "10s"),
            ("d-2", "temperature", "10s"),
            ("d-1", "humidity", "10s"),
            ("d-1", "temperature", "5m/1m"),
            ("d-1", "temperature", "10s"),
        ]
    ]
    assert keys == [
        "p:history:10s:d-1:temperature",
        "p:history:10s:d-2:temperature",
        "p:history:10s:d-1:humidity",
        "p:history:5m/1m:d-1:temperature",
        "p:history:10s:d-1:temperature",
    ]
    assert history_entry(RedisKeys("q"), record()).key == "q:history:10s:d-1:temperature"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "not an aggregates record (not JSON: "),
        (b"[1, 2]", "not an aggregates record (not a JSON object)"),
        (b"", "not an aggregates record (not JSON: "),
        (record(count=..., tags=...), "not an aggregates record: no count, tags"),
        (record(device=7), "not an aggregates record: device or metric 7 is no name"),
        (record(metric="a b"), "not an aggregates record: device or metric 'a b' is no name"),
        (record(device="bad:d"), "not an aggregates record: device or metric 'bad:d' is no name"),
        (record(window=10), "not an aggregates record: window 10 is no label"),
        (record(window="sliding:1m"), "not an aggregates record: window 'sliding:1m' is no label"),
        (record(window="10x"), "not an aggregates record: window '10x' is no window label"),
        (record(count=0), "not an aggregates record: count is not a whole number of at least 1"),
        (record(count=2.0), "not an aggregates record: count is not a whole number of at least 1"),
        (record(start="1700000000"), "not an aggregates record: start is not a number"),
        (record(p99=None), "not an aggregates record: p99 is not a number"),
        (record(mean=True), "not an aggregates record: mean is not a number"),
        (record(tags=["site"]), "not an aggregates record: tags is not an object"),
        (b'{"count": 1e400}', "not an aggregates record (not JSON: "),
    ],
)
def test_what_is_no_aggregates_record_is_refused_with_its_reason(value: bytes, reason: str) -> None:
    # Each bad value once after a good record of the same series, so that a series known
    # already lets nothing through unchecked.
    history_entry(KEYS, record())
    with pytest.raises(ValueError) as refused:
        history_entry(KEYS, value)
    assert str(refused.value).startswith(reason)
    assert reason.endswith(": ") or str(refused.value) == reason


@pytest.mark.parametrize(
    ("changed", "reason"),
    [
        ({"count": 0}, "not an aggregates record: count is not a whole number of at least 1"),
        ({"count": 2.0}, "not an aggregates record: count is not a whole number of at least 1"),
        ({"start": "1700000000"}, "not an aggregates record: start is not a number"),
        ({"p99": None}, "not an aggregates record: p99 is not a number"),
        ({"mean": True}, "not an aggregates record: mean is not a number"),
        ({"tags": ["site"]}, "not an aggregates record: tags is not an object"),
        ({"end": ...}, "not an aggregates record: no end"),
    ],
)
def test_a_known_series_is_cut_only_from_a_whole_record(
    changed: dict[str, Any], reason: str
) -> None:
    # A series read before (with no tags) is cut from its text without parsing; a bad record
    # of it is still refused with its reason.
    first = history_entry(KEYS, record(tags={}))
    assert history_entry(KEYS, record(tags={})) == first
    with pytest.raises(ValueError) as refused:
        history_entry(KEYS, record(**{"tags": {}, **changed}))
    assert str(refused.value) == reason


numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(10**6), 10**6),
    st.floats(-100, 100).map(lambda x: round(x, 2)),
)


@settings(max_examples=300, deadline=None)
@given(
    device=st.sampled_from(["d-1", "dev-00042", "D.x_y"]),
    start=st.integers(-(10**10), 10**10) | st.floats(-1e10, 1e10),
    count=st.integers(1, 10**18),
    values=st.lists(numbers, min_size=9, max_size=9),
)
def test_a_record_cut_from_its_text_is_the_record_parsed(
    device: str, start: float, count: int, values: list[float]
) -> None:
    names = ("sum", "min", "max", "mean", "first", "last", "p50", "p95", "p99")
    aggregates = dict(zip(names, values, strict=True))
    value = record(device=device, start=start, end=start + 10, count=count, tags={}, **aggregates)
    parsed, _ = _parsed_entry(KEYS, value)
    assert history_entry(KEYS, value) == parsed  # parsed, and its series remembered
    assert history_entry(KEYS, value) == parsed  # cut from its text (or parsed: an exponent)
