"""Output documents: closed windows (aggregates topic) and dead letters."""

from __future__ import annotations

import base64

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.outputs import DeadLetter, closed_window_json, seconds_text
from tables.aggregators import Summary
from tables.partition_state import ClosedWindow

S = 1_000_000


@pytest.mark.parametrize(
    ("t_us", "expected"),
    [
        (0, 0),
        (10 * S, 10),
        (1_795_315_440 * S, 1_795_315_440),
        (1_795_315_444_250_000, 1795315444.25),
        (1_795_315_444_300_000, 1795315444.3),
        (1, 1e-06),
        (-10 * S, -10),
        (-500_000, -0.5),
    ],
)
def test_seconds_text(t_us: int, expected: float) -> None:
    text = seconds_text(t_us)
    assert text == repr(expected)
    assert seconds_text(t_us) == text
    assert float(text) == t_us / 1_000_000


def seconds_text_reference(t_us: int) -> str:
    whole, rest = divmod(t_us, 1_000_000)
    return str(whole) if rest == 0 else repr(t_us / 1_000_000)


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.integers(-(2**53), 2**53),
        st.integers(0, 4_102_444_800).map(lambda s: s * 1_000_000),  # whole seconds
        st.integers(1_700_000_000_000_000, 1_900_000_000_000_000),  # epoch microseconds now
        st.integers(-(2**80), 2**80),  # beyond a double's exact integers: Python's arithmetic
    )
)
def test_seconds_text_is_its_python_definition(t_us: int) -> None:
    assert seconds_text(t_us) == seconds_text_reference(t_us)


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


def letter(value: bytes | None, reason: str = "invalid_json", limit: int = 100) -> DeadLetter:
    return DeadLetter(reason, "why", "readings", 3, 42, b"dev-1", value, limit)


def test_dead_letter_utf8() -> None:
    assert letter('{"a": "é"'.encode()).document() == {
        "reason": "invalid_json",
        "detail": "why",
        "topic": "readings",
        "partition": 3,
        "offset": 42,
        "key": "dev-1",
        "value": '{"a": "é"',
    }


def test_dead_letter_binary_is_base64() -> None:
    raw = b"\xff\x00\xfe"
    assert letter(raw).document() == {
        "reason": "invalid_json",
        "detail": "why",
        "topic": "readings",
        "partition": 3,
        "offset": 42,
        "key": "dev-1",
        "value": base64.b64encode(raw).decode(),
        "value_encoding": "base64",
    }


def test_dead_letter_tombstone_and_no_key() -> None:
    doc = DeadLetter("invalid_json", "tombstone", "readings", 0, 7, None, None, 10).document()
    assert doc["key"] is None
    assert doc["value"] is None
    assert "value_encoding" not in doc


def test_dead_letter_undecodable_key_is_replaced() -> None:
    doc = DeadLetter("invalid_reading", "x", "readings", 0, 1, b"d\xffv", b"{}", 10).document()
    assert doc["key"] == "d\ufffdv"


def test_too_large_value_is_truncated() -> None:
    raw = b"x" * 150
    doc = letter(raw, "too_large", 100).document()
    assert doc["value"] == "x" * 100
    assert doc["value_truncated"] is True
    assert doc["value_size"] == 150
    assert doc["reason"] == "too_large"


def test_value_at_the_limit_is_not_truncated() -> None:
    doc = letter(b"y" * 100, "too_large", 100).document()
    assert doc["value"] == "y" * 100
    assert "value_truncated" not in doc
    assert "value_size" not in doc


def test_truncated_binary_value_is_base64_of_the_kept_bytes() -> None:
    raw = bytes(range(128, 256)) * 4
    doc = letter(raw, "too_large", 100).document()
    assert doc["value"] == base64.b64encode(raw[:100]).decode()
    assert doc["value_encoding"] == "base64"
    assert doc["value_size"] == 512


def test_utf8_value_cut_inside_a_character_falls_back_to_base64() -> None:
    raw = "é".encode() * 100  # 200 bytes; byte 101 is the middle of a character
    doc = letter(raw, "too_large", 101).document()
    assert doc["value"] == base64.b64encode(raw[:101]).decode()
    assert doc["value_encoding"] == "base64"
    assert doc["value_size"] == 200
