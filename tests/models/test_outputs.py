"""Dead letters: what a rejected record looks like on the dead-letter topic."""

from __future__ import annotations

import base64

from models.outputs import DeadLetter


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


def test_dead_letter_carries_its_records_timestamp_after_the_offset() -> None:
    doc = DeadLetter("late", "why", "readings", 3, 42, b"d", b"{}", 10, 1795315444250).document()
    assert list(doc) == [
        "reason",
        "detail",
        "topic",
        "partition",
        "offset",
        "timestamp",
        "key",
        "value",
    ]
    assert doc["timestamp"] == 1795315444250
    # A record without one (-1: no timestamp) gives a letter without.
    assert (
        "timestamp" not in DeadLetter("late", "", "readings", 0, 1, None, None, 10, -1).document()
    )
