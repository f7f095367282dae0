"""pulse/sinks/alerts.py's reading of the alerts topic: a transition's record back exactly, and
each way a value can fail to be one named."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.alerts import AlertTransition
from pulse.sinks.alerts import alert_record
from tests.helpers.alerts import absence_alert, window_alert

END_2262_US = 9_223_372_036 * 1_000_000
EXACT_US = 2**33 * 1_000_000
"""Until 2242, floats of seconds tell every microsecond apart."""


@given(
    start=st.integers(0, EXACT_US),
    length=st.integers(0, 10**12),
    value=st.floats(allow_nan=False, allow_infinity=False),
    silenced=st.booleans(),
)
def test_a_record_reads_back_as_the_transition_wrote_it(
    start: int, length: int, value: float, silenced: bool
) -> None:
    end = min(start + length, EXACT_US)
    transition = AlertTransition(
        rule="r", device="d", site=None, labels={"a": "b"}, metric="m", window="10s",
        start_us=start, end_us=end, aggregate="p99", value=value, threshold=-1.5,
        state="resolved", severity="s", silenced=silenced,
    )  # fmt: skip
    record = alert_record(transition.json())
    assert (record.start_us, record.end_us) == (start, end)
    assert record.version == f"{start:020d}{end:020d}"
    assert (record.id, record.value, record.silenced) == (transition.id, value, silenced)
    assert record.json == transition.json()


def _changed(**members: object) -> bytes:
    doc = orjson.loads(window_alert("r", "d", "m", "10s", 10, 1, "firing", 1.0).json())
    doc.update(members)
    return orjson.dumps(doc)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"[1]", "not an alert transition (not a JSON object)"),
        (b'{"id": "x"}', "not an alert transition: no rule, device, site"),
        (_changed(device="a:b"), "device 'a:b' is no name"),
        (_changed(severity=""), "severity '' is no name"),
        (_changed(id=""), "id is not a text"),
        (_changed(site="a\nb"), "site is neither null nor a text"),
        (_changed(labels={"a": 1}), "labels is not an object of texts"),
        (_changed(window="sliding:1m"), "window 'sliding:1m' is no label"),
        (_changed(window="10x"), "window '10x' is no label"),
        (_changed(aggregate="median"), "aggregate 'median' is not one"),
        (_changed(value=None), "value is not a number"),
        (_changed(window=None), "an aggregate or value without a window"),
        (_changed(start=True), "start is not a number"),
        (_changed(end=1), "start and end not in order from 1970 to 2262"),
        (_changed(end=1e10), "start and end not in order from 1970 to 2262"),
        (_changed(threshold="80"), "threshold is not a number"),
        (_changed(state="pending"), "state 'pending' is not one"),
        (_changed(silenced=0), "silenced is not true or false"),
    ],
)
def test_a_value_that_is_no_transition_says_why(value: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=r"^not an alert transition") as refused:
        alert_record(value)
    assert reason in str(refused.value)


def test_an_absence_rules_transition_has_no_window_aggregate_or_value() -> None:
    record = alert_record(absence_alert("q", "d", "m", "firing", 1.5, 30).json())
    assert (record.window, record.aggregate, record.value) == (None, None, None)
    assert record.alert == "q:d:m:"
    assert record.end_us - record.start_us == 30_000_000
