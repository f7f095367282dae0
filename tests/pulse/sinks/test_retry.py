"""The sorting of a target's answers and the waits between tries (pulse/sinks/_retry.py)."""

from __future__ import annotations

import email.utils

import pytest

from pulse.sinks._retry import (
    MAX_RETRY_AFTER,
    MAX_RETRY_DELAY,
    Backoff,
    ContentRefused,
    RefusedByTarget,
    RetryLater,
    parse_retry_after,
)
from pulse.sinks.influx import refusal

NOW = 1_795_315_444.0


def test_retry_after_in_both_forms() -> None:
    assert parse_retry_after("120", now=NOW) == 120.0
    assert parse_retry_after(" 0 ", now=NOW) == 0.0
    assert parse_retry_after("0.5", now=NOW) == 0.5  # not RFC 9110's form, but sent
    date = email.utils.formatdate(NOW + 30, usegmt=True)  # e.g. "Wed, 21 Oct 2026 07:28:00 GMT"
    assert parse_retry_after(date, now=NOW) == 30.0
    assert parse_retry_after(email.utils.formatdate(NOW - 30, usegmt=True), now=NOW) == 0.0
    assert parse_retry_after("Sun Nov  6 08:49:37 1994", now=NOW) == 0.0  # asctime, GMT
    for unreadable in (None, "", "soon", "nan", "-", "Mon, 99 Foo 2026"):
        assert parse_retry_after(unreadable, now=NOW) is None, unreadable


def test_backoff_doubles_with_jitter_up_to_its_cap_and_honours_retry_after() -> None:
    backoff = Backoff()
    delay = 0.1
    for _ in range(12):
        wait = backoff.next_wait()
        assert delay / 2 <= wait <= delay
        delay = min(delay * 2, MAX_RETRY_DELAY)
    assert backoff.failures == 12
    assert backoff.next_wait(retry_after=42.0) == 42.0
    assert backoff.next_wait(retry_after=-3.0) == 0.0
    assert backoff.next_wait(retry_after=1e9) == MAX_RETRY_AFTER
    waits = {round(Backoff().next_wait(), 6) for _ in range(50)}
    assert len(waits) > 10  # jittered: many sinks that failed together do not retry together


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (429, RetryLater),
        (408, RetryLater),
        (500, RetryLater),
        (502, RetryLater),
        (503, RetryLater),
        (504, RetryLater),
        (400, ContentRefused),
        (413, ContentRefused),
        (422, ContentRefused),
        (401, RefusedByTarget),
        (403, RefusedByTarget),
        (404, RefusedByTarget),
        (405, RefusedByTarget),
    ],
)
def test_influx_answers_are_sorted(status: int, kind: type[Exception]) -> None:
    error = refusal(status, "Reason", b'{"message":"why"}', {"Retry-After": "7"})
    assert type(error) is kind
    assert str(error) == f'HTTP {status} Reason: {{"message":"why"}}'
    if isinstance(error, RetryLater):
        assert error.retry_after == 7.0
    if isinstance(error, ContentRefused):
        assert error.too_large == (status == 413)
