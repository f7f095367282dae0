"""PartitionState: watermark, lateness, closing, latest values, idle close, drains and offsets.

The property tests compare it with :class:`BruteForce`, written from the contract of issues 2
and 3 alone (it shares no code with ``tables/``): every window keeps the list of readings
applied to it, window membership is found by scanning candidate starts, and aggregates are
computed from those lists when a window closes.
"""

from __future__ import annotations

import gc
import math
import random
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.outputs import ClosedWindow, Latest, OpenView
from models.reading import Reading
from pulse.sinks._text import aggregate_text
from tables import _native
from tables.aggregators import Summary
from tables.partition_state import Drained, PartitionState
from tables.windows import WindowSpec, parse_windows

S = 1_000_000
HUGE = 2**62


def R(device: str, t_s: float, value: float, metric: str = "m", tags: Any = None) -> Reading:
    return Reading(device, metric, float(value), round(t_s * S), tags)


class Feeder:
    """Feeds readings at consecutive offsets."""

    def __init__(self, windows: str, grace_s: float, next_offset: int = 0) -> None:
        self.state = PartitionState(parse_windows(windows), round(grace_s * S), next_offset)
        self.offset = next_offset

    def __call__(self, device: str, t_s: float, value: float, **kw: Any) -> bool:
        applied = self.state.apply(R(device, t_s, value, **kw), self.offset)
        self.offset += 1
        return applied

    def drain(self, snapshot: bool = False) -> Drained:
        return self.state.drain(snapshot=snapshot)


def closed_summary(closed: list[ClosedWindow]) -> list[tuple[Any, ...]]:
    """(device, window, start s, end s, count, sum, first, last) of each closed window."""
    out = []
    for window in closed:
        result = Summary.result(window.state)
        out.append(
            (
                window.device,
                window.window,
                window.start_us / S,
                window.end_us / S,
                result["count"],
                result["sum"],
                result["first"],
                result["last"],
            )
        )
    return out


# -- the watermark rule -----------------------------------------------------------------------


def test_window_closes_when_the_watermark_reaches_its_end() -> None:
    # 10s tumbling, grace 5s:  W = max t - 5
    #   0         10        20
    #   [ w0      )[ w1      )
    #    3            14 -> W=9 (w0 open) ; 15 -> W=10 >= 10: w0 closes
    feed = Feeder("10s", 5)
    assert feed("a", 3, 1.0)
    assert feed("a", 14, 2.0)
    assert feed.state.watermark == 9 * S
    assert feed.drain().closed == []
    assert feed("a", 9.999999, 3.0)  # still in time: W = 9 < 10
    assert feed("a", 15, 4.0)
    assert feed.state.watermark == 10 * S
    drained = feed.drain()
    assert closed_summary(drained.closed) == [("a", "10s", 0, 10, 2, 4.0, 1.0, 3.0)]
    assert drained.closed[0].metric == "m"


def test_late_for_every_window_returns_false_and_changes_nothing() -> None:
    feed = Feeder("10s", 0)
    assert feed("a", 5, 1.0)
    assert feed("a", 12, 2.0)  # W = 12: [0,10) closed, not drained yet
    assert not feed("a", 9, 100.0)  # late even before the drain takes the window out
    assert feed.state.max_t == 12 * S
    assert feed.state.next_offset == 3
    drained = feed.drain()
    assert closed_summary(drained.closed) == [("a", "10s", 0, 10, 1, 1.0, 1.0, 1.0)]
    assert [(x.t_us, x.value) for x in drained.latest] == [(12 * S, 2.0)]
    assert not feed("a", 0, 100.0)  # still late after the drain
    assert feed.drain().closed == []


def test_reading_exactly_at_the_watermark_end_is_late() -> None:
    # W >= end closes: with W = 10 the window [0,10) is closed and t = 9.999999 is late
    feed = Feeder("10s", 2)
    assert feed("a", 12, 1.0)
    assert not feed("b", 9.999999, 1.0)
    assert feed("b", 10, 1.0)


def test_late_for_some_windows_is_applied_to_the_others() -> None:
    # 10s and 1m, grace 0
    #   10s: [0,10) closes when W >= 10; 1m: [0,60) still open
    feed = Feeder("10s,1m", 0)
    assert feed("a", 5, 1.0)
    assert feed("a", 25, 2.0)  # W = 25
    assert feed("a", 8, 4.0)  # late for [0,10), applied to [0,60)
    assert feed("a", 60, 8.0)  # W = 60
    drained = feed.drain()
    assert sorted(closed_summary(drained.closed)) == [
        ("a", "10s", 0, 10, 1, 1.0, 1.0, 1.0),
        ("a", "10s", 20, 30, 1, 2.0, 2.0, 2.0),
        ("a", "1m", 0, 60, 3, 7.0, 1.0, 2.0),
    ]


def test_hopping_reading_late_for_older_windows_only() -> None:
    # 30s/10s, grace 0. Readings at 5 then 32 (W=32): windows ending <= 32 are closed.
    #   [-20,10) [-10,20) [0,30)   hold 5
    #   [10,40) [20,50) [30,60)    hold 32
    # a reading at 15 belongs to [-10,20) (closed), [0,30) (closed), [10,40) (open)
    feed = Feeder("30s/10s", 0)
    assert feed("a", 5, 1.0)
    assert feed("a", 32, 2.0)
    assert feed("a", 15, 4.0)
    feed.state.advance_idle(HUGE)
    closed = closed_summary(feed.drain().closed)
    assert closed == [
        ("a", "30s/10s", -20, 10, 1, 1.0, 1.0, 1.0),
        ("a", "30s/10s", -10, 20, 1, 1.0, 1.0, 1.0),
        ("a", "30s/10s", 0, 30, 1, 1.0, 1.0, 1.0),
        ("a", "30s/10s", 10, 40, 2, 6.0, 4.0, 2.0),
        ("a", "30s/10s", 20, 50, 1, 2.0, 2.0, 2.0),
        ("a", "30s/10s", 30, 60, 1, 2.0, 2.0, 2.0),
    ]


def test_watermark_is_per_partition_state_and_across_keys() -> None:
    # the watermark is the partition's: another device's reading closes a's window
    feed = Feeder("10s", 1)
    assert feed("a", 1, 1.0)
    assert feed("b", 11, 1.0)  # W = 10
    assert closed_summary(feed.drain().closed) == [("a", "10s", 0, 10, 1, 1.0, 1.0, 1.0)]
    assert not feed("a", 2, 1.0)


def test_watermark_never_goes_back() -> None:
    feed = Feeder("10s", 0)
    assert feed("a", 50, 1.0)
    assert feed("a", 51, 1.0)
    assert feed("a", 50.5, 1.0)
    assert feed.state.watermark == 51 * S
    assert feed.state.max_t == 51 * S


def test_closing_order_is_by_window_end() -> None:
    feed = Feeder("1m,10s,20s/10s", 0)
    assert feed("b", 5, 1.0)
    for t in (1, 12, 25, 33, 47, 55):
        assert feed("a", t, t)
    assert feed("b", 61, 1.0)  # W = 61
    closed = feed.drain().closed
    ends = [w.end_us for w in closed]
    assert ends == sorted(ends)
    assert {(w.device, w.window, w.start_us // S) for w in closed} == {
        ("a", "10s", 0),
        ("a", "10s", 10),
        ("a", "10s", 20),
        ("a", "10s", 30),
        ("a", "10s", 40),
        ("a", "10s", 50),
        ("a", "1m", 0),
        ("a", "20s/10s", -10),
        ("a", "20s/10s", 0),
        ("a", "20s/10s", 10),
        ("a", "20s/10s", 20),
        ("a", "20s/10s", 30),
        ("a", "20s/10s", 40),
        ("b", "10s", 0),
        ("b", "1m", 0),
        ("b", "20s/10s", -10),
        ("b", "20s/10s", 0),
    }


def test_closed_windows_are_emitted_once_and_leave_the_state() -> None:
    feed = Feeder("10s", 0)
    feed("a", 1, 1.0)
    feed("a", 11, 1.0)
    assert len(feed.drain().closed) == 1
    assert feed.state.open_windows == 1
    feed.state.advance_idle(HUGE)
    assert [w.start_us for w in feed.drain().closed] == [10 * S]
    assert feed.drain().closed == []
    assert feed.state.open_windows == 0
    assert feed.state.windows == {}
    assert feed.state.latest == {}


# -- latest value -----------------------------------------------------------------------------


def test_latest_value_rules() -> None:
    feed = Feeder("1m", 0)
    feed("a", 10, 1.0)
    feed("a", 5, 2.0)  # older: not latest
    assert [(x.t_us, x.value) for x in feed.drain().latest] == [(10 * S, 1.0)]
    feed("a", 10, 3.0)  # tie: the one processed later wins
    assert [(x.t_us, x.value) for x in feed.drain().latest] == [(10 * S, 3.0)]
    feed("a", 9, 4.0)
    assert feed.drain().latest == []  # unchanged, not repeated
    feed("a", 20, 5.0, metric="n")
    assert [(x.metric, x.t_us, x.value) for x in feed.drain().latest] == [("n", 20 * S, 5.0)]


def test_late_reading_is_not_latest() -> None:
    feed = Feeder("10s", 0)
    feed("a", 15, 1.0)
    feed("b", 30, 1.0)  # W = 30
    feed.drain()
    assert not feed("a", 16, 9.0)
    assert [x for x in feed.drain().latest if x.device == "a"] == []


def test_latest_of_a_reading_whose_window_closes_in_the_same_flush_is_drained() -> None:
    """The contract's ``pulse:device:{device}`` field is "the value of the applied reading with
    the latest event time". A reading applied and whose windows all close before the next drain
    (a later reading of another device pushes the watermark past them, as happens in every
    catch-up batch) must still reach the drain's ``latest``; otherwise no sink ever sees it."""
    feed = Feeder("10s", 0)
    assert feed("d", 15, 1.0)  # applied to [10,20)
    assert feed("e", 100, 2.0)  # W = 100: d's window closes
    drained = feed.drain()
    assert [(w.device, w.start_us) for w in drained.closed] == [("d", 10 * S)]
    assert sorted((x.device, x.metric, x.t_us, x.value) for x in drained.latest) == [
        ("d", "m", 15 * S, 1.0),
        ("e", "m", 100 * S, 2.0),
    ]


def test_latest_of_a_reading_closed_by_idle_close_in_the_same_flush_is_drained() -> None:
    feed = Feeder("10s", 0)
    assert feed("d", 15, 1.0)
    feed.state.advance_idle(50 * S)
    drained = feed.drain()
    assert [(x.device, x.t_us, x.value) for x in drained.latest] == [("d", 15 * S, 1.0)]


# -- idle close -------------------------------------------------------------------------------


def test_advance_idle_closes_quiet_windows_and_never_lowers() -> None:
    feed = Feeder("10s", 5)
    feed("a", 3, 1.0)
    feed.drain()
    feed.state.advance_idle(9 * S)
    assert feed.drain().closed == []
    feed.state.advance_idle(10 * S)
    assert closed_summary(feed.drain().closed) == [("a", "10s", 0, 10, 1, 1.0, 1.0, 1.0)]
    feed.state.advance_idle(2 * S)
    assert feed.state.watermark == 10 * S
    assert feed.state.idle_floor == 10 * S
    assert not feed("a", 9, 1.0)  # late: the idle floor counts in the watermark
    assert feed("a", 10, 1.0)
    assert feed("a", 14, 1.0)  # t - grace = 9 < floor: the watermark stays 10
    assert feed.state.watermark == 10 * S
    assert feed("a", 16, 1.0)
    assert feed.state.watermark == 11 * S


def test_late_reading_after_idle_floor_does_not_raise_max_t() -> None:
    feed = Feeder("10s", 0)
    feed.state.advance_idle(100 * S)
    assert not feed("a", 50, 1.0)
    assert feed.state.max_t < 0
    assert feed.state.watermark == 100 * S


# -- drain contents ---------------------------------------------------------------------------


def views(drained: Drained) -> list[tuple[Any, ...]]:
    return sorted(
        (
            v.device,
            v.metric,
            v.window,
            v.start_us / S,
            v.end_us / S,
            None if v.state is None else Summary.result(v.state)["count"],
        )
        for v in drained.open_views
    )


def test_drain_contents() -> None:
    feed = Feeder("10s,30s/10s", 0)
    feed("a", 1, 1.0)
    feed("a", 12, 2.0, tags={"site": "x"})
    drained = feed.drain()
    assert views(drained) == [
        ("a", "m", "10s", 10, 20, 1),
        ("a", "m", "30s/10s", 10, 40, 1),  # the newest open window of the series
    ]
    assert sorted(closed_summary(drained.closed)) == [
        ("a", "10s", 0, 10, 1, 1.0, 1.0, 1.0),
        ("a", "30s/10s", -20, 10, 1, 1.0, 1.0, 1.0),
    ]
    # versioned by the partition's position at the drain; the changelog row has no version
    assert drained.latest == [Latest("a", "m", 12 * S, 2.0, 2)]
    delta = drained.delta
    assert (delta.from_offset, delta.to_offset, delta.max_t) == (0, 2, 12 * S)
    assert not delta.snapshot
    # every window that changed and is still open, with its full state; closed ones removed
    assert sorted((row[2], row[3] // S) for row in delta.windows) == [
        ("10s", 10),
        ("30s/10s", -10),
        ("30s/10s", 0),
        ("30s/10s", 10),
    ]
    assert sorted(delta.removed) == [["a", "m", "10s", 0], ["a", "m", "30s/10s", -20 * S]]
    assert delta.latest == [["a", "m", 12 * S, 2.0]]
    assert delta.latest_removed == []

    # nothing happened: an empty drain at the same offset
    again = feed.drain()
    assert (again.closed, again.open_views, again.latest) == ([], [], [])
    assert again.delta.empty
    assert (again.delta.from_offset, again.delta.to_offset) == (2, 2)

    # a reading into an older (not newest) hopping window changes no view of that series
    feed("a", 9, 4.0)  # late for 10s [0,10)? W = 12 >= 10: yes; hopping [0,30) and [-10,20) open
    drained = feed.drain()
    assert views(drained) == []
    assert sorted((row[2], row[3] // S) for row in drained.delta.windows) == [
        ("30s/10s", -10),
        ("30s/10s", 0),
    ]
    assert drained.latest == []

    feed.state.advance_idle(HUGE)
    drained = feed.drain()
    # no open window left: the views say so with state None and the start and end of the
    # window whose close left the series without one (the version of the key's removal);
    # the latest value goes
    assert views(drained) == [
        ("a", "m", "10s", 10, 20, None),
        ("a", "m", "30s/10s", 10, 40, None),
    ]
    assert sorted(closed_summary(drained.closed)) == [
        ("a", "10s", 10, 20, 1, 2.0, 2.0, 2.0),
        ("a", "30s/10s", -10, 20, 3, 7.0, 1.0, 2.0),
        ("a", "30s/10s", 0, 30, 3, 7.0, 1.0, 2.0),
        ("a", "30s/10s", 10, 40, 1, 2.0, 2.0, 2.0),
    ]
    assert drained.latest == []
    assert drained.delta.windows == []
    assert drained.delta.latest_removed == [["a", "m"]]
    assert drained.delta.idle_floor == HUGE
    assert feed.state.latest == {}


def test_view_moves_to_the_newest_window_and_none_only_when_none_is_open() -> None:
    feed = Feeder("10s", 0)
    feed("a", 1, 1.0)
    feed.drain()
    feed("a", 11, 1.0)  # opens [10,20); W = 11 closes [0,10)
    assert views(feed.drain()) == [("a", "m", "10s", 10, 20, 1)]
    feed("b", 25, 1.0)  # closes a's [10,20): a's view is gone, versioned by that window
    assert views(feed.drain()) == [("a", "m", "10s", 10, 20, None), ("b", "m", "10s", 20, 30, 1)]


def test_snapshot_holds_the_whole_state() -> None:
    feed = Feeder("10s,1m", 0)
    feed("a", 1, 1.0)
    feed("b", 2, 2.0)
    feed.drain()
    feed("a", 3, 3.0)
    snapshot = feed.drain(snapshot=True).delta
    assert snapshot.snapshot
    assert sorted((row[0], row[2], row[3]) for row in snapshot.windows) == [
        ("a", "10s", 0),
        ("a", "1m", 0),
        ("b", "10s", 0),
        ("b", "1m", 0),
    ]
    assert sorted(snapshot.latest) == [["a", "m", 3 * S, 3.0], ["b", "m", 2 * S, 2.0]]
    assert (snapshot.from_offset, snapshot.to_offset) == (2, 3)


# -- offsets ----------------------------------------------------------------------------------


def test_offsets_already_applied_are_skipped() -> None:
    state = PartitionState(parse_windows("10s"), 0, next_offset=100)
    assert state.apply(R("a", 1, 1.0), 99)  # before the start: ignored, reported as handled
    assert state.windows == {}
    assert state.apply(R("a", 1, 1.0), 100)
    assert state.apply(R("a", 2, 5.0), 100)  # the same offset again: ignored
    state.skip(101)  # a rejected record
    assert state.apply(R("a", 2, 7.0), 101)  # already handled: ignored
    state.skip(50)  # never moves back
    assert state.next_offset == 102
    drained = state.drain()
    assert (drained.delta.from_offset, drained.delta.to_offset) == (100, 102)
    (row,) = drained.delta.windows
    assert Summary.result(row[4])["count"] == 1
    assert state.apply(R("a", 3, 2.0), 105)  # gaps (compacted or transactional offsets) are fine
    assert state.next_offset == 106


def test_late_reading_still_advances_the_offset() -> None:
    feed = Feeder("10s", 0)
    feed("a", 20, 1.0)
    assert not feed("a", 1, 1.0)
    assert feed.state.next_offset == 2
    assert feed.drain().delta.to_offset == 2


# -- property: against a brute-force reference ------------------------------------------------


@dataclass
class BruteForce:
    """Issue 2/3 window semantics, computed naively."""

    specs: list[tuple[str, int, int]]  # (label, size, step)
    grace: int
    max_t: float = -math.inf
    idle: float = -math.inf
    windows: dict[tuple[str, str, str, int], list[tuple[int, float, Any]]] = field(
        default_factory=dict
    )
    closed: set[tuple[str, str, str, int]] = field(default_factory=set)
    latest: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    latest_changed: set[tuple[str, str]] = field(default_factory=set)
    views_drained: dict[tuple[str, str, str], Any] = field(default_factory=dict)

    @property
    def watermark(self) -> float:
        return max(self.max_t - self.grace, self.idle)

    def size(self, label: str) -> int:
        return next(size for lab, size, _ in self.specs if lab == label)

    def apply(self, r: Reading) -> bool:
        applied = False
        for label, size, step in self.specs:
            k = (r.t_us - size) // step - 3
            while k * step <= r.t_us:
                start = k * step
                if start <= r.t_us < start + size and start + size > self.watermark:
                    self.windows.setdefault((r.device, r.metric, label, start), []).append(
                        (r.t_us, r.value, r.tags)
                    )
                    applied = True
                k += 1
        if applied:
            self.max_t = max(self.max_t, r.t_us)
            pair = (r.device, r.metric)
            if pair not in self.latest or r.t_us >= self.latest[pair][0]:
                self.latest[pair] = (r.t_us, r.value)
                self.latest_changed.add(pair)
        return applied

    def due(self) -> set[tuple[str, str, str, int]]:
        ready = {
            key
            for key in self.windows
            if key not in self.closed and key[3] + self.size(key[2]) <= self.watermark
        }
        self.closed |= ready
        return ready

    def newest_open(self, device: str, metric: str, label: str) -> int | None:
        starts = [
            k[3] for k in self.windows if k[:3] == (device, metric, label) and k not in self.closed
        ]
        return max(starts) if starts else None

    def views_now(self) -> dict[tuple[str, str, str], Any]:
        """Per series seen: None, or the newest open window's start and aggregates."""
        views: dict[tuple[str, str, str], Any] = {}
        for device, metric, label, _ in self.windows:
            newest = self.newest_open(device, metric, label)
            views[(device, metric, label)] = (
                None
                if newest is None
                else (newest, self.aggregates((device, metric, label, newest)))
            )
        return views

    def aggregates(self, key: tuple[str, str, str, int]) -> dict[str, Any]:
        applied = self.windows[key]
        total = applied[0][1]
        for _, value, _ in applied[1:]:
            total += value
        values = [v for _, v, _ in applied]
        first_t = min(t for t, _, _ in applied)
        last_t = max(t for t, _, _ in applied)
        last = [a for a in applied if a[0] == last_t][-1]
        return {
            "count": len(applied),
            "sum": total,
            "min": min(values),
            "max": max(values),
            "mean": total / len(applied),
            "first": next(v for t, v, _ in applied if t == first_t),
            "last": last[1],
            "tags": last[2] or {},
        }

    def check_percentiles(self, key: tuple[str, str, str, int], result: dict[str, Any]) -> None:
        ordered = sorted(v for _, v, _ in self.windows[key])
        for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
            want = ordered[math.floor(q * (len(ordered) - 1))]
            assert abs(result[name] - want) <= 0.01 * abs(want) + 1e-9, (key, name)


def window_result(state: list[Any]) -> dict[str, Any]:
    result = {k: v for k, v in Summary.result(state).items() if k not in {"p50", "p95", "p99"}}
    result["tags"] = Summary.tags(state)
    return result


SPEC_CHOICES = ["10s", "7s", "1m", "10s/5s", "9s/4s", "3s/1s", "20s/20s", "500ms"]
DEVICES = ["a", "b", "c"]

timestamps = st.integers(0, 120).map(lambda k: k * 500_000) | st.integers(0, 60 * S)
readings = st.builds(
    Reading,
    device=st.sampled_from(DEVICES),
    metric=st.sampled_from(["m", "n"]),
    value=st.floats(-1e6, 1e6, allow_nan=False) | st.sampled_from([0.0, -0.0, 2.5, 1e300]),
    t_us=timestamps,
    tags=st.none() | st.fixed_dictionaries({"site": st.sampled_from(["x", "y z", ""])}),
)
events = st.lists(
    st.one_of(
        readings.map(lambda r: ("reading", r)),
        readings.map(lambda r: ("reading", r)),
        readings.map(lambda r: ("reading", r)),
        st.just(("drain", None)),
        st.just(("skip", None)),
        st.integers(0, 70 * S).map(lambda f: ("idle", f)),
    ),
    max_size=80,
)


def _unique_specs(labels: list[str]) -> tuple[WindowSpec, ...]:
    kept: dict[tuple[int, int], str] = {}
    for label in labels:
        spec = parse_windows(label)[0]
        kept.setdefault((spec.size_us, spec.step_us), label)
    return parse_windows(",".join(kept.values()))


spec_sets = st.lists(st.sampled_from(SPEC_CHOICES), min_size=1, max_size=3).map(_unique_specs)
graces = st.sampled_from([0, 1, 5]).map(lambda s: s * S) | st.integers(0, 15 * S)


def run_checked(
    specs: tuple[WindowSpec, ...], grace: int, stream: list[tuple[str, Any]]
) -> Iterator[tuple[str, Any]]:
    """Run the stream through PartitionState and BruteForce, checking every drain."""
    state = PartitionState(specs, grace)
    ref = BruteForce([(s.label, s.size_us, s.step_us) for s in specs], grace)
    sizes = {s.label: s.size_us for s in specs}
    offset = 0
    all_closed: list[ClosedWindow] = []
    for kind, arg in [*stream, ("drain", None), ("idle", HUGE), ("drain", None)]:
        if kind == "reading":
            assert state.apply(arg, offset) == ref.apply(arg), (offset, arg)
            offset += 1
        elif kind == "skip":
            state.skip(offset)
            offset += 1
        elif kind == "idle":
            state.advance_idle(arg)
            ref.idle = max(ref.idle, arg)
        else:
            drained = state.drain()
            assert drained.delta.to_offset == offset
            due = ref.due()
            got = [(w.device, w.metric, w.window, w.start_us) for w in drained.closed]
            assert len(got) == len(set(got))
            assert set(got) == due
            ends = [w.end_us for w in drained.closed]
            assert ends == sorted(ends)
            for window in drained.closed:
                key = (window.device, window.metric, window.window, window.start_us)
                assert type(window) is ClosedWindow
                assert window.text == Summary.text(window.state)
                assert window.end_us == window.start_us + sizes[window.window]
                assert window_result(window.state) == ref.aggregates(key), key
                ref.check_percentiles(key, Summary.result(window.state))
            all_closed += drained.closed
            series = [(v.device, v.metric, v.window) for v in drained.open_views]
            assert len(series) == len(set(series))
            for view in drained.open_views:
                assert type(view) is OpenView
                newest = ref.newest_open(view.device, view.metric, view.window)
                if view.state is None:
                    assert newest is None
                    # versioned by the series' newest closed window, closed in this drain
                    last = max(
                        w.start_us
                        for w in drained.closed
                        if (w.device, w.metric, w.window) == (view.device, view.metric, view.window)
                    )
                    assert last == max(
                        w.start_us
                        for w in all_closed
                        if (w.device, w.metric, w.window) == (view.device, view.metric, view.window)
                    )
                    end = last + sizes[view.window]
                    assert (view.start_us, view.end_us, view.text) == (last, end, None)
                else:
                    assert newest is not None
                    assert (view.start_us, view.end_us) == (newest, newest + sizes[view.window])
                    key = (view.device, view.metric, view.window, newest)
                    assert window_result(view.state) == ref.aggregates(key)
                    assert view.text == Summary.text(view.state)
            # every series whose newest open window (or its aggregates) differs from the view
            # last drained has a view in this drain: Redis is never left with a stale one
            for view_series, shown in ref.views_now().items():
                if shown != ref.views_drained.get(view_series):
                    assert view_series in series, view_series
            for view in drained.open_views:
                ref.views_drained[(view.device, view.metric, view.window)] = (
                    None if view.state is None else (view.start_us, window_result(view.state))
                )
            for latest in drained.latest:
                assert (latest.t_us, latest.value) == ref.latest[(latest.device, latest.metric)]
                assert latest.offset == offset  # the partition's position: its version
            # every latest value that changed reaches the drain (pulse:device:{device})
            assert {(x.device, x.metric) for x in drained.latest} == ref.latest_changed
            ref.latest_changed.clear()
            # the state only holds open windows
            assert state.open_windows == sum(1 for k in ref.windows if k not in ref.closed)
            # live_views: every series' newest open window and every kept latest value, as
            # they are, whatever the drains took (a mirror's rewrite after Redis was away)
            live, live_latest, _ = state.live_views()
            shown = {(v.device, v.metric, v.window): v for v in live}
            assert len(shown) == len(live)
            assert all(v.state is not None for v in live)
            assert {k: (v.start_us, window_result(v.state or [])) for k, v in shown.items()} == {
                k: view for k, view in ref.views_now().items() if view is not None
            }
            for view in live:
                assert view.state is not None
                assert view.end_us == view.start_us + sizes[view.window]
                assert view.text == Summary.text(view.state)
            for latest in live_latest:
                assert (latest.t_us, latest.value) == ref.latest[(latest.device, latest.metric)]
                assert latest.offset == offset
            assert {(d, m) for d, m, _ in shown} <= {(x.device, x.metric) for x in live_latest}
            yield "drained", drained
    # everything closed, each window once
    assert {(w.device, w.metric, w.window, w.start_us) for w in all_closed} == set(ref.windows)
    assert len(all_closed) == len(ref.windows)
    assert state.windows == {}
    assert state.latest == {}


@settings(max_examples=150, deadline=None)
@given(specs=spec_sets, grace=graces, stream=events)
def test_matches_brute_force(
    specs: tuple[WindowSpec, ...], grace: int, stream: list[tuple[str, Any]]
) -> None:
    for _ in run_checked(specs, grace, stream):
        pass


@settings(max_examples=60, deadline=None)
@given(
    specs=spec_sets,
    grace=graces,
    stream=st.lists(readings.map(lambda r: ("reading", r)), min_size=20, max_size=120),
)
def test_matches_brute_force_without_intermediate_drains(
    specs: tuple[WindowSpec, ...], grace: int, stream: list[tuple[str, Any]]
) -> None:
    for _ in run_checked(specs, grace, stream):
        pass


def test_brute_force_reference_agrees_with_a_worked_example() -> None:
    # guard against a reference that is wrong in the same way as the code
    ref = BruteForce([("10s", 10 * S, 10 * S)], 5 * S)
    assert ref.apply(R("a", 3, 1.0))
    assert ref.apply(R("a", 15, 2.0))  # W = 10
    assert not ref.apply(R("a", 9, 3.0))
    assert ref.due() == {("a", "m", "10s", 0)}
    assert ref.aggregates(("a", "m", "10s", 0))["count"] == 1


@pytest.mark.parametrize("grace_s", [0, 3])
def test_many_windows_state_stays_bounded(grace_s: int) -> None:
    feed = Feeder("1s,5s/1s", grace_s)
    peak = 0
    for i in range(5_000):
        feed(DEVICES[i % 3], i / 10, 1.0)
        if i % 50 == 0:
            feed.drain()
            peak = max(peak, feed.state.open_windows)
    # per device: 1s windows within grace + the 5 hopping windows, grace included
    assert peak <= 3 * ((grace_s + 2) + (grace_s + 6))


def test_windows_ending_together_close_spread_over_event_time() -> None:
    # 40 series, each with a window [0, 10s) of the 10s spec; grace 5 s, spread 4 s.
    # Readings of d0 move the watermark W = max_t - 5 s:
    #
    #   W (s)    10   11   12  12.5  14
    #   closed    0   10   20   25    40     (of the 40 ending at 10 s: 40 * (W - 10) / 4)
    def fill(state: PartitionState) -> int:
        for device in range(40):
            state.apply(Reading(f"d{device}", "m", float(device), 1 * S, None), device)
        return 40

    def key(window: ClosedWindow) -> tuple[Any, ...]:
        return (window.device, window.window, window.start_us, aggregate_text(window))

    spread = PartitionState(parse_windows("10s"), 5 * S)
    offset = fill(spread)
    closed_so_far, got = [], []
    for t_ms in (15_000, 16_000, 17_000, 17_500, 19_000):
        assert spread.apply(Reading("d0", "m", 0.5, t_ms * 1000, None), offset)
        offset += 1
        closed = spread.drain(spread_us=4 * S).closed
        got += [key(w) for w in closed if w.start_us == 0]
        closed_so_far.append(len(got))
    assert closed_so_far == [0, 10, 20, 25, 40]

    at_once = PartitionState(parse_windows("10s"), 5 * S)
    offset = fill(at_once)
    at_once.apply(Reading("d0", "m", 0.5, 15 * S, None), offset)
    at_once.apply(Reading("d0", "m", 0.5, 16 * S, None), offset + 1)
    expected = [key(w) for w in at_once.drain().closed]
    assert len(expected) == 40
    assert sorted(got) == sorted(expected)  # the same windows, the same aggregates
    # A reading for a window W has passed is late even before the window closes.
    late = PartitionState(parse_windows("10s"), 5 * S)
    offset = fill(late)
    late.apply(Reading("d0", "m", 0.5, 16 * S, None), offset)
    assert len(late.drain(spread_us=4 * S).closed) == 10
    assert not late.apply(Reading("d1", "m", 1.0, 2 * S, None), offset + 1)


def test_spread_closes_keep_the_order_of_window_ends() -> None:
    # Every series has [0, 10s) and [10s, 20s); at W = 21 s all 40 of the first end are due
    # and a quarter of the second (1 s of a 4 s spread): the first end's close first.
    state = PartitionState(parse_windows("10s"), 5 * S)
    offset = 0
    for device in range(40):
        for t_s in (1, 12):
            state.apply(Reading(f"d{device}", "m", 1.0, t_s * S, None), offset)
            offset += 1
    state.apply(Reading("d0", "m", 1.0, 26 * S, None), offset)
    starts = [w.start_us for w in state.drain(spread_us=4 * S).closed]
    assert starts == [0] * 40 + [10 * S] * 10
    state.apply(Reading("d0", "m", 1.0, 28 * S, None), offset + 1)  # W = 23 s: 3/4 of 40
    assert [w.start_us for w in state.drain(spread_us=4 * S).closed] == [10 * S] * 20
    state.apply(Reading("d0", "m", 1.0, 40 * S, None), offset + 2)  # W = 35 s: the rest
    closed = state.drain(spread_us=4 * S).closed
    assert [w.start_us for w in closed] == [10 * S] * 10 + [20 * S]
    assert not state.closing


UNTRACKED_IN_C = {
    "apply_windows",
    "update_latest",
    "close_windows",
    "open_views",
    "delta_rows",
}


@pytest.mark.skipif(
    not UNTRACKED_IN_C <= _native.IN_C, reason="the C functions that untrack are not in use"
)
def test_state_and_outputs_stay_off_the_cyclic_collector() -> None:
    # The C speedups (UNTRACKED in tables/_speedups.c): window states, keys, latest values,
    # views, closed windows, their texts and the changelog rows cannot be part of a cycle, so
    # the collector never scans them (that took tens of milliseconds of the loop per
    # collection). The Python definitions leave that to the collector.
    state = PartitionState(parse_windows("10s,1m"), 0)
    assert state.apply(Reading("d", "m", 1.5, 1 * S, None), 0)
    assert state.apply(Reading("d", "m", 2.5, 2 * S, {"site": "x"}), 1)
    first = state.drain()
    views = first.open_views
    assert len(state.windows) == 2 and len(views) == 2
    assert sorted(row[2] for row in first.delta.windows) == ["10s", "1m"]
    assert not any(gc.is_tracked(row) for row in first.delta.windows)
    for key, window_state in state.windows.items():
        assert not gc.is_tracked(key) and not gc.is_tracked(window_state)
    assert state.latest == {("d", "m"): (2 * S, 2.5)}
    for pair, latest in state.latest.items():
        assert not gc.is_tracked(pair) and not gc.is_tracked(latest)
    for view in views:
        assert view.text is not None
        assert not gc.is_tracked(view) and not gc.is_tracked(view.text)
    state.advance_idle(HUGE)
    drained = state.drain()
    assert [(w.window, w.start_us) for w in drained.closed] == [("10s", 0), ("1m", 0)]
    for window in drained.closed:
        assert window.text is not None
        assert not gc.is_tracked(window) and not gc.is_tracked(window.text)
    assert sorted((v.window, v.state) for v in drained.open_views) == [("10s", None), ("1m", None)]
    assert sorted(row[2] for row in drained.delta.removed) == ["10s", "1m"]
    assert not any(gc.is_tracked(row) for row in drained.delta.removed)
    assert not any(gc.is_tracked(view) for view in drained.open_views)


def test_a_key_with_a_spec_index_out_of_range_is_an_index_error_not_a_crash() -> None:
    # The loops index the labels (and sizes) tuples with a key's spec index; a key that
    # names no configured spec must raise, never read past the tuple or wrap around.
    state = PartitionState(parse_windows("10s,1m"), 0)
    assert state.apply(Reading("d", "m", 1.5, 1 * S, None), 0)
    labels, sizes = ("10s", "1m"), (10 * S, 60 * S)
    for index in (2, -1):
        key, series = ("d", "m", index, 0), ("d", "m", index)
        with pytest.raises(IndexError, match="spec index is out of range"):
            _native.delta_rows([key], None, labels)
        with pytest.raises(IndexError, match="spec index is out of range"):
            _native.open_views({series}, set(), {series: 0}, {}, labels, sizes, [], OpenView)
        windows = {key: state.windows[("d", "m", 0, 0)]}
        with pytest.raises(IndexError, match="spec index is out of range"):
            _native.close_windows(
                [key], 10 * S, windows, [], set(), set(), {}, set(), {}, labels, ClosedWindow
            )
        assert list(windows) == [key]  # nothing was closed


def test_latest_of_a_key_forgotten_and_removed_in_one_flush_is_drained_once() -> None:
    state = PartitionState(parse_windows("10s"), 0)
    assert state.apply(Reading("d", "m", 1.5, 1 * S, None), 0)
    assert state.apply(Reading("e", "m", 2.5, 12 * S, None), 1)  # closes d's window: W = 12 s
    drained = state.drain()
    assert sorted(drained.latest) == [
        Latest("d", "m", 1 * S, 1.5, 2),
        Latest("e", "m", 12 * S, 2.5, 2),
    ]
    assert sorted(drained.delta.latest) == [["d", "m", 1 * S, 1.5], ["e", "m", 12 * S, 2.5]]
    assert drained.delta.latest_removed == [["d", "m"]]
    assert state.latest == {("e", "m"): (12 * S, 2.5)}


def test_memory_estimate_is_near_what_the_state_allocates() -> None:
    """PartitionState.memory_estimate against tracemalloc's count of what filling the state
    allocated (the names made beforehand: the estimate counts them as shared), with several
    readings per window so that the sketches differ in size."""

    names = [(f"dev-{n:05d}", metric) for n in range(2_000) for metric in ("t", "h")]
    readings = [
        Reading(device, metric, round(random.Random(n).gauss(30, 8), 2), 1_000_000 + n, None)
        for n, (device, metric) in enumerate(names * 3)
    ]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        state = PartitionState(parse_windows("10s,1m"), 5_000_000)
        for offset, reading in enumerate(readings):
            state.apply(reading, offset)
        state.drain()
        gc.collect()
        allocated = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert state.open_windows == 2 * len(names)
    estimate = state.memory_estimate()
    # Numbers the windows share (a reading's value in both) count in each: it errs high.
    assert allocated <= estimate <= 1.5 * allocated, (estimate, allocated)
    empty = PartitionState(parse_windows("10s,1m"), 5_000_000).memory_estimate()
    assert 0 < empty < estimate / 100
