"""models/registry.py: the snapshot's JSON form reads back equal to the value (float for
float, µs for µs, None kept None) for any registry; the one order of :func:`registry_of`;
what the registry takes, each refusal a RegistryInputError (a RegistryError) naming the
field; the ``check_*`` functions give back the value they are given when it is taken."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.alerts import (
    AbsenceRule,
    AlertRule,
    Device,
    Registry,
    RegistryError,
    Selector,
    Silence,
)
from models.outputs import AGGREGATES
from models.registry import (
    MAX_ABSENCE_US,
    MAX_UNTIL_US,
    SEVERITIES,
    RegistryInputError,
    RegistrySnapshot,
    Webhook,
    check_absence_rule,
    check_device,
    check_rule,
    check_silence,
    new_absence_rule,
    new_device,
    new_rule,
    new_silence,
    new_webhook,
    registry_of,
)

names = st.from_regex(r"\A[A-Za-z0-9_.-]{1,12}\Z")
floats = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
selectors = st.one_of(
    st.just(Selector()), st.builds(Selector, device=names), st.builds(Selector, site=names)
)
devices = st.builds(
    Device,
    names,
    st.none() | names,
    st.dictionaries(
        names,
        st.text(st.characters(min_codepoint=32, max_codepoint=0xD7FF), max_size=8),
        max_size=3,
    ),
    st.booleans(),
)


@st.composite
def rules(draw: Any, name: Any = names) -> AlertRule:
    comparison = draw(st.sampled_from((">", ">=", "<", "<=")))
    threshold = draw(floats)
    gap = draw(st.none() | st.floats(min_value=0, max_value=1e6))
    clear = (
        None if gap is None else threshold - gap if comparison in (">", ">=") else threshold + gap
    )
    return AlertRule(
        draw(name), draw(names), draw(st.sampled_from(("10s", "1m", "5m/1m"))),
        draw(st.sampled_from(AGGREGATES)), comparison, threshold, clear,
        draw(st.integers(1, 1000)), draw(selectors), draw(st.sampled_from(SEVERITIES)),
        draw(st.booleans()),
    )  # fmt: skip


absences = st.builds(
    AbsenceRule,
    names.map("a".__add__),
    names,
    st.integers(1, MAX_ABSENCE_US),
    selectors,
    st.sampled_from(SEVERITIES),
    st.booleans(),
)
silences = st.builds(
    Silence,
    rule=names,
    device=st.none() | names,
    until_us=st.integers(0, MAX_UNTIL_US),
    id=st.integers(1, 2**62),
)
webhooks = st.builds(
    Webhook,
    st.integers(1, 2**62),
    st.sampled_from(("http://127.0.0.1:9/hook", "https://hooks.example.net/p?q=1")),
    st.none() | names,
)


@st.composite
def snapshots(draw: Any) -> RegistrySnapshot:
    # Rule names are unique across both kinds: alert rules' start with "r", absences' "a".
    rule_list = draw(
        st.lists(rules(names.map("r".__add__)), max_size=4, unique_by=lambda r: r.name)
    )
    absence_list = draw(st.lists(absences, max_size=3, unique_by=lambda r: r.name))
    return RegistrySnapshot.of(
        draw(st.integers(0, 2**62)),
        draw(st.lists(devices, max_size=4, unique_by=lambda d: d.id)),
        rule_list,
        absence_list,
        draw(st.lists(silences, max_size=3, unique_by=lambda s: s.id)),
        draw(st.lists(webhooks, max_size=2, unique_by=lambda w: w.id)),
    )


@settings(deadline=None)  # the first examples may be slow on a loaded machine
@given(snapshots())
def test_the_document_reads_back_equal_through_json(snapshot: RegistrySnapshot) -> None:
    back = RegistrySnapshot.from_document(orjson.loads(orjson.dumps(snapshot.document())))
    assert back == snapshot
    assert back.document() == snapshot.document()
    for mine, theirs in zip(back.registry.rules, snapshot.registry.rules, strict=True):
        # equal, and of the same kind: None stays None, a float stays a float
        assert (mine.threshold, mine.clear_threshold) == (theirs.threshold, theirs.clear_threshold)
        assert type(mine.clear_threshold) is type(theirs.clear_threshold)


def test_a_document_holds_the_models_fields_in_their_units() -> None:
    snapshot = RegistrySnapshot.of(
        7,
        [Device("d2", None, {"z": "1", "a": "2"}, False), Device("d1", "s1")],
        [AlertRule("hot", "temp", "10s", "p95", ">=", 30, None, 3, Selector(site="s1"))],
        [AbsenceRule("quiet", "temp", 90_000_000, Selector("d1"), "critical")],
        [Silence("hot", until_us=1_900_000_000_000_001, id=4)],
        [Webhook(2, "https://h.example/x", severity="critical")],
    )
    assert snapshot.version == 7
    assert snapshot.document() == {
        "version": 7,
        "devices": [
            {"id": "d1", "site": "s1", "labels": {}, "enabled": True},
            {"id": "d2", "site": None, "labels": {"a": "2", "z": "1"}, "enabled": False},
        ],
        "rules": [
            {
                "name": "hot", "metric": "temp", "window": "10s", "aggregate": "p95",
                "comparison": ">=", "threshold": 30.0, "clear_threshold": None, "for_count": 3,
                "selector": {"device": None, "site": "s1"}, "severity": "warning",
                "enabled": True,
            }
        ],
        "absence_rules": [
            {
                "name": "quiet", "metric": "temp", "duration_us": 90_000_000,
                "selector": {"device": "d1", "site": None}, "severity": "critical",
                "enabled": True,
            }
        ],
        "silences": [
            {"id": 4, "rule": "hot", "device": None, "site": None,
             "until_us": 1_900_000_000_000_001}
        ],
        "webhooks": [
            {"id": 2, "url": "https://h.example/x", "rule": None, "severity": "critical"}
        ],
    }  # fmt: skip


def test_registry_of_gives_one_order_whatever_the_order_given() -> None:
    a, b = Device("b"), Device("a")
    r1 = AlertRule("r2", "m", "10s", "max", ">", 1)
    r2 = AlertRule("r1", "m", "10s", "max", ">", 1)
    s1, s2 = Silence("r1", until_us=5, id=9), Silence("r2", until_us=5, id=3)
    one = registry_of(3, [a, b], [r1, r2], [], [s1, s2])
    other = registry_of(3, [b, a], [r2, r1], [], [s2, s1])
    assert one == other
    assert one == Registry(3, (b, a), (r2, r1), (), (s2, s1))


def test_a_silence_id_is_no_part_of_what_it_covers() -> None:
    numbered, plain = Silence("hot", site="s1", until_us=10, id=5), Silence("hot", site="s1")
    assert numbered != Silence("hot", site="s1", until_us=10)  # a value: the id counts
    assert numbered.covers("hot", "d1", "s1", 9) and not numbered.covers("hot", "d1", "s1", 10)
    assert plain.id is None


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: new_device("dev 0"), "^id: 'dev 0' is not a name"),
        (lambda: new_device("d", "a/b"), "^site: 'a/b' is not a name"),
        (lambda: new_device("d", None, {f"k{i}": "v" for i in range(17)}), "^labels: at most 16"),
        (lambda: new_device("d", None, {"k": "a\nb"}), "^labels: k: the value must be"),
        (lambda: new_rule("r", "m", "10s", "avg", ">", 1), "^aggregate: 'avg' is not one of count"),
        (lambda: new_rule("r", "m", "10s", "mean", "=", 1), "^comparison: '=' is not one of >, >="),
        (lambda: new_rule("r", "m", "sliding:1m", "mean", ">", 1), "^window: 'sliding:1m' is not"),
        (
            lambda: new_rule("r", "m", "10s", "mean", ">", "hot"),
            "^threshold: 'hot' is not a number",
        ),
        (lambda: new_rule("r", "m", "10s", "mean", ">", True), "^threshold: True is not a number"),
        (
            lambda: new_rule("r", "m", "10s", "mean", ">", "nan"),
            "^threshold: 'nan' is not a finite",
        ),
        (
            lambda: new_rule("r", "m", "10s", "mean", ">", 10, 11),
            r"^clear_threshold: must be at most the threshold \(10.0\) "
            r"for comparison '>', not 11.0",
        ),
        (
            lambda: new_rule("r", "m", "10s", "mean", "<=", 10, 9.5),
            r"^clear_threshold: must be at least the threshold \(10.0\) "
            r"for comparison '<=', not 9.5",
        ),
        (
            lambda: new_rule("r", "m", "10s", "mean", ">", 1, None, 0),
            "^for: must be a whole number",
        ),
        (lambda: new_rule("r", "m", "10s", "mean", ">", 1, None, 2.0), "^for: must be a whole"),  # type: ignore[arg-type]
        (
            lambda: new_rule("r", "m", "10s", "mean", ">", 1, device="d", site="s"),
            "^selector: a rule is for a device or a site, not both",
        ),
        (lambda: new_rule("r", "m", "10s", "mean", ">", 1, severity="loud"), "^severity: 'loud'"),
        (
            lambda: new_absence_rule("a", "m", 0),
            "^duration: must be more than 0 and at most a year",
        ),
        (lambda: new_absence_rule("a", "m", MAX_ABSENCE_US + 1), "^duration: must be more than 0"),
        (lambda: new_absence_rule("a", "m", 1.5), "^duration: must be more than 0"),  # type: ignore[arg-type]
        (lambda: new_absence_rule("a", "m 2", 1), "^metric: 'm 2' is not a name"),
        (lambda: new_silence(until_us=1), "^target: a silence mutes a rule, a device or a site"),
        (lambda: new_silence(None, "d", "s", 1), "^target: a silence is for a device or a site"),
        (lambda: new_silence("r", until_us=-1), "^until: must be a whole number of epoch µs"),
        (lambda: new_silence("r", until_us=MAX_UNTIL_US + 1), "^until: must be a whole number"),
        (lambda: new_webhook(1, "mailto:a@b"), "^url: 'mailto:a@b' is not an http"),
        (lambda: new_webhook(1, "http://x", "r", "info"), "^severity: a webhook is for a rule or"),
        (lambda: new_webhook(1, "http://x", None, "loud"), "^severity: 'loud' is not one of"),
    ],
)
def test_what_the_registry_refuses_names_the_field(build: Any, message: str) -> None:
    with pytest.raises(RegistryInputError, match=message) as refused:
        build()
    assert isinstance(refused.value, RegistryError)  # one `except RegistryError` for both
    assert str(refused.value).startswith(f"{refused.value.field}: ")


def test_what_is_taken_is_the_models_value() -> None:
    assert new_device("d1", "s1", {"k": "v"}) == Device("d1", "s1", {"k": "v"})
    assert new_rule("r", "m", "5m/1m", "p99", "<", "2.5", "3", 2, site="s1") == AlertRule(
        "r", "m", "5m/1m", "p99", "<", 2.5, 3.0, 2, Selector(site="s1")
    )
    assert new_absence_rule("a", "m", 90_000_000, device="d1", severity="info") == AbsenceRule(
        "a", "m", 90_000_000, Selector("d1"), "info"
    )
    assert new_silence(None, None, "s1", 5, 3) == Silence(None, None, "s1", 5, 3)
    assert new_webhook(4, "http://x/y", "r") == Webhook(4, "http://x/y", "r")


@settings(deadline=None)
@given(snapshots())
def test_check_gives_back_every_entry_the_registry_takes(snapshot: RegistrySnapshot) -> None:
    registry = snapshot.registry
    assert [check_device(d) for d in registry.devices] == list(registry.devices)
    assert [check_rule(r) for r in registry.rules] == list(registry.rules)
    assert [check_absence_rule(r) for r in registry.absence_rules] == list(registry.absence_rules)
    assert [check_silence(s) for s in registry.silences] == list(registry.silences)
