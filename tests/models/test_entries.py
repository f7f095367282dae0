"""The stream entry contract (models/entries.py): what ``pulse bridge`` makes of an entry is
what the worker's parser accepts, with the same reading, or a dead letter with its reason."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.entries import (
    EntryRecord,
    RejectedEntry,
    entry_order,
    entry_record,
    entry_time_ms,
    reading_json,
    ts_text,
)
from models.outputs import EntryDeadLetter
from models.reading import MAX_EVENT_TIME_US, Reading, parse_reading

ID = b"1796323010059-3"
T_MS = 1796323010059
MAX_BYTES = 2048
FUTURE_US = 30_000_000


def record(*fields: bytes, entry_id: bytes = ID) -> EntryRecord:
    return entry_record(entry_id, list(fields), MAX_BYTES, FUTURE_US)


def rejected(*fields: bytes) -> RejectedEntry:
    with pytest.raises(RejectedEntry) as info:
        record(*fields)
    return info.value


def reading_of(made: EntryRecord) -> Reading:
    """What the worker reads from the record (the record's timestamp being the entry's)."""
    return parse_reading(made.key, made.value, made.timestamp_ms, MAX_BYTES, FUTURE_US)


def test_entry_ids() -> None:
    assert entry_time_ms(ID) == T_MS
    assert entry_order("5-10") > entry_order(b"5-9")
    with pytest.raises(ValueError):
        entry_time_ms(b"nope")


def test_fields_form_with_tags_and_ts() -> None:
    made = record(
        b"device",
        b"dev-1",
        b"metric",
        b"temperature",
        b"value",
        b"21.5",
        b"ts",
        b"1796323000.25",
        b"tag.site",
        b"plant-a",
        b"other",
        b"ignored",
    )
    assert made.key == b"dev-1"
    assert made.timestamp_ms == T_MS
    assert reading_of(made) == Reading(
        "dev-1", "temperature", 21.5, 1796323000_250000, {"site": "plant-a"}
    )


def test_fields_form_without_ts_takes_the_entry_time() -> None:
    made = record(b"device", b"dev-1", b"metric", b"m", b"value", b"-3")
    assert reading_of(made) == Reading("dev-1", "m", -3.0, T_MS * 1000, None)
    # Written into the record: the broker's own timestamp does not change it.
    assert orjson.loads(made.value)["ts"] == pytest.approx(T_MS / 1000)
    later = parse_reading(made.key, made.value, T_MS + 60_000, MAX_BYTES, FUTURE_US)
    assert later.t_us == T_MS * 1000


def test_fields_form_iso_ts() -> None:
    made = record(
        b"device", b"d", b"metric", b"m", b"value", b"1e3", b"ts", b"2026-12-03T10:00:00.5Z"
    )
    reading = reading_of(made)
    assert reading.value == 1000.0
    assert reading.t_us == 1796292000_500000


@pytest.mark.parametrize(
    ("fields", "reason", "detail"),
    [
        ((b"device", b"d", b"metric", b"m", b"value", b"abc"), "invalid_reading", "'value'"),
        ((b"device", b"d", b"metric", b"m", b"value", b"NaN"), "invalid_reading", "'value'"),
        ((b"device", b"d", b"metric", b"m", b"value", b" 1"), "invalid_reading", "'value'"),
        ((b"device", b"d", b"metric", b"m"), "invalid_reading", "'value'"),
        ((b"device", b"d", b"value", b"1"), "invalid_reading", "'metric' is missing"),
        ((b"metric", b"m", b"value", b"1"), "invalid_reading", "'device' is missing"),
        ((b"device", b"a b", b"metric", b"m", b"value", b"1"), "invalid_reading", "'device'"),
        (
            (b"device", b"d", b"device", b"e", b"metric", b"m", b"value", b"1"),
            "invalid_reading",
            "repeats the field 'device'",
        ),
        ((b"device", b"\xff", b"metric", b"m", b"value", b"1"), "invalid_reading", "UTF-8"),
        ((b"device", b"d", b"metric", b"m", b"value", b"1e400"), "invalid_json", "JSON"),
        (
            (b"device", b"d", b"metric", b"m", b"value", b"1", b"ts", b"yesterday"),
            "invalid_reading",
            "ISO-8601",
        ),
        (
            (b"device", b"d", b"metric", b"m", b"value", b"1", b"ts", b"1796323100"),
            "invalid_reading",
            "PULSE_MAX_FUTURE",
        ),
        (
            (b"device", b"d", b"metric", b"m", b"value", b"1", b"tag.window", b"x"),
            "invalid_reading",
            "reserved",
        ),
        (
            (b"device", b"d", b"metric", b"m", b"value", b"1", b"tag.s", b"a\nb"),
            "invalid_reading",
            "control character",
        ),
        (
            (b"device", b"d", b"metric", b"m", b"value", b"1", b"tag.s", b"x" * 3000),
            "too_large",
            "bytes",
        ),
    ],
)
def test_fields_form_rejections(fields: tuple[bytes, ...], reason: str, detail: str) -> None:
    error = rejected(*fields)
    assert error.reason == reason
    assert detail in error.detail
    # The dead letter keeps the fields as they came, as a JSON object.
    shown = orjson.loads(error.value or b"")
    assert shown == {
        fields[i].decode("utf-8", "replace"): fields[i + 1].decode("utf-8", "replace")
        for i in range(0, len(fields), 2)
    }
    devices = [fields[i + 1] for i in range(0, len(fields), 2) if fields[i] == b"device"]
    assert error.key == (devices[0] if devices else None)


def test_json_form_passes_a_record_with_ts_through() -> None:
    text = b'{"device":"d","metric":"m","value":7,"ts":1796323000,"extra":[1]}'
    made = record(b"json", text, b"device", b"ignored")
    assert made == EntryRecord(b"d", text, T_MS)


def test_json_form_without_ts_gets_the_entry_time() -> None:
    for text in (
        b'{"device":"d","metric":"m","value":7,"tags":{"a":"b"}}',
        b'{"device":"d","metric":"m","value":7,"ts":null,"tags":{"a":"b"}}',
    ):
        made = record(b"json", text)
        assert reading_of(made) == Reading("d", "m", 7.0, T_MS * 1000, {"a": "b"})


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b"{nope", "invalid_json"),
        (b"[1]", "invalid_reading"),
        (b'{"device":"d","metric":"m","value":"7"}', "invalid_reading"),
        (b'{"device":"d","device":"e","metric":"m","value":7}', "invalid_json"),
        (b'{"device":"d","metric":"m","value":7,"pad":"' + b"x" * 3000 + b'"}', "too_large"),
    ],
)
def test_json_form_rejections(text: bytes, reason: str) -> None:
    error = rejected(b"json", text)
    assert error.reason == reason
    assert error.value == text


def test_json_form_near_the_size_limit_without_ts() -> None:
    # Valid as given, too large once its ts is written in: too_large, said so.
    tags = {f"t{i}": "x" * 200 for i in range(9)}
    doc = {"device": "d", "metric": "m", "value": 7, "tags": tags}
    tags["t9"] = "x" * (MAX_BYTES - 8 - len(orjson.dumps(doc)))
    text = orjson.dumps(doc)
    assert MAX_BYTES - 10 < len(text) <= MAX_BYTES
    error = rejected(b"json", text)
    assert error.reason == "too_large"
    assert "with its ts added" in error.detail


def test_dead_letter_document() -> None:
    error = rejected(b"json", b"\xff{")
    letter = EntryDeadLetter(
        error.reason, error.detail, "pulse:ingest:gw", ID.decode(), error.key, error.value, 100
    )
    doc = letter.document()
    assert doc["stream"] == "pulse:ingest:gw"
    assert doc["entry_id"] == ID.decode()
    assert doc["topic"] is None and doc["partition"] is None and doc["offset"] is None
    assert doc["value_encoding"] == "base64"
    assert doc["reason"] == "invalid_json"


@given(st.integers(min_value=0, max_value=MAX_EVENT_TIME_US))
def test_ts_text_reads_back_exactly(t_us: int) -> None:
    text = b'{"device":"d","metric":"m","value":1,"ts":' + ts_text(t_us) + b"}"
    assert parse_reading(b"d", text, 0, 200, 10**19).t_us == t_us


@given(
    st.floats(min_value=-1e290, max_value=1e290, allow_nan=False),
    st.integers(min_value=0, max_value=MAX_EVENT_TIME_US),
    st.none() | st.dictionaries(st.sampled_from(["a", "site", "x.y"]), st.text(max_size=5)),
)
def test_reading_json_reads_back_as_the_reading(
    value: float, t_us: int, tags: dict[str, str] | None
) -> None:
    tags = {k: v for k, v in (tags or {}).items() if all(c >= " " and c != "\x7f" for c in v)}
    reading = Reading("d", "m", value, t_us, tags or None)
    again = parse_reading(b"d", reading_json(reading), 0, 4096, 10**19)
    assert again == reading
