"""A changelog written by an earlier Pulse still recovers exactly.

``data/changelog_0_1_0.json`` holds the changelog records that Pulse 0.1.0 wrote for one
input partition: 400 readings (windows ``10s,1m,5m/1m,sliding:30s``), a delta every 40
records and a snapshot after the sixth, plus the 600 readings themselves. Recovery must
rebuild the state at offset 400 from the latest snapshot on, and processing the remaining
200 readings must then close every window that had not closed before the crash with the
aggregates of the independent reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.reading import Reading
from pulse.changelog import DeltaAssembler
from tables.aggregators import Summary
from tables.partition_state import PartitionState
from tables.windows import parse_windows
from tests.reference import Record, Valid, assert_window_fields, compute

FIXTURE = Path(__file__).parent / "data" / "changelog_0_1_0.json"
HUGE = 2**62


def load() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


def recover(doc: dict[str, Any]) -> PartitionState:
    """What ``pulse.changelog.recover_partition`` does after reading the topic: jump to the
    last record's ``base`` and apply the complete deltas from there."""
    values = [value.encode() for value in doc["changelog"]]
    base = json.loads(values[-1])["base"]
    state = PartitionState(parse_windows(doc["windows"]), doc["grace_us"])
    assembler = DeltaAssembler()
    for value in values[max(base, 0) :]:
        delta = assembler.add(value)
        if delta is not None:
            assert state.apply_delta(delta)
    state.finish_recovery()
    return state


def test_recovers_the_state_at_the_recorded_offset() -> None:
    doc = load()
    recovered = recover(doc)
    live = PartitionState(parse_windows(doc["windows"]), doc["grace_us"])
    for offset, row in enumerate(doc["readings"][: doc["recorded_to_offset"]]):
        live.apply(Reading(*row), offset)
    live.drain()
    assert recovered.next_offset == doc["recorded_to_offset"] == 400
    assert (recovered.max_t, recovered.idle_floor) == (live.max_t, live.idle_floor)
    assert recovered.windows == live.windows
    assert recovered.latest == live.latest
    assert recovered.sliding == live.sliding


def test_continues_to_the_reference_outputs() -> None:
    doc = load()
    readings = doc["readings"]
    recorded = readings[: doc["recorded_to_offset"]]
    watermark = max(row[3] for row in recorded) - doc["grace_us"]
    sizes = {"10s": 10_000_000, "1m": 60_000_000, "5m/1m": 300_000_000}

    state = recover(doc)
    for offset in range(state.next_offset, len(readings)):
        state.apply(Reading(*readings[offset]), offset)
    state.advance_idle(HUGE)
    closed = {(w.device, w.metric, w.window, w.start_us): w for w in state.drain().closed}

    expected = compute(
        [Record(0, i, Valid(*row)) for i, row in enumerate(readings)],
        {"10s": 10_000_000, "1m": 60_000_000, "5m/1m": (300_000_000, 60_000_000)},
        doc["grace_us"],
    )
    # The windows the recorded run closed before it stopped: their ends had passed its
    # watermark. Every other window must close now, once.
    closed_before = {k for k in expected.windows if k[3] + sizes[k[2]] <= watermark}
    assert closed_before
    assert set(closed) == set(expected.windows) - closed_before
    for key, window in closed.items():
        found = {**Summary.result(window.state), "tags": Summary.tags(window.state)}
        assert_window_fields(found, expected.windows[key], key)
