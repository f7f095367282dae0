"""parse_reading: every accept and reject rule of the input contract (issue 2, "Input")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.reading import VALID_NAMES, Reading, Rejected, parse_reading
from tables._native import parse_common
from tests.helpers.json_texts import hand_written_json

MAX_BYTES = 65_536
RECORD_TS_MS = 2_000_000_000_123
"""The records' timestamp unless a test gives one (2033): after the event times the tests
write, so that no reading is too far ahead of it, but for those that mean to be."""
MAX_FUTURE_US = 30_000_000


def encode(**fields: Any) -> bytes:
    doc: dict[str, Any] = {"device": "dev-0042", "metric": "temperature", "value": 21.5}
    doc.update(fields)
    return orjson.dumps({k: v for k, v in doc.items() if v is not _DROP})


_DROP = object()


def parse(
    value: bytes | None, key: bytes | None = b"dev-0042", ts_ms: int | None = RECORD_TS_MS
) -> Reading:
    return parse_reading(key, value, ts_ms, MAX_BYTES, MAX_FUTURE_US)


def rejected(
    value: bytes | None, key: bytes | None = b"dev-0042", ts_ms: int | None = RECORD_TS_MS
) -> Rejected:
    with pytest.raises(Rejected) as info:
        parse(value, key, ts_ms)
    return info.value


# -- accepted ---------------------------------------------------------------------------------


def test_the_example_of_the_contract() -> None:
    value = (
        b'{"device": "dev-0042", "metric": "temperature", "value": 21.5, '
        b'"ts": 1795315444.25, "tags": {"site": "plant-a"}}'
    )
    assert parse(value) == Reading(
        "dev-0042", "temperature", 21.5, 1_795_315_444_250_000, {"site": "plant-a"}
    )


def test_other_fields_are_ignored() -> None:
    assert parse(encode(unit="C", extra={"a": [1, 2]})) == Reading(
        "dev-0042", "temperature", 21.5, RECORD_TS_MS * 1000, None
    )


def test_integer_value_becomes_float() -> None:
    reading = parse(encode(value=7))
    assert reading.value == 7.0
    assert type(reading.value) is float


@pytest.mark.parametrize("value", [1e290, -1e290, 0.0, -0.0, 5e-324])
def test_values_at_the_limits_are_accepted(value: float) -> None:
    assert parse(encode(value=value)).value == float(value)


@pytest.mark.parametrize("name", ["a", "A-z_0.9", "x" * 128, "dev.0042", "-", "_", "..."], ids=str)
def test_names_matching_the_pattern(name: str) -> None:
    reading = parse(encode(device=name, metric=name), key=name.encode())
    assert (reading.device, reading.metric) == (name, name)


# -- event time -------------------------------------------------------------------------------


def test_absent_ts_uses_the_record_timestamp() -> None:
    assert parse(encode(), ts_ms=1_795_315_444_250).t_us == 1_795_315_444_250_000


def test_null_ts_uses_the_record_timestamp() -> None:
    assert parse(encode(ts=None), ts_ms=12).t_us == 12_000


def test_absent_ts_without_record_timestamp_is_rejected() -> None:
    for ts_ms in (None, -1):
        error = rejected(encode(), ts_ms=ts_ms)
        assert error.reason == "invalid_reading"
        assert error.detail == "no 'ts' and the record has no timestamp"


@pytest.mark.parametrize(
    ("ts", "t_us"),
    [
        (1795315444.3, 1_795_315_444_300_000),  # stored as ...444.2999999523: must not truncate
        (1795315444.25, 1_795_315_444_250_000),
        (1795315444, 1_795_315_444_000_000),
        (0, 0),
        (0.000001, 1),
        (1.0000004, 1_000_000),  # rounds to the nearest microsecond
        (1.0000006, 1_000_001),
        (1700000000.123456, 1_700_000_000_123_456),
    ],
)
def test_epoch_seconds(ts: float, t_us: int) -> None:
    assert parse(encode(ts=ts)).t_us == t_us


@pytest.mark.parametrize(
    ("ts", "t_us"),
    [
        ("2026-11-22T10:04:04.3+00:00", 1_795_341_844_300_000),
        ("2026-11-22T10:04:04.3Z", 1_795_341_844_300_000),
        ("2026-11-22T12:04:04.300+02:00", 1_795_341_844_300_000),
        ("2026-11-22T05:04:04.3-05:00", 1_795_341_844_300_000),
        ("1970-01-01T00:00:00Z", 0),
        ("2026-01-01T00:00:00.000001Z", 1_767_225_600_000_001),
    ],
)
def test_iso_time_with_zone(ts: str, t_us: int) -> None:
    assert parse(encode(ts=ts)).t_us == t_us


@pytest.mark.parametrize("ts", ["2026-11-22T10:04:04", "2026-11-22", "2026-11-22T10:04:04.3"])
def test_iso_time_without_zone_is_rejected(ts: str) -> None:
    error = rejected(encode(ts=ts))
    assert error.reason == "invalid_reading"
    assert error.detail == f"'ts' {ts!r} has no time zone: add Z or an offset such as +02:00"


@pytest.mark.parametrize("ts", ["", "yesterday", "1795315444", "2026-13-01T00:00:00Z"])
def test_unparseable_ts_string(ts: str) -> None:
    error = rejected(encode(ts=ts))
    assert error.reason == "invalid_reading"
    assert error.detail == f"'ts' {ts!r} is not an ISO-8601 time"


@pytest.mark.parametrize(
    ("ts", "kind"),
    [(True, "a boolean"), (False, "a boolean"), ([1], "an array"), ({}, "an object")],
)
def test_ts_of_other_types(ts: object, kind: str) -> None:
    error = rejected(encode(ts=ts))
    assert error.reason == "invalid_reading"
    assert error.detail == f"'ts' must be epoch seconds or an ISO-8601 string, got {kind}"


@pytest.mark.parametrize(
    "ts",
    [
        *(-1, -0.5, 1e300, 9_223_372_037, "1969-12-31T23:59:59Z", "2263-01-01T00:00:00Z"),
        # seconds whose microseconds overflow a float: once an OverflowError that stopped the
        # worker's loop
        *(1.8e302, -1e303, 1.7976931348623157e308),
    ],
)
def test_ts_outside_influx_range(ts: object) -> None:
    error = rejected(encode(ts=ts))
    assert error.reason == "invalid_reading"
    assert error.detail == "'ts' is outside 1970-01-01 .. 2262-04-11 (InfluxDB's range)"


def test_record_timestamp_outside_influx_range() -> None:
    error = rejected(encode(), ts_ms=9_223_372_036_855)
    assert error.reason == "invalid_reading"
    assert "outside 1970-01-01 .. 2262-04-11" in error.detail


# -- how far ahead of its record a reading may be (PULSE_MAX_FUTURE) ----------------------------


@pytest.mark.parametrize(
    "ts", [1795315474.25, "2026-11-22T02:44:34.25Z", 1795315474, 0, 1795315444.25, 1.0]
)
def test_a_reading_up_to_the_future_bound_ahead_of_its_record_is_accepted(ts: object) -> None:
    # up to 30 s ahead (exactly, to the microsecond) and any time behind
    reading = parse(encode(ts=ts), ts_ms=1_795_315_444_250)
    assert reading.t_us <= 1_795_315_474_250_000


@pytest.mark.parametrize(
    ("ts", "ahead"),
    [
        (1795315474.250001, "30.000001 s"),
        ("2026-11-22T02:44:35Z", "30.75 s"),
        (1795315444.25 + 10 * 365 * 86400, "315360000 s"),  # a clock ten years ahead
        (9_223_372_036, "7428056591.75 s"),  # the last second InfluxDB can store
    ],
)
def test_a_reading_further_ahead_of_its_record_is_rejected(ts: object, ahead: str) -> None:
    error = rejected(encode(ts=ts), ts_ms=1_795_315_444_250)
    assert error.reason == "invalid_reading"
    t_us = parse(encode(ts=ts), ts_ms=9_223_372_036_854).t_us
    when = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=t_us)).isoformat()
    assert error.detail == (
        f"'ts' {when} is {ahead} ahead of its record's timestamp "
        "2026-11-22T02:44:04.250000+00:00: more than PULSE_MAX_FUTURE (30 s)"
    )


def test_the_future_bound_is_the_setting() -> None:
    value = encode(ts=1795315444.25)
    assert parse_reading(b"dev-0042", value, 1_795_315_444_250, MAX_BYTES, 0).t_us > 0
    with pytest.raises(Rejected) as info:
        parse_reading(b"dev-0042", value, 1_795_315_444_249, MAX_BYTES, 0)
    assert info.value.detail.endswith(": more than PULSE_MAX_FUTURE (0 s)")
    # the record's own timestamp as the event time is never ahead of it
    assert parse_reading(b"dev-0042", encode(), 5, MAX_BYTES, 0).t_us == 5000


@pytest.mark.parametrize("ts_ms", [None, -1])
def test_a_ts_on_a_record_without_timestamp_is_rejected(ts_ms: int | None) -> None:
    error = rejected(encode(ts=1795315444.25), ts_ms=ts_ms)
    assert error.reason == "invalid_reading"
    assert error.detail == (
        "the record has no timestamp, so its 'ts' cannot be held to PULSE_MAX_FUTURE"
    )


# -- device, metric and key -------------------------------------------------------------------


@pytest.mark.parametrize("field", ["device", "metric"])
def test_missing_name(field: str) -> None:
    error = rejected(encode(**{field: _DROP}))
    assert error.reason == "invalid_reading"
    assert error.detail == f"'{field}' is missing"


@pytest.mark.parametrize("field", ["device", "metric"])
@pytest.mark.parametrize(
    ("name", "kind"), [(42, "a number"), (True, "a boolean"), (["a"], "an array")]
)
def test_name_of_wrong_type(field: str, name: object, kind: str) -> None:
    error = rejected(encode(**{field: name}))
    assert error.reason == "invalid_reading"
    assert error.detail == f"'{field}' must be a string, got {kind}"


@pytest.mark.parametrize("field", ["device", "metric"])
@pytest.mark.parametrize(
    "name", ["", "x" * 129, "dev 42", "dev/42", "dév", "dev\n", "a:b", "a,b"], ids=repr
)
def test_name_not_matching_the_pattern(field: str, name: str) -> None:
    key = name.encode() if field == "device" else b"dev-0042"
    error = rejected(encode(**{field: name}), key=key)
    assert error.reason == "invalid_reading"
    assert error.detail.startswith(f"'{field}' must match [A-Za-z0-9_.-]{{1,128}}, got ")


def test_key_must_equal_the_device() -> None:
    error = rejected(encode(), key=b"dev-0043")
    assert error.reason == "invalid_reading"
    assert error.detail == (
        "the record key 'dev-0043' is not the device id 'dev-0042': "
        "Pulse keeps each device in one partition"
    )


def test_key_missing() -> None:
    error = rejected(encode(), key=None)
    assert error.reason == "invalid_reading"
    assert error.detail == "the record has no key: the key must be the device id"


def test_key_differing_only_by_whitespace_is_rejected() -> None:
    assert rejected(encode(), key=b"dev-0042 ").reason == "invalid_reading"


# -- value ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (True, "a boolean"),
        (False, "a boolean"),
        ("21.5", "a string"),
        ([1], "an array"),
        ({"v": 1}, "an object"),
    ],
)
def test_value_not_a_number(value: object, kind: str) -> None:
    error = rejected(encode(value=value))
    assert error.reason == "invalid_reading"
    assert error.detail == f"'value' must be a number, got {kind}"


def test_value_missing_or_null() -> None:
    for value in (_DROP, None):
        error = rejected(encode(value=value))
        assert error.reason == "invalid_reading"
        assert error.detail == "'value' must be a number, got null"


@pytest.mark.parametrize("value", [1.0000001e290, -2e290, 1e300, -1e308])
def test_value_beyond_the_magnitude_limit(value: float) -> None:
    error = rejected(encode(value=value))
    assert error.reason == "invalid_reading"
    assert error.detail == f"'value' {float(value)!r} is beyond +-1e+290"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1E+400"])
@pytest.mark.parametrize("field", [b"value", b"ts"])
def test_non_finite_value_is_not_json(literal: bytes, field: bytes) -> None:
    value = b'{"device": "dev-0042", "metric": "m", "' + field + b'": ' + literal + b"}"
    assert rejected(value).reason == "invalid_json"


# -- member names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (b'{"device":"dev-0042","metric":"m","value":1.5,"value":1e290}', "value"),
        (b'{"device":"dev-0042","device":"dev-0043","metric":"m","value":1}', "device"),
        (b'{"device":"dev-0042","metric":"m","value":1,"\\u0076alue":2}', "value"),  # escaped
        (b'{"device":"dev-0042","metric":"m","value":1,"tags":{"s":"a","s":"b"}}', "s"),
        (b'{"device":"dev-0042","metric":"m","value":1,"x":[{"a:b":1,"a:b":2}]}', "a:b"),
        # beside the ':' of a time, and beside an escaped ':' (which one more member hides)
        (
            b'{"device":"dev-0042","metric":"m","ts":"2026-11-22T10:04:04Z","value":1,"value":2}',
            "value",
        ),
        (b'{"device":"dev-0042","metric":"m","note":"\\u003a","value":1,"value":2}', "value"),
    ],
)
def test_a_repeated_member_name_is_rejected(value: bytes, name: str) -> None:
    # Parsers differ on which of the two counts: Pulse takes neither.
    error = rejected(value)
    assert error.reason == "invalid_json"
    assert error.detail == (
        f"an object repeats the member name {name!r}: JSON parsers differ on which one counts"
    )


def test_the_same_name_in_other_objects_and_colons_in_strings_are_no_repeats() -> None:
    value = (
        b'{"device":"dev-0042","metric":"m","value":1,"ts":"2026-11-22T10:04:04+02:00",'
        b'"x":[{"value":1},{"value":2}],"note":{"value:x":"a:b"},"tags":{"ts":"{\\":\\"}"}}'
    )
    reading = parse(value)
    assert reading.tags == {"ts": '{":"}'}


# -- tags -------------------------------------------------------------------------------------


def test_sixteen_tags_accepted_seventeen_rejected() -> None:
    tags = {f"k{i}": f"v{i}" for i in range(16)}
    assert parse(encode(tags=tags)).tags == tags
    tags["k16"] = "v16"
    error = rejected(encode(tags=tags))
    assert error.reason == "invalid_reading"
    assert error.detail == "'tags' has 17 entries, at most 16"


def test_empty_tags_are_none() -> None:
    assert parse(encode(tags={})).tags is None
    assert parse(encode(tags=None)).tags is None


@pytest.mark.parametrize(
    ("tags", "kind"), [([], "an array"), ("site", "a string"), (1, "a number")]
)
def test_tags_not_an_object(tags: object, kind: str) -> None:
    error = rejected(encode(tags=tags))
    assert error.reason == "invalid_reading"
    assert error.detail == f"'tags' must be an object, got {kind}"


@pytest.mark.parametrize("key", ["", "x" * 65, "a b", "a=b", "ü", "a\n"], ids=repr)
def test_tag_key_pattern(key: str) -> None:
    error = rejected(encode(tags={key: "v"}))
    assert error.reason == "invalid_reading"
    assert error.detail == f"tag key {key!r} must match [A-Za-z0-9_.-]{{1,64}}"


def test_tag_key_of_64_chars_accepted() -> None:
    assert parse(encode(tags={"k" * 64: "v"})).tags == {"k" * 64: "v"}


@pytest.mark.parametrize(
    "key",
    [
        "device",
        "window",
        "time",
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
        "_measurement",
        "_field",
        "_",
    ],
)
def test_reserved_tag_keys(key: str) -> None:
    error = rejected(encode(tags={key: "v"}))
    assert error.reason == "invalid_reading"
    assert error.detail == f"tag key {key!r} is reserved"


@pytest.mark.parametrize(("value", "kind"), [(1, "a number"), (None, "null"), (True, "a boolean")])
def test_tag_value_must_be_a_string(value: object, kind: str) -> None:
    error = rejected(encode(tags={"site": value}))
    assert error.reason == "invalid_reading"
    assert error.detail == f"tag 'site' must be a string, got {kind}"


def test_tag_value_length() -> None:
    assert parse(encode(tags={"site": "é" * 256})).tags == {"site": "é" * 256}
    error = rejected(encode(tags={"site": "x" * 257}))
    assert error.reason == "invalid_reading"
    assert error.detail == "tag 'site' is 257 characters, at most 256"


@pytest.mark.parametrize("char", ["\x00", "\n", "\t", "\x1f", "\x7f"], ids=repr)
def test_tag_value_control_characters(char: str) -> None:
    error = rejected(encode(tags={"site": f"plant{char}a"}))
    assert error.reason == "invalid_reading"
    assert error.detail == "tag 'site' contains a control character"


def test_tag_values_with_spaces_commas_and_unicode_are_kept() -> None:
    tags = {"site": "plant a, hall=2 \\ ü", "empty": ""}
    assert parse(encode(tags=tags)).tags == tags


# -- whole-record errors ----------------------------------------------------------------------


def test_too_large_is_checked_first() -> None:
    value = encode(tags={"site": "x" * 200})
    reading = parse_reading(b"dev-0042", value, RECORD_TS_MS, len(value), MAX_FUTURE_US)
    assert reading.tags == {"site": "x" * 200}
    with pytest.raises(Rejected) as info:
        parse_reading(b"other", value, RECORD_TS_MS, len(value) - 1, MAX_FUTURE_US)
    assert info.value.reason == "too_large"
    assert info.value.detail == (
        f"the value is {len(value)} bytes, more than the limit of {len(value) - 1}"
    )


@pytest.mark.parametrize("value", [b"", b"{", b"not json", b'{"device": }', b"\xff\xfe"])
def test_invalid_json(value: bytes) -> None:
    error = rejected(value)
    assert error.reason == "invalid_json"
    assert error.detail.startswith("not valid JSON: ")


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (b"[1, 2]", "an array"),
        (b'"text"', "a string"),
        (b"42", "a number"),
        (b"null", "null"),
        (b"true", "a boolean"),
    ],
)
def test_non_object_json(value: bytes, kind: str) -> None:
    error = rejected(value)
    assert error.reason == "invalid_reading"
    assert error.detail == f"the value must be a JSON object, got {kind}"


def test_tombstone() -> None:
    error = rejected(None)
    assert error.reason == "invalid_json"
    assert error.detail == "the record has no value (a tombstone)"
    assert str(error) == "invalid_json: the record has no value (a tombstone)"


def test_long_bad_names_are_clipped_in_the_detail() -> None:
    name = "bad name " * 20
    error = rejected(encode(device=name), key=name.encode())
    assert error.detail == f"'device' must match [A-Za-z0-9_.-]{{1,128}}, got {name[:80] + '...'!r}"


# -- the common case -----------------------------------------------------------------------------
#
# The worker's batch path parses the common record with parse_common (tables/_speedups_py.py,
# in C unless PULSE_NO_EXTENSIONS says otherwise) and hands everything else to parse_reading,
# the definition. Both must agree on every record.


def parse_with_batch(
    key: bytes | None,
    value: bytes | None,
    record_ts_ms: int | None,
    max_bytes: int,
    max_future_us: int = MAX_FUTURE_US,
) -> Reading:
    reading = parse_common(
        key, value, record_ts_ms, max_bytes, max_future_us, VALID_NAMES, orjson.loads, Reading
    )
    if reading is not None:
        return reading
    return parse_reading(key, value, record_ts_ms, max_bytes, max_future_us)


def outcome(
    parse_with: Any,
    key: bytes | None,
    value: bytes | None,
    ts_ms: int | None = RECORD_TS_MS,
    max_future_us: int = MAX_FUTURE_US,
) -> object:
    try:
        return parse_with(key, value, ts_ms, MAX_BYTES, max_future_us)
    except Rejected as exc:
        return (exc.reason, exc.detail)


names = st.sampled_from(["dev-1", "dev-2", "temperature", "t", "bad name", "", "x" * 129])
numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**63), 2**63 - 1),  # what JSON from orjson holds
    st.sampled_from([1e290, -1e290, 1.0000001e290, -2e290, 1e300, 0.0, -0.0]),
)
timestamps = st.one_of(
    st.floats(min_value=-1e9, max_value=1e13, allow_nan=False),
    st.sampled_from([1795315444.3, 4e9, 4e9 + 1e-6, 9_223_372_036.854775, 0.0, -0.0, -1e-7]),
    st.sampled_from([0.5e-6, 1.5e-6, 2.5e-6]),  # ties: t_us rounds half to even
    st.integers(-10, 10**13),
    st.just("2026-11-22T10:04:04Z"),
)
_ABSENT = object()


def common_or(other: st.SearchStrategy[Any], common: Any) -> st.SearchStrategy[Any]:
    """Half the time the field of a common record, else anything of ``other`` or absent:
    most records then differ from the common case in one or two fields."""
    return st.one_of(st.just(common), st.one_of(other, st.just(_ABSENT)))


documents = st.fixed_dictionaries(
    {
        "device": common_or(st.one_of(names, st.integers(0, 9)), "dev-1"),
        "metric": common_or(names, "temperature"),
        "value": common_or(st.one_of(numbers, st.text(max_size=3), st.none()), 21.5),
        "ts": common_or(st.one_of(timestamps, st.none()), 1795315444.25),
        "tags": common_or(st.sampled_from([None, {}, {"site": "a"}, {"_x": "a"}, "a"]), _ABSENT),
    }
)


record_timestamps = st.one_of(
    st.just(RECORD_TS_MS),
    st.integers(1_795_315_400_000, 1_795_315_500_000),  # around the common ts: some ahead
    st.sampled_from([None, -1, 0, 2**63 - 1]),
)
future_bounds = st.sampled_from([MAX_FUTURE_US, 0, 10**18])


@settings(max_examples=3000, deadline=None)
@given(
    doc=documents,
    key=st.sampled_from([b"", b"dev-2", b"t", None]),
    ts_ms=record_timestamps,
    max_future_us=future_bounds,
)
def test_parse_reading_equals_its_definition(
    doc: dict[str, Any], key: bytes | None, ts_ms: int | None, max_future_us: int
) -> None:
    doc = {field: value for field, value in doc.items() if value is not _ABSENT}
    if key == b"" and isinstance(doc.get("device"), str):
        key = doc["device"].encode()  # the key of a common record
    value = orjson.dumps(doc)
    for name in ("dev-1", "dev-2", "temperature", "t"):  # validated before: the batch may take it
        parse(encode(device=name, metric=name), key=name.encode())
    assert outcome(parse_with_batch, key, value, ts_ms, max_future_us) == outcome(
        parse_reading, key, value, ts_ms, max_future_us
    )


def test_the_common_record_is_parsed_by_the_batch_path_and_the_rest_is_not() -> None:
    parse(encode(ts=1795315444.3))  # device and metric now validated
    value = encode(ts=1795315444.3)
    common = (b"dev-0042", value, RECORD_TS_MS, MAX_BYTES, MAX_FUTURE_US)
    more = (VALID_NAMES, orjson.loads, Reading)
    reading = Reading("dev-0042", "temperature", 21.5, 1795315444300000, None)
    assert parse_common(*common, *more) == reading
    too_large = (*common[:3], len(value) - 1, MAX_FUTURE_US)
    assert parse_common(*too_large, *more) is None  # rejected by the definition, with its reason
    too_far_ahead = (*common[:2], 1_795_315_414_299, *common[3:])
    assert parse_common(*too_far_ahead, *more) is None
    for other in (
        encode(ts=1795315444),  # an int ts
        encode(value=21, ts=1.0),  # an int value
        encode(ts=1.0, tags={"site": "a"}),  # tags
        encode(ts=1.0, device="dev-new"),  # a name not validated before
        encode(ts=1.0, unit="a:b"),  # a ':' in a string
        encode(),  # no ts
        b"[1]",
        b"{",
    ):
        key = orjson.loads(other)["device"].encode() if other.startswith(b'{"') else b"k"
        assert parse_common(key, other, *common[2:], *more) is None


# The texts of the common record, written by hand (tests/helpers/json_texts.py) to hit the
# edges of the shape the batch path reads without orjson.


@settings(max_examples=3000, deadline=None)
@given(value=hand_written_json(), key=st.sampled_from([b"dev-1", b"dev-2", b"t"]))
def test_parse_reading_equals_its_definition_on_hand_written_json(value: bytes, key: bytes) -> None:
    for name in ("dev-1", "dev-2", "temperature", "t"):  # validated before: the batch may take it
        parse(encode(device=name, metric=name), key=name.encode())
    assert outcome(parse_with_batch, key, value) == outcome(parse_reading, key, value)


def test_members_in_any_order_and_exponents_are_the_common_record() -> None:
    parse(encode(ts=1.0))  # device and metric now validated
    value = b'{"ts":1.7953154443E9,"value":-2.5e-3,"metric":"temperature","device":"dev-0042"}'
    assert parse_common(
        b"dev-0042",
        value,
        RECORD_TS_MS,
        MAX_BYTES,
        MAX_FUTURE_US,
        VALID_NAMES,
        orjson.loads,
        Reading,
    ) == Reading("dev-0042", "temperature", -0.0025, 1_795_315_444_300_000, None)


edge_floats = st.one_of(
    st.floats(),
    st.floats(min_value=1e290),  # where arithmetic on a value overflows
    st.floats(max_value=-1e290),
    st.floats(min_value=-1e-300, max_value=1e-300),  # and where it underflows
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=2000, deadline=None)
@given(
    doc=st.fixed_dictionaries(
        {
            # each field valid half the time, so that the later checks are reached too
            "device": common_or(json_values, "dev-1"),
            "metric": common_or(json_values, "t"),
            "value": common_or(st.one_of(edge_floats, json_values), 1.5),
            "ts": common_or(st.one_of(edge_floats, json_values), 1795315444.25),
            "tags": common_or(
                st.one_of(
                    st.dictionaries(st.text(max_size=8), json_values, max_size=3), json_values
                ),
                _ABSENT,
            ),
        }
    ),
    raw=st.one_of(st.none(), st.binary(max_size=40)),
    key=st.sampled_from([b"dev-1", b"", None, b"\xff"]),
    ts_ms=st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
)
def test_any_record_is_a_reading_or_rejected_never_another_error(
    doc: dict[str, Any], raw: bytes | None, key: bytes | None, ts_ms: int | None
) -> None:
    # The worker never dies of a bad message: whatever a record holds, the parse returns a
    # Reading or raises Rejected (a dead letter with its reason), nothing else.
    doc = {field: value for field, value in doc.items() if value is not _ABSENT}
    parse(encode(device="dev-1", metric="t"), key=b"dev-1")  # names validated: batch may take it
    try:
        value = orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        value = b"{}"
    for candidate in (value, raw):
        try:
            result = parse_with_batch(key, candidate, ts_ms, MAX_BYTES)
        except Rejected as rejected:
            assert rejected.reason in {"invalid_json", "invalid_reading", "too_large"}
        else:
            assert isinstance(result, Reading)
