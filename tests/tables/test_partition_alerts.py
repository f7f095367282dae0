"""Alerts inside a partition's state (tables/partition_state.py): judged at the same points of
the input whatever the fetches and drains, recorded in the changelog, and equal to the
independent reference (tests/reference.py, AlertReference) fed record by record.

Absence, ``> 5 s`` without a reading, grace 0 (W = the latest event time)::

    d1 readings   t=0          t=2                       t=9   t=10
    W             0            2        (d2 at t=8) 8    9     10
    d1 absent?                          yes: 8 >= 2 + 5        resolved at t=9
                                        ▲ fires at the record that takes W to 8, even when
                                          the next drain comes only after d1's t=9 reading
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiokafka.structs import ConsumerRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.ingest import process_records
from models.alerts import AbsenceRule, AlertRule, Device, Registry, Selector
from models.reading import VALID_NAMES, Rejected, parse_reading
from tables.aggregators import Summary
from tables.partition_state import Delta, PartitionState
from tables.windows import parse_windows
from tests.helpers.records import MAX_FUTURE_US, T0, reading, records_
from tests.reference import AlertReference

S = 1_000_000
MAX_BYTES = 4096
AGGREGATE_NAMES = ("count", "sum", "min", "max", "mean", "first", "last", "p50", "p95", "p99")


def registry(version: int = 1, absence_s: float = 5, required_devices: bool = True) -> Registry:
    return Registry(
        version,
        devices=(Device("d1", site="s1"), Device("d2", site="s2"), Device("d4", enabled=False)),
        rules=(
            AlertRule("hot", "m", "10s", "mean", ">", 0.0, clear_threshold=-10.0),
            AlertRule("busy", "m", "10s", "count", ">=", 2, for_count=2, selector=Selector("d1")),
        ),
        absence_rules=(AbsenceRule("silent", "m", round(absence_s * S)),),
    )


def run(
    state: PartitionState, records: list[ConsumerRecord], chunk: int, drain_every: int
) -> tuple[list[dict[str, Any]], list[str], list[Any]]:
    """The records through process_records in fetches of ``chunk``, draining after every
    ``drain_every`` fetches and at the end: (alert JSON docs, dead-letter reasons, closed
    windows)."""
    alerts: list[dict[str, Any]] = []
    reasons: list[str] = []
    closed: list[Any] = []

    def reject(record: Any, reason: str, detail: str) -> None:
        reasons.append(reason)

    for n, begin in enumerate(range(0, len(records), chunk)):
        process_records(state, records[begin : begin + chunk], MAX_BYTES, MAX_FUTURE_US, reject)
        if (n + 1) % drain_every == 0:
            drained = state.drain()
            alerts += [orjson.loads(t.json()) for t in drained.alerts]
            closed += drained.closed
    drained = state.drain()
    alerts += [orjson.loads(t.json()) for t in drained.alerts]
    closed += drained.closed
    return alerts, reasons, closed


def by_key(alerts: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """Each (rule, device, metric)'s transitions in order: what must not depend on timing."""
    out: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for doc in alerts:
        out.setdefault((doc["rule"], doc["device"], doc["metric"]), []).append(doc)
    return out


def reference(
    specs: Any, grace_us: int, reg: Registry, required: bool, records: list[ConsumerRecord]
) -> tuple[list[dict[str, Any]], list[Any]]:
    """AlertReference fed after every record the watermark and the record's latest event
    time, as a state without any registry computes them (the windows' own definition), then
    every closed window of that state in close order."""
    state = PartitionState(specs, grace_us)
    ref = AlertReference()
    admitted = {d.id for d in reg.devices if d.enabled}
    closed: list[Any] = []
    for record in records:
        if record.offset < state.next_offset:
            continue
        try:
            parsed = parse_reading(
                record.key, record.value, record.timestamp, MAX_BYTES, MAX_FUTURE_US
            )
        except Rejected:
            state.skip(record.offset)
            continue
        if required and parsed.device not in admitted:
            state.skip(record.offset)
            continue
        try:
            applied = state.apply(parsed, record.offset)
        except Rejected:
            state.skip(record.offset)
            continue
        if applied:
            pair = (parsed.device, parsed.metric)
            ref.watermark(reg, state.watermark, {pair: state.latest[pair][0]})
    closed = state.drain().closed
    for window in closed:
        values = dict(zip(AGGREGATE_NAMES, Summary.values(window.state), strict=True))
        ref.window(
            reg, window.device, window.metric, window.window, window.start_us, window.end_us,
            values,
        )  # fmt: skip
    return ref.out, closed


@settings(max_examples=200, deadline=None)
@given(
    windows=st.sampled_from(["10s", "10s,1m", "10s,sliding:30s"]),
    grace_s=st.sampled_from([0, 2]),
    absence_s=st.sampled_from([1, 5, 30]),
    required=st.booleans(),
    records=records_(),
    chunk=st.integers(1, 25),
    drain_every=st.integers(1, 4),
)
def test_alerts_are_the_references_whatever_the_fetches_and_drains(
    windows: str,
    grace_s: int,
    absence_s: int,
    required: bool,
    records: list[ConsumerRecord],
    chunk: int,
    drain_every: int,
) -> None:
    specs, grace_us, reg = parse_windows(windows), grace_s * S, registry(1, absence_s)
    VALID_NAMES.clear()
    state = PartitionState(specs, grace_us)
    state.use_registry(reg, required)
    alerts, reasons, closed = run(state, records, chunk, drain_every)
    VALID_NAMES.clear()
    whole = PartitionState(specs, grace_us)
    whole.use_registry(reg, required)
    alerts_whole, reasons_whole, _ = run(whole, records, len(records) or 1, 1)
    expected, expected_closed = reference(specs, grace_us, reg, required, records)
    assert closed == expected_closed
    assert by_key(alerts) == by_key(alerts_whole) == by_key(expected)
    assert sorted(reasons) == sorted(reasons_whole)
    if not required:
        assert "unknown_device" not in reasons


def test_an_absence_fires_at_the_record_that_takes_the_watermark_past_its_deadline() -> None:
    # The timeline of the module's docstring, in one fetch and one drain.
    VALID_NAMES.clear()
    state = PartitionState(parse_windows("10s"), 0)
    state.use_registry(registry(1, 5), required=False)
    records = [
        reading(0, "d1", T0),
        reading(1, "d1", T0 + 2),
        reading(2, "d2", T0 + 8),
        reading(3, "d1", T0 + 9),
        reading(4, "d1", T0 + 10),
    ]
    process_records(state, records, MAX_BYTES, MAX_FUTURE_US, lambda *a: None)
    docs = [orjson.loads(t.json()) for t in state.drain().alerts]
    silent = [
        (d["device"], d["state"], d["start"], d["end"]) for d in docs if d["rule"] == "silent"
    ]
    assert silent == [
        ("d1", "firing", T0 + 2, T0 + 7),
        ("d1", "resolved", T0 + 9, T0 + 9),
    ]


def test_unknown_and_disabled_devices_are_dead_lettered_when_the_registry_is_required() -> None:
    VALID_NAMES.clear()
    state = PartitionState(parse_windows("10s"), 0)
    state.use_registry(registry(7), required=True)
    records = [
        reading(0, "d1", T0),
        reading(1, "d3", T0 + 1),  # not registered
        reading(2, "d4", T0 + 2),  # disabled
        reading(3, "d2", T0 + 3, tags={"site": "x"}),  # the record-by-record path
        reading(4, "d3", T0 + 4, tags={"site": "x"}),
    ]
    rejected: list[tuple[int, str, str]] = []
    process_records(
        state,
        records,
        MAX_BYTES,
        MAX_FUTURE_US,
        lambda r, why, d: rejected.append((r.offset, why, d)),
    )
    detail = (
        "device {!r} is not in the registry (version 7) or is disabled (PULSE_REGISTRY_REQUIRED)"
    )
    assert rejected == [
        (1, "unknown_device", detail.format("d3")),
        (2, "unknown_device", detail.format("d4")),
        (4, "unknown_device", detail.format("d3")),
    ]
    assert state.next_offset == 5
    assert sorted(state.latest) == [("d1", "m"), ("d2", "m")]


def test_the_version_and_the_alert_state_recover_from_the_changelog() -> None:
    # A switch recorded in a drain's delta: a state recovered from the deltas (through
    # their JSON, as the changelog holds them) holds that version and the same alert state,
    # and goes on to emit what the original does.
    VALID_NAMES.clear()
    specs = parse_windows("10s")
    original = PartitionState(specs, 0)
    original.use_registry(registry(1), required=False)
    first = [reading(i, "d1", T0 + 3 * i, value=1.0) for i in range(6)]
    process_records(original, first, MAX_BYTES, MAX_FUTURE_US, lambda *a: None)
    deltas = [original.drain(switch_to=registry(2)).delta]
    assert deltas[0].registry_version == 2
    assert original.registry_version == 2
    recovered = PartitionState(specs, 0)
    for delta in deltas:
        text = orjson.dumps(delta.to_json(), option=orjson.OPT_NON_STR_KEYS)
        assert recovered.apply_delta(Delta.from_json(orjson.loads(text)))
    recovered.finish_recovery()
    assert recovered.registry_version == 2
    recovered.use_registry(registry(2), required=False)
    assert recovered.alerts == original.alerts
    rest = [reading(6 + i, "d1", T0 + 18 + 4 * i, value=-20.0) for i in range(6)]
    rest.append(reading(12, "d2", T0 + 60))
    outputs = []
    for state in (original, recovered):
        process_records(state, rest, MAX_BYTES, MAX_FUTURE_US, lambda *a: None)
        outputs.append([t.json() for t in state.drain().alerts])
    assert outputs[0] == outputs[1]
    states = [(d["rule"], d["state"]) for d in map(orjson.loads, outputs[0])]
    assert ("hot", "resolved") in states and ("silent", "firing") in states


@pytest.mark.parametrize("snapshot", [False, True])
def test_a_delta_holds_the_alert_entries_that_changed(snapshot: bool) -> None:
    VALID_NAMES.clear()
    state = PartitionState(parse_windows("10s"), 0)
    state.use_registry(registry(3), required=False)
    records = [reading(0, "d1", T0, value=5.0), reading(1, "d1", T0 + 10, value=5.0)]
    process_records(state, records, MAX_BYTES, MAX_FUTURE_US, lambda *a: None)
    delta = state.drain(snapshot=snapshot).delta
    t0_us = round(T0 * S)
    # the first window (one reading) fired "hot" (mean 5 > 0) and did not breach "busy"
    # (count 1 < 2), which keeps no entry
    assert delta.alert_series == [["d1", "m", "10s", [["hot", 0, True, "mean", 0.0, "warning"]]]]
    assert delta.alert_absence == [["silent", "d1", "m", t0_us + 10 * S, False, "warning"]]
    assert delta.registry_version == 3
    # nothing changed since: an empty delta
    assert state.drain().delta.alert_series == []
