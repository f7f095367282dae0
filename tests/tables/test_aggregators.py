"""Summary: count, sum, min, max, mean, first, last (+ tags of last) and percentile estimates."""

from __future__ import annotations

import math
import random
import struct
import sys
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.reading import MAX_ABS_VALUE
from tables.aggregators import Summary


def run(readings: Sequence[tuple[int, float, dict[str, str] | None]]) -> list[Any]:
    t, value, tags = readings[0]
    state = Summary.initialize(t, value, tags)
    for t, value, tags in readings[1:]:
        Summary.add(state, t, value, tags)
    return state


def exact(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in {"p50", "p95", "p99"}}


def test_single_reading() -> None:
    state = Summary.initialize(5, 2.5, {"site": "a"})
    assert Summary.result(state) == {
        "count": 1,
        "sum": 2.5,
        "min": 2.5,
        "max": 2.5,
        "mean": 2.5,
        "first": 2.5,
        "last": 2.5,
        "p50": 2.5,
        "p95": 2.5,
        "p99": 2.5,
    }
    assert Summary.tags(state) == {"site": "a"}


def test_no_tags_gives_empty_dict() -> None:
    assert Summary.tags(Summary.initialize(5, 2.5, None)) == {}


def test_out_of_order_readings() -> None:
    state = run(
        [(20, 3.0, {"n": "1"}), (10, -1.0, {"n": "2"}), (30, 7.5, {"n": "3"}), (25, 2.0, None)]
    )
    result = Summary.result(state)
    assert type(result["count"]) is int
    assert exact(result) == {
        "count": 4,
        "sum": 11.5,
        "min": -1.0,
        "max": 7.5,
        "mean": 2.875,
        "first": -1.0,
        "last": 7.5,
    }
    assert Summary.tags(state) == {"n": "3"}


def test_first_tie_keeps_the_reading_processed_first() -> None:
    state = run([(10, 1.0, None), (10, 2.0, None), (10, 3.0, None)])
    assert Summary.result(state)["first"] == 1.0


def test_last_tie_takes_the_reading_processed_last_with_its_tags() -> None:
    state = run(
        [(10, 1.0, {"n": "1"}), (10, 2.0, {"n": "2"}), (5, 9.0, {"n": "3"}), (10, 3.0, None)]
    )
    result = Summary.result(state)
    assert (result["first"], result["last"]) == (9.0, 3.0)
    assert Summary.tags(state) == {}


def test_first_moves_to_an_earlier_reading_and_last_stays() -> None:
    state = run([(10, 1.0, {"a": "x"}), (5, 2.0, {"a": "y"}), (5, 3.0, {"a": "z"})])
    result = Summary.result(state)
    assert (result["first"], result["last"]) == (2.0, 1.0)
    assert Summary.tags(state) == {"a": "x"}


def test_sum_is_accumulated_in_processing_order() -> None:
    values = [1e16, 1.0, -1e16, 1.0]
    state = run([(i, v, None) for i, v in enumerate(values)])
    expected = 0.0
    expected = values[0]
    for v in values[1:]:
        expected += v
    assert Summary.result(state)["sum"] == expected == 1.0
    assert Summary.result(state)["mean"] == 0.25


def test_state_survives_a_json_round_trip() -> None:
    import orjson

    readings = [(i * 7 % 5, float(i) - 3.5, {"i": str(i)}) for i in range(20)]
    state = run(readings[:10])
    restored = Summary.decode(orjson.loads(orjson.dumps(state, option=orjson.OPT_NON_STR_KEYS)))
    for t, value, tags in readings[10:]:
        Summary.add(state, t, value, tags)
        Summary.add(restored, t, value, tags)
    assert Summary.result(restored) == Summary.result(state)
    assert Summary.tags(restored) == Summary.tags(state)


readings_strategy = st.lists(
    st.tuples(
        st.integers(0, 20),
        st.floats(-1e6, 1e6, allow_nan=False) | st.sampled_from([0.0, -0.0, 1e-12, 1.5]),
        st.none() | st.dictionaries(st.sampled_from("ab"), st.sampled_from(["x", "y"])),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(readings=readings_strategy)
def test_summary_equals_brute_force(readings: list[tuple[int, float, Any]]) -> None:
    state = run(readings)
    result = Summary.result(state)
    values = [v for _, v, _ in readings]
    total = values[0]
    for v in values[1:]:
        total += v
    first_t = min(t for t, _, _ in readings)
    last_t = max(t for t, _, _ in readings)
    first = next(r for r in readings if r[0] == first_t)
    last = [r for r in readings if r[0] == last_t][-1]
    assert exact(result) == {
        "count": len(values),
        "sum": total,
        "min": min(values),
        "max": max(values),
        "mean": total / len(values),
        "first": first[1],
        "last": last[1],
    }
    assert Summary.tags(state) == (last[2] or {})
    # The text every output writes is the exact repr of each value (memoised or not).
    assert Summary.text(state) == tuple(repr(v) for v in Summary.values(state))
    assert Summary.text(state) == tuple(repr(v) for v in Summary.values(state))
    ordered = sorted(values)
    for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        want = ordered[math.floor(q * (len(values) - 1))]
        assert abs(result[name] - want) <= 0.01 * abs(want) + 1e-9, (name, result[name], want)
        assert min(values) <= result[name] <= max(values)


def test_text_keeps_the_sign_of_zero_whatever_was_formatted_before() -> None:
    assert Summary.text(run([(1, 0.0, None), (2, 0.0, None)]))[2] == "0.0"
    assert Summary.text(run([(1, -0.0, None), (2, -0.0, None)]))[2:4] == ("-0.0", "-0.0")
    assert Summary.text(run([(1, -0.0, None)])) == ("1", *["-0.0"] * 6, "0.0", "0.0", "0.0")


def test_remembered_texts_stay_exact_when_their_slots_are_reused() -> None:
    # The C summary_text remembers value texts in a fixed table of 2**17 slots, where a value
    # replaces the one in its slot: more distinct values than slots, then the first ones
    # again, must each still get their own repr.
    values = [1.0 + i / 7 for i in range(300_000)]
    for value in values + values[:1000]:
        assert Summary.text(Summary.initialize(0, value, None))[1] == repr(value)
    many = run([(t, 0.5, None) for t in range(5000)])  # counts past the precomputed texts
    assert Summary.text(many)[0] == "5000"


def float_text(x: float) -> str:
    """x as Summary.text writes it (the minimum of a window holding x alone)."""
    state = Summary.initialize(0, x, None) if x == 0 else [1, x, x, x, 0, x, 0, x, None, {}]
    return Summary.text(state)[2]


def test_float_text_is_repr() -> None:
    # The C summary_text writes 1e-3 <= |x| < 1e15 with its own shortest-repr search (and
    # the rest with Python's): every text must be repr's, digit for digit.
    rng = random.Random(4)
    values = [0.0, -0.0, math.inf, -math.inf, 5e-324, 2.2250738585072014e-308, 1e300]
    for edge in (1e-3, 1e15, 0.1, 0.5, 1.0, 10.0, 2.0**49, 2.0**-10):
        for x in (edge, -edge):
            values += [x, math.nextafter(x, math.inf), math.nextafter(x, -math.inf)]
    values += [2.0**p for p in range(-12, 52)]  # a quarter-ulp gap below each
    values += [562949953421312 + j / 4 for j in range(400)]  # two candidates tie: even digit
    for _ in range(50_000):
        values.append(rng.choice((1, -1)) * 10 ** rng.uniform(-4, 16))
        total = 0.0
        for _ in range(rng.randint(2, 30)):  # sums and means of readings, 17 digits
            total += round(rng.uniform(-40, 40), 2)
        values += [total, total / 7, round(rng.uniform(-1e6, 1e6), rng.randint(0, 6))]
        bits = rng.getrandbits(64).to_bytes(8, "little")
        values.append(struct.unpack("<d", bits)[0])
    mismatches = [(repr(x), float_text(x)) for x in values if x == x and float_text(x) != repr(x)]
    assert mismatches == []
    assert float_text(math.nan) == "nan"


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_no_sum_overflows_so_every_aggregate_is_a_finite_number(sign: float) -> None:
    # Readings are within +-1e290 (models.reading.MAX_ABS_VALUE): added to any finite sum,
    # one rounds to a finite float, so a window's sum stays finite however many it adds.
    top = sign * sys.float_info.max
    assert MAX_ABS_VALUE == 1e290
    state = run([(1, sign * MAX_ABS_VALUE, None)])
    state[1] = top  # the largest sum there is (readings stall far below it: about 1.4e306)
    for t in range(2, 1002):
        Summary.add(state, t, sign * MAX_ABS_VALUE, None)
    assert state[1] == top
    text = Summary.text(state)
    assert all(math.isfinite(float(x)) for x in text)
    assert (text[1], text[4]) == (repr(top), repr(top / 1001))
