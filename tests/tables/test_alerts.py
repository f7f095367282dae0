"""Alert evaluation (tables/alerts.py) against hand-worked timelines and the independent
reference (tests/reference.py, AlertReference).

Timelines read left to right in close order, one closed window per column, with the value
of the rule's aggregate; ``B`` breaches, ``C`` is clear, ``-`` is neither (between the
thresholds); ``F`` and ``R`` mark where the alert fires and resolves.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.alerts import (
    AbsenceRule,
    AlertRule,
    AlertTransition,
    Device,
    Registry,
    RegistryError,
    Selector,
    Silence,
    alert_id,
)
from models.outputs import AGGREGATES, ClosedWindow
from tables.aggregators import Summary
from tables.alerts import AlertTable, decode, encode, judge, watch
from tests.reference import AlertReference

S = 1_000_000
SIZE = 10 * S


def window(i: int, *values: float, device: str = "d1", metric: str = "temp") -> ClosedWindow:
    """The ``i``-th closed 10s window of the series, holding these readings."""
    start = i * SIZE
    state = Summary.initialize(start, float(values[0]), None)
    for n, value in enumerate(values[1:], 1):
        Summary.add(state, start + n, float(value), None)
    return ClosedWindow(device, metric, "10s", start, start + SIZE, state)


DEVICES = (
    Device("d1", "s1", {"room": "a"}),
    Device("d2", "s1"),
    Device("d3", "s2"),
    Device("d4", "s2", enabled=False),
)


def registry(*rules: Any, version: int = 1, silences: tuple[Silence, ...] = ()) -> Registry:
    return Registry(
        version,
        devices=DEVICES,
        rules=tuple(r for r in rules if isinstance(r, AlertRule)),
        absence_rules=tuple(r for r in rules if isinstance(r, AbsenceRule)),
        silences=silences,
    )


def rule(comparison: Any = ">", threshold: float = 80, **fields: Any) -> AlertRule:
    fields = {"name": "hot", "metric": "temp", "window": "10s", "aggregate": "mean", **fields}
    return AlertRule(comparison=comparison, threshold=threshold, **fields)


def run(reg: Registry, values: list[float], table: AlertTable | None = None, **kw: Any) -> str:
    """The timeline's transitions as a string, one character per window: F, R or ``.``."""
    table = AlertTable() if table is None else table
    marks = ""
    for i, value in enumerate(values):
        found = judge(table, reg, window(i, value, **kw))
        assert len(found) <= 1
        marks += {"firing": "F", "resolved": "R"}[found[0].state] if found else "."
    return marks


@pytest.mark.parametrize(
    ("comparison", "values", "marks"),
    [
        (">", [80, 81, 80, 90, 79], ".FRFR"),
        (">=", [79, 80, 79.9, 80.0], ".FRF"),
        ("<", [80, 79, 80, 10], ".FRF"),
        ("<=", [81, 80, 80.5, 70], ".FRF"),
    ],
)
def test_every_comparison_with_for_1(comparison: Any, values: list[float], marks: str) -> None:
    """``for`` = 1, no clear threshold (it is the threshold): the first breaching window
    fires, the first clear one resolves. At the threshold, ``>=`` and ``<=`` breach::

        > 80     value  80  81  80  90  79
                 verdict C  B   C   B   C
                            F   R   F   R
    """
    assert run(registry(rule(comparison, 80)), values) == marks


def test_hysteresis_between_the_thresholds_counts_neither_way() -> None:
    """``> 80`` clearing at ``<= 70``, ``for`` = 2::

        value     90  85  60  90  95  75  65  60
        verdict   B   B   C   B   B   -   C   C
        run       1   0   1   0   0   0   1   0
                      F                       R

    The 90 after the first 60, and the 75 between the thresholds, break the clear run.
    """
    reg = registry(rule(">", 80, clear_threshold=70, for_count=2))
    assert run(reg, [90, 85, 60, 90, 95, 75, 65, 60]) == ".F.....R"


def test_between_the_thresholds_breaks_a_breaching_run() -> None:
    """``< 10`` clearing at ``>= 20``, ``for`` = 2::

    value     5   15  5   5   15  25  25
    verdict   B   -   B   B   -   C   C
                          F           R
    """
    reg = registry(rule("<", 10, clear_threshold=20, for_count=2))
    assert run(reg, [5, 15, 5, 5, 15, 25, 25]) == "...F..R"


def test_for_3() -> None:
    """``>= 50``, ``for`` = 3, clear at ``< 50``::

    value     60  60  40  60  60  60  40  40  60  40
    verdict   B   B   C   B   B   B   C   C   B   C
                                  F                 (the 60 breaks the clear run)
    """
    reg = registry(rule(">=", 50, for_count=3))
    assert run(reg, [60, 60, 40, 60, 60, 60, 40, 40, 60, 40, 40, 40]) == ".....F.....R"


def test_every_aggregate_and_the_transition_fields() -> None:
    """Each of the ten aggregates can be judged; the transition carries the window's value
    of it, the device's site and labels, and an id of (rule, device, window, start)."""
    for name in AGGREGATES:
        reg = registry(rule(">", 0.5, aggregate=name))
        (found,) = judge(AlertTable(), reg, window(3, 1, 2, 3))
        want = Summary.result(window(3, 1, 2, 3).state)[name]
        doc = orjson.loads(found.json())
        assert list(doc) == [
            "id", "rule", "device", "site", "labels", "metric", "window", "start", "end",
            "aggregate", "value", "threshold", "state", "severity", "silenced",
        ]  # fmt: skip
        assert doc == {
            "id": alert_id("hot", "d1", "10s", 30 * S),
            "rule": "hot",
            "device": "d1",
            "site": "s1",
            "labels": {"room": "a"},
            "metric": "temp",
            "window": "10s",
            "start": 30,
            "end": 40,
            "aggregate": name,
            "value": want,
            "threshold": 0.5,
            "state": "firing",
            "severity": "warning",
            "silenced": False,
        }


def test_selectors_device_site_all() -> None:
    """A rule covers its device, its site's devices, or every registered enabled device."""
    reg = registry(
        rule(name="one", selector=Selector(device="d2")),
        rule(name="site", selector=Selector(site="s2")),
        rule(name="all"),
    )
    fired = {
        device: sorted(t.rule for t in judge(AlertTable(), reg, window(0, 99, device=device)))
        for device in ("d1", "d2", "d3", "d4", "unregistered")
    }
    assert fired == {
        "d1": ["all"],
        "d2": ["all", "one"],
        "d3": ["all", "site"],
        "d4": [],  # disabled
        "unregistered": [],
    }
    assert judge(AlertTable(), reg, window(0, 99, metric="humidity")) == []


def test_disabled_rule_and_disabled_device_then_enabled() -> None:
    """A disabled rule or device counts nothing; enabled again, counting starts afresh::

    version   1(rule off) 1   2   2   3(device off) 3   4   4
    value     90          90  90  90  90            90  90  90
                              F        R                    F  (for = 2)
    """
    on = rule(for_count=2)
    off = rule(for_count=2, enabled=False)
    devices_off = tuple(Device(d.id, d.site, d.labels, d.id != "d1") for d in DEVICES)
    versions = [
        registry(off),
        registry(off),
        registry(on, version=2),
        registry(on, version=2),
        Registry(3, devices=devices_off, rules=(on,)),
        Registry(3, devices=devices_off, rules=(on,)),
        registry(on, version=4),
        registry(on, version=4),
    ]
    table = AlertTable()
    marks = ""
    for i, reg in enumerate(versions):
        found = judge(table, reg, window(i, 90))
        marks += "".join({"firing": "F", "resolved": "R"}[t.state] for t in found) or "."
    # disabling the device resolves the firing alert at its next window, counts restart
    assert marks == "...FR..F"


def test_silences() -> None:
    """A silence covers a transition of its rule (or every rule) and device or site (or every
    device) whose window ends before its ``until``; the transition is still emitted."""
    until = 25 * S  # covers the windows ending at 10s and 20s, not the one at 30s
    cases = [
        (Silence(rule="hot", until_us=until), "d1", [True, True, False]),
        (Silence(device="d1", until_us=until), "d1", [True, True, False]),
        (Silence(site="s1", until_us=until), "d2", [True, True, False]),
        (Silence(site="s2", until_us=until), "d1", [False, False, False]),
        (Silence(rule="cold", until_us=until), "d1", [False, False, False]),
    ]
    for silence, device, want in cases:
        reg = registry(rule(), silences=(silence,))
        table = AlertTable()
        found = [
            t.silenced
            for i, v in enumerate([90, 70, 90])
            for t in judge(table, reg, window(i, v, device=device))
        ]
        assert found == want, silence


def test_a_rule_change_applies_from_the_next_window() -> None:
    """Version 2 raises the threshold from 80 to 95 between windows 1 and 2: window 1 was
    judged by version 1 and stays so; window 2 on by version 2::

        version   1   1   2   2
        value     90  90  90  96
        verdict   B   B   C   B        (for = 2, > 80 then > 95)
                      F   R
    """
    v1, v2 = registry(rule(for_count=2)), registry(rule(threshold=95, for_count=1), version=2)
    table = AlertTable()
    found = [judge(table, reg, window(i, v)) for i, (reg, v) in enumerate(
        [(v1, 90), (v1, 90), (v2, 90), (v2, 96)]
    )]  # fmt: skip
    assert [[t.state for t in f] for f in found] == [[], ["firing"], ["resolved"], ["firing"]]
    assert found[2][0].threshold == 95.0


def test_a_removed_rule_resolves_at_the_series_next_window() -> None:
    """A firing rule that is gone from the registry resolves at the next window of its
    series, with the aggregate, threshold and severity it had, and its state is dropped."""
    table = AlertTable()
    judge(table, registry(rule(severity="critical")), window(0, 90))
    assert len(table) == 1
    assert judge(table, registry(), window(1, 99, metric="other")) == []
    (resolved,) = judge(table, registry(version=2), window(2, 91))
    assert (resolved.state, resolved.value, resolved.threshold, resolved.severity) == (
        "resolved",
        91.0,
        80.0,
        "critical",
    )
    assert len(table) == 0


def test_absence_fires_after_the_duration_and_resolves_on_the_next_reading() -> None:
    """``no temp for 30s``, watermark W and the series' latest reading::

    W         10  20  40  45  50  70  100
    latest    5   5   5   5   48  48  48
                      F       R        F   (5 + 30 <= 40; 48 + 30 <= 100)
    """
    reg = registry(AbsenceRule("quiet", "temp", 30 * S, severity="critical"))
    table = AlertTable()
    steps = [(10, 5), (20, 5), (40, 5), (45, 5), (50, 48), (70, 48), (100, 48)]
    found = [watch(table, reg, w * S, {("d1", "temp"): t * S}) for w, t in steps]
    assert [[t.state for t in f] for f in found] == [
        [], [], ["firing"], [], ["resolved"], [], ["firing"],
    ]  # fmt: skip
    fired, resolved = found[2][0], found[4][0]
    assert (fired.start_us, fired.end_us, fired.threshold) == (5 * S, 35 * S, 30.0)
    assert (resolved.start_us, resolved.end_us) == (48 * S, 48 * S)
    assert fired.id != resolved.id
    doc = orjson.loads(fired.json())
    assert (doc["window"], doc["aggregate"], doc["value"], doc["severity"]) == (
        None,
        None,
        None,
        "critical",
    )


def test_absence_outlives_the_series_and_respects_selectors() -> None:
    """Once seen, a series is watched even when the partition no longer reports it; devices
    not covered (disabled, unregistered, another site) are never watched."""
    reg = registry(AbsenceRule("quiet", "temp", 30 * S, selector=Selector(site="s1")))
    table = AlertTable()
    seen = {(d, "temp"): 0 for d in ("d1", "d2", "d3", "d4", "zz")}
    assert watch(table, reg, 0, seen) == []
    found = watch(table, reg, 31 * S, {})
    assert [(t.device, t.state) for t in found] == [("d1", "firing"), ("d2", "firing")]
    # the rule removed: the firing alerts resolve at the watermark, the state is dropped
    found = watch(table, registry(), 32 * S, {})
    assert [(t.device, t.state, t.start_us) for t in found] == [
        ("d1", "resolved", 32 * S),
        ("d2", "resolved", 32 * S),
    ]
    assert len(table) == 0


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"aggregate": "median"}, "rule.aggregate"),
        ({"comparison": "=="}, "rule.comparison"),
        ({"clear_threshold": 90}, "rule.clear_threshold"),
        ({"for_count": 0}, "rule.for_count"),
        ({"threshold": float("nan")}, "rule.threshold"),
        ({"window": "sliding:1m"}, "rule.window"),
        ({"name": "a b"}, "rule.name"),
    ],
)
def test_a_bad_rule_names_its_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(RegistryError, match=field):
        rule(**fields)


# ---- property tests: the reference, and a crash at any point --------------------------

NAMES = ("r1", "r2", "r3")
MOSTLY = st.sampled_from((True, True, True, False))
"""Enabled, mostly: so that the examples fire and resolve often."""

rules_st = st.builds(
    lambda name, metric, aggregate, comparison, threshold, gap, for_count, selector, on: AlertRule(
        name=name,
        metric=metric,
        window="10s",
        aggregate=aggregate,
        comparison=comparison,
        threshold=threshold,
        clear_threshold=(threshold - gap) if comparison in (">", ">=") else threshold + gap,
        for_count=for_count,
        selector=selector,
        severity="warning",
        enabled=on,
    ),
    st.sampled_from(NAMES),
    st.sampled_from(("m1", "m2")),
    st.sampled_from(("mean", "max", "count", "p50")),
    st.sampled_from((">", ">=", "<", "<=")),
    st.integers(1, 5),
    st.integers(0, 2),
    st.integers(1, 3),
    st.sampled_from((Selector(), Selector(device="d1"), Selector(site="s1"), Selector(site="s2"))),
    MOSTLY,
)
absence_st = st.builds(
    lambda name, metric, seconds, selector, on: AbsenceRule(
        name, metric, seconds * S, selector, "info", on
    ),
    st.sampled_from(("a1", "a2")),
    st.sampled_from(("m1", "m2")),
    st.integers(5, 40),
    st.sampled_from((Selector(), Selector(device="d2"), Selector(site="s2"))),
    MOSTLY,
)
registries_st = st.builds(
    lambda rules, absences, devices_on, silence, version: Registry(
        version,
        devices=tuple(
            Device(d.id, d.site, d.labels, on) for d, on in zip(DEVICES, devices_on, strict=True)
        ),
        rules=tuple({r.name: r for r in rules}.values()),
        absence_rules=tuple({r.name: r for r in absences}.values()),
        silences=silence,
    ),
    st.lists(rules_st, min_size=1, max_size=3),
    st.lists(absence_st, max_size=2),
    st.tuples(*(MOSTLY,) * 4),
    st.one_of(
        st.just(()),
        st.builds(
            lambda until, rule_name: (Silence(rule=rule_name, site="s1", until_us=until * S),),
            st.integers(0, 400),
            st.sampled_from((None, "r1", "a1")),
        ),
    ),
    st.integers(1, 9),
)
window_st = st.tuples(
    st.just("window"),
    st.sampled_from(("d1", "d2", "d3", "d4")),
    st.sampled_from(("m1", "m2")),
    st.lists(st.integers(0, 6), min_size=1, max_size=3),
)
steps_st = st.lists(
    st.one_of(
        window_st,
        window_st,
        window_st,
        st.tuples(st.just("registry"), registries_st),
        st.tuples(st.just("watermark")),
    ),
    min_size=10,
    max_size=60,
)


def play(
    steps: list[Any], reg: Registry, table: AlertTable, seen: dict[Any, int], now: int
) -> tuple[list[dict[str, Any]], Registry, int]:
    """Feed the steps to the engine: each window closes 10s after the previous step."""
    out: list[AlertTransition] = []
    for step in steps:
        now += SIZE
        if step[0] == "registry":
            reg = step[1]
        elif step[0] == "window":
            _, device, metric, values = step
            state = Summary.initialize(now - SIZE, float(values[0]), None)
            for value in values[1:]:
                Summary.add(state, now - 1, float(value), None)
            out += judge(table, reg, ClosedWindow(device, metric, "10s", now - SIZE, now, state))
            seen[(device, metric)] = now - 1
        else:
            out += watch(table, reg, now, dict(seen))
    return [orjson.loads(t.json()) for t in out], reg, now


def reference(steps: list[Any], reg: Registry) -> list[dict[str, Any]]:
    ref = AlertReference()
    seen: dict[tuple[str, str], int] = {}
    now = 0
    for step in steps:
        now += SIZE
        if step[0] == "registry":
            reg = step[1]
        elif step[0] == "window":
            _, device, metric, values = step
            state = Summary.initialize(now - SIZE, float(values[0]), None)
            for value in values[1:]:
                Summary.add(state, now - 1, float(value), None)
            emitted = Summary.result(state)  # what the aggregates record says
            ref.window(reg, device, metric, "10s", now - SIZE, now, emitted)
            seen[(device, metric)] = now - 1
        else:
            ref.watermark(reg, now, dict(seen))
    return ref.out


@settings(max_examples=300, deadline=None)
@given(first=registries_st, steps=steps_st)
def test_equal_to_the_reference(first: Registry, steps: list[Any]) -> None:
    """Random closed windows, watermark moves and registry versions: the engine's transitions
    are exactly the reference's, in order."""
    found, _, _ = play(steps, first, AlertTable(), {}, 0)
    assert found == reference(steps, first)


@settings(max_examples=300, deadline=None)
@given(first=registries_st, steps=steps_st, cut=st.integers(0, 60))
def test_a_crash_at_any_point_gives_the_same_transitions(
    first: Registry, steps: list[Any], cut: int
) -> None:
    """Stopping after any step, encoding the table, decoding it and going on (what recovery
    from the changelog does) gives the same transitions as one run."""
    whole, _, _ = play(steps, first, AlertTable(), {}, 0)
    table = AlertTable()
    seen: dict[Any, int] = {}
    before, reg, now = play(steps[:cut], first, table, seen, 0)
    raw = encode(table)
    recovered = decode(raw)
    assert recovered == table
    assert encode(recovered) == raw
    after, _, _ = play(steps[cut:], reg, recovered, seen, now)
    assert before + after == whole
