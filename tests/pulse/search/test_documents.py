"""The documents and their daily indices, without a server: each record's document equals
what tests/helpers/search.py computes from it, whichever way the record is written."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.outputs import DeadLetter, EntryDeadLetter
from pulse.search import indices
from pulse.search.documents import (
    Document,
    alert_document,
    dead_letter_document,
    window_document,
)
from tests.helpers import search as reference
from tests.helpers.alerts import absence_alert, window_alert

NUMBER = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e290, max_value=1e290)
NAME = st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True)


def _record(device: str, metric: str, label: str, start_us: int, numbers: list[float]) -> bytes:
    """An aggregates record as the worker writes it (pulse/sinks/kafka.py)."""

    def seconds(t_us: int) -> str:
        whole, rest = divmod(t_us, 1_000_000)
        return str(whole) if rest == 0 else repr(t_us / 1_000_000)

    aggregates = ",".join(
        f'"{name}":{value!r}'
        for name, value in zip(
            ("sum", "min", "max", "mean", "first", "last", "p50", "p95", "p99"),
            numbers,
            strict=True,
        )
    )
    return (
        f'{{"device":"{device}","metric":"{metric}","window":"{label}",'
        f'"start":{seconds(start_us)},"end":{seconds(start_us + 60_000_000)},"count":3,'
        f'{aggregates},"tags":{{"site":"plant-a","line":"2"}}}}'
    ).encode()


def _as_reference(document: Document, prefix: str = "p") -> tuple[str, str, dict]:
    return (
        indices.index_name(prefix, document.kind, document.day),
        document.id,
        orjson.loads(document.source),
    )


@given(
    device=NAME,
    metric=NAME,
    # Up to 2**33 s (year 2242): beyond, a float of seconds no longer tells microseconds
    # apart, and the worker's record itself names a start only to within a few of them.
    start_ms=st.integers(min_value=0, max_value=2**33 * 1000),
    numbers=st.lists(NUMBER, min_size=9, max_size=9),
)
def test_a_window_record_read_fast_or_parsed_gives_the_reference_document(
    device: str, metric: str, start_ms: int, numbers: list[float]
) -> None:
    value = _record(device, metric, "1m", start_ms * 1000, numbers)
    fast = window_document(value, {"1m"})
    # The same record written otherwise (spaces, another order) takes the parsing path.
    spaced = json.dumps(json.loads(value), indent=1).encode()
    parsed = window_document(spaced, {"1m"})
    assert fast is not None and parsed is not None
    assert _as_reference(fast) == reference.window("p", value)
    assert _as_reference(parsed) == reference.window("p", value)
    assert b"\n" not in parsed.source and b"\n" not in fast.source


def test_windows_not_indexed_give_no_document_and_bad_records_say_why() -> None:
    value = _record("d", "t", "10s", 1_700_000_000_000_000, [1.0] * 9)
    assert window_document(value, {"1m"}) is None
    assert window_document(value, {"10s"}) is not None
    for bad, why in (
        (b"{oops", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"device":"d","metric":"t","window":"1m","start":"x"}', "start is not a number"),
        (b'{"device":"d d","metric":"t","window":"1m"}', "no device, metric and window"),
    ):
        with pytest.raises(ValueError, match=why):
            window_document(bad, {"1m"})


def test_alert_documents_are_the_transition_with_its_time() -> None:
    for transition in (
        window_alert("hot", "d", "t", "10s", 10, 3, "firing", 91.5),
        absence_alert("quiet", "d", "t", "resolved", 25.000001, 30),
    ):
        document = alert_document(transition.json())
        assert _as_reference(document) == reference.alert("p", transition.json())
        assert document.id == transition.id
    # Whitespace with line breaks is written again without them.
    spaced = json.dumps(
        json.loads(window_alert("h", "d", "t", "1m", 60, 1, "firing", 1).json()), indent=2
    )
    assert b"\n" not in alert_document(spaced.encode()).source


def test_dead_letter_ids_are_the_rejected_records_position_or_the_streams_entry() -> None:
    letter = DeadLetter("late", "why", "readings", 3, 42, b"dev-1", b"{}", 100, 1_795_315_444_250)
    document = dead_letter_document(orjson.dumps(letter.document()), 1)
    assert (document.id, document.time) == ("readings:3:42", 1_795_315_444_250)
    # The bridge's letter (of an entry that never was a record): its stream and entry id.
    bridge = EntryDeadLetter(
        "invalid_reading", "x", "pulse:ingest:gw-1", "1795315444250-0", None, b"{}", 100
    )
    document = dead_letter_document(orjson.dumps(bridge.document()), 1_795_315_444_250)
    assert (document.id, document.time) == ("pulse:ingest:gw-1:1795315444250-0", 1_795_315_444_250)
    source = orjson.loads(document.source)
    assert (source["stream"], source["entry_id"], source["topic"]) == (
        "pulse:ingest:gw-1", "1795315444250-0", None
    )  # fmt: skip
    # Without the record's time the letter's own record's stands in.
    old = {**letter.document()}
    del old["timestamp"]
    assert dead_letter_document(orjson.dumps(old), 77).time == 77
    for bad, why in (
        (b"{", "not JSON"),
        (b'{"reason":"late"}', "no reason and detail"),
        (b'{"reason":"late","detail":"x","topic":"t","partition":-1,"offset":0}', "no topic"),
    ):
        with pytest.raises(ValueError, match=why):
            dead_letter_document(bad, 0)


def test_daily_index_names_and_the_retention() -> None:
    day = 1_795_315_444_250 // 86_400_000
    name = indices.index_name("pulse", "alerts", day)
    assert name == "pulse-alerts-2026.11.22"
    assert indices.daily_day(name, "pulse", "alerts") == day
    assert indices.daily_day(name, "pulse", "windows") is None
    assert indices.daily_day("pulse-x-alerts-2026.11.22", "pulse", "alerts") is None
    names = [indices.index_name("pulse", "alerts", d) for d in (day - 40, day, day - 3, day - 2)]
    first_kept = indices.first_kept_day(3, day)
    assert first_kept == day - 2
    assert indices.expired([*names, "pulse-alerts", "other"], "pulse", "alerts", first_kept) == [
        names[0],
        names[2],
    ]
    assert indices.first_kept_day(0, day) < 0  # keep everything


def test_templates_map_every_field_explicitly() -> None:
    body = indices.template("pulse", "windows", 1)
    assert body["index_patterns"] == ["pulse-windows-*"]
    assert body["template"]["aliases"] == {"pulse-windows": {}}
    mappings = body["template"]["mappings"]
    assert mappings["dynamic"] is False
    assert mappings["properties"]["tags"] == {"type": "flat_object"}
    assert indices.template("pulse", "alerts", 0, "flattened")["template"]["mappings"][
        "properties"
    ]["labels"] == {"type": "flattened"}
