"""An independent reference computation of Pulse's outputs, written from the contract alone.

It shares no code with ``tables/``: brute force over the records in partition offset order,
keeping every applied reading of every window in a list, and computing the aggregates at the
end. Tests compare the real pipeline's outputs with it exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

QUANTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
QUANTILE_ACCURACY = 0.01
"""The documented relative accuracy of Pulse's percentiles."""


def assert_window_fields(found: dict[str, Any], want: dict[str, Any], where: object) -> None:
    """Exact equality, except percentiles: within the documented relative accuracy."""
    assert set(found) == set(want), where
    for name, value in want.items():
        if name in dict(QUANTILES):
            tolerance = QUANTILE_ACCURACY * abs(value) + 1e-9
            assert abs(found[name] - value) <= tolerance, (where, name, found[name], value)
        else:
            assert found[name] == value, (where, name, found[name], value)


@dataclass(frozen=True)
class Valid:
    """What a record means when it is a valid reading (the generator knows)."""

    device: str
    metric: str
    value: float
    t_us: int
    tags: dict[str, str] | None = None


@dataclass(frozen=True)
class Invalid:
    reason: str


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    meaning: Valid | Invalid


@dataclass
class Expected:
    windows: dict[tuple[str, str, str, int], dict[str, Any]] = field(default_factory=dict)
    """(device, metric, label, start_us) -> aggregates + tags, for every window (all closed)."""
    dead_letters: dict[tuple[int, int], str] = field(default_factory=dict)
    """(partition, offset) -> reason."""
    latest: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    late_for_some: int = 0
    """Readings applied to some windows but late for others."""
    window_sizes: dict[str, int] = field(default_factory=dict)
    """label -> size in microseconds of the (tumbling and hopping) windows."""
    sliding: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    """(device, metric, label) -> the sliding window as last shown: aggregates, start, end."""

    def aggregate_documents(
        self, labels_us: dict[str, int] | None = None
    ) -> dict[tuple[str, str, str, int | float], dict[str, Any]]:
        """The ``aggregates`` topic content by (device, metric, window, start seconds)."""
        labels_us = labels_us or self.window_sizes
        docs = {}
        for (device, metric, label, start), agg in self.windows.items():
            docs[(device, metric, label, _seconds(start))] = {
                "device": device,
                "metric": metric,
                "window": label,
                "start": _seconds(start),
                "end": _seconds(start + labels_us[label]),
                **agg,
            }
        return docs


def _seconds(t_us: int) -> int | float:
    return t_us // 1_000_000 if t_us % 1_000_000 == 0 else t_us / 1_000_000


def _starts(t: int, size: int, step: int) -> list[int]:
    """Every window start k*step with start <= t < start + size, by brute force."""
    starts = []
    start = t - t % step
    while start > t - size:
        starts.append(start)
        start -= step
    return starts


MAX_TAG_KEYS = 64
"""Tag keys in use at once in a partition, at most (README.md, The contract)."""


def compute(
    records: list[Record],
    windows_us: Mapping[str, int | tuple[int, int]],
    grace_us: int,
    sliding_us: dict[str, int] | None = None,
    max_tag_values: int | None = None,
) -> Expected:
    """Windows ``label -> size`` (tumbling) or ``label -> (size, step)`` (hopping), and sliding
    windows ``label -> size``; every window ends closed (idle close). With ``max_tag_values``
    (``PULSE_MAX_TAG_VALUES``) a reading whose tags would put one value of a key more in use,
    or one key more than MAX_TAG_KEYS, is dead-lettered as ``too_many_tag_values``; a value is
    in use while some applied reading with it is within the longest window of the watermark
    (every window that could hold it may still be open)."""
    expected = Expected()
    sliding_us = sliding_us or {}
    shapes = {
        label: (spec, spec) if isinstance(spec, int) else spec for label, spec in windows_us.items()
    }
    sliding: dict[tuple[str, str, str], tuple[int, list[tuple[int, int, float, Any]]]] = {}
    expected.window_sizes = {label: size for label, (size, _) in shapes.items()}
    applied: dict[tuple[str, str, str, int], list[tuple[int, float, dict[str, str] | None]]] = {}
    by_partition: dict[int, list[Record]] = {}
    for record in records:
        by_partition.setdefault(record.partition, []).append(record)
    longest = max([size for size, _ in shapes.values()] + list(sliding_us.values()))
    for partition, rows in by_partition.items():
        max_t: int | None = None
        tagged: list[tuple[int, dict[str, str]]] = []  # (t, tags) of the applied readings
        for record in sorted(rows, key=lambda r: r.offset):
            meaning = record.meaning
            if isinstance(meaning, Invalid):
                expected.dead_letters[(partition, record.offset)] = meaning.reason
                continue
            watermark = None if max_t is None else max_t - grace_us
            if max_tag_values is not None and meaning.tags:
                in_use: dict[str, set[str]] = {}
                for t_seen, tags_seen in tagged:
                    if watermark is None or t_seen + longest > watermark:
                        for tag, tag_value in tags_seen.items():
                            in_use.setdefault(tag, set()).add(tag_value)
                if len(set(in_use) | set(meaning.tags)) > MAX_TAG_KEYS or any(
                    tag_value not in in_use.get(tag, set())
                    and len(in_use.get(tag, set())) >= max_tag_values
                    for tag, tag_value in meaning.tags.items()
                ):
                    expected.dead_letters[(partition, record.offset)] = "too_many_tag_values"
                    continue
            hits = belongs = 0
            t = meaning.t_us
            for label, (size, step) in shapes.items():
                for start in _starts(t, size, step):
                    belongs += 1
                    if watermark is not None and start + size <= watermark:
                        continue  # that window closed before this reading arrived
                    applied.setdefault((meaning.device, meaning.metric, label, start), []).append(
                        (t, meaning.value, meaning.tags)
                    )
                    hits += 1
            for label, size in sliding_us.items():
                belongs += 1
                key = (meaning.device, meaning.metric, label)
                if watermark is not None:  # keys whose window is long past are dropped
                    for old in [
                        k
                        for k, (latest, _) in sliding.items()
                        if watermark >= latest + 2 * sliding_us[k[2]]
                    ]:
                        del sliding[old]
                    if t <= watermark - size:
                        continue
                latest, entries = sliding.get(key, (t, []))
                if t <= latest - size:
                    continue
                latest = max(latest, t)
                entries = [
                    e
                    for e in [*entries, (t, record.offset, meaning.value, meaning.tags)]
                    if e[0] > latest - size
                ]
                sliding[key] = (latest, entries)
                in_order = sorted(entries, key=lambda e: e[1])
                shown = _aggregate([(e[0], e[2], e[3]) for e in in_order])
                shown.pop("tags")
                expected.sliding[key] = {
                    **shown,
                    "start": _seconds(latest - size),
                    "end": _seconds(latest),
                }
                hits += 1
            if hits == 0:
                expected.dead_letters[(partition, record.offset)] = "late"
                continue
            if meaning.tags:
                tagged.append((meaning.t_us, meaning.tags))
            if hits < belongs:
                expected.late_for_some += 1
            pair = (meaning.device, meaning.metric)
            if pair not in expected.latest or meaning.t_us >= expected.latest[pair][0]:
                expected.latest[pair] = (meaning.t_us, meaning.value)
            max_t = meaning.t_us if max_t is None else max(max_t, meaning.t_us)
    for window_key, readings in applied.items():
        expected.windows[window_key] = _aggregate(readings)
    return expected


def _aggregate(readings: list[tuple[int, float, Any]]) -> dict[str, Any]:
    """The aggregates of (t, value, tags) readings given in processing order."""
    total = 0.0
    for _, value, _ in readings:
        total += value
    first = min(readings, key=lambda r: r[0])  # min keeps the earliest processed on ties
    last_t = max(r[0] for r in readings)
    last = [r for r in readings if r[0] == last_t][-1]  # ties: the one processed last
    ordered = sorted(r[1] for r in readings)
    return {
        "count": len(readings),
        "sum": total,
        "min": min(r[1] for r in readings),
        "max": max(r[1] for r in readings),
        "mean": total / len(readings),
        "first": first[1],
        "last": last[1],
        # Exact quantiles: the value of rank floor(q * (n - 1)). Pulse's are estimates
        # within QUANTILE_ACCURACY of these.
        **{name: ordered[int(q * (len(ordered) - 1))] for name, q in QUANTILES},
        "tags": last[2] or {},
    }


# Alerts (issue 23), from the rules of docs/architecture.md "Alerts" alone: the engine is
# tables/alerts.py. Rules and registries are read as plain data (their fields); which rule
# applies, what breaches, clears, fires and resolves is decided here by brute force.


def _covers(selector: Any, device: Any) -> bool:
    if selector.device is not None:
        return bool(selector.device == device.id)
    if selector.site is not None:
        return bool(selector.site == device.site)
    return True


def _enabled_device(registry: Any, device_id: str) -> Any:
    for device in registry.devices:
        if device.id == device_id and device.enabled:
            return device
    return None


def _any_device(registry: Any, device_id: str) -> Any:
    for device in registry.devices:
        if device.id == device_id:
            return device
    return None


def _verdict(comparison: str, value: float, threshold: float, clear: float) -> str:
    """``B`` breaching, ``C`` clear, ``-`` neither (between the thresholds)."""
    if comparison == ">":
        return "B" if value > threshold else "C" if value <= clear else "-"
    if comparison == ">=":
        return "B" if value >= threshold else "C" if value < clear else "-"
    if comparison == "<":
        return "B" if value < threshold else "C" if value >= clear else "-"
    return "B" if value <= threshold else "C" if value > clear else "-"


def _silenced(registry: Any, rule: str, device: str, site: str | None, t_us: int) -> bool:
    return any(
        t_us < s.until_us
        and s.rule in (None, rule)
        and s.device in (None, device)
        and s.site in (None, site)
        for s in registry.silences
    )


def alert_id(rule: str, device: str, window: str | None, start_us: int) -> str:
    import hashlib

    text = "\x1f".join([rule, device, window or "", str(start_us)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class AlertReference:
    """Alert transitions of one partition as dicts of the ``alerts`` JSON, in emission order.

    Window rules: per (rule, device, metric, window) the verdicts since its last transition
    (firing or not); it fires when its last ``for_count`` verdicts are all ``B`` and resolves
    when they are all ``C``. Absence: per (rule, device, metric) the last reading and whether
    it fires."""

    history: dict[tuple[str, str, str, str], tuple[bool, list[str], Any]] = field(
        default_factory=dict
    )
    absent: dict[tuple[str, str, str], tuple[int, bool, str]] = field(default_factory=dict)
    out: list[dict[str, Any]] = field(default_factory=list)

    def _emit(self, registry: Any, **fields: Any) -> None:
        device = _any_device(registry, fields["device"])
        site = device.site if device is not None else None
        doc = {
            "id": alert_id(fields["rule"], fields["device"], fields["window"], fields["start"]),
            "rule": fields["rule"],
            "device": fields["device"],
            "site": site,
            "labels": dict(device.labels) if device is not None else {},
            "metric": fields["metric"],
            "window": fields["window"],
            "start": _seconds(fields["start"]),
            "end": _seconds(fields["end"]),
            "aggregate": fields["aggregate"],
            "value": fields["value"],
            "threshold": fields["threshold"],
            "state": fields["state"],
            "severity": fields["severity"],
            "silenced": _silenced(registry, fields["rule"], fields["device"], site, fields["end"]),
        }
        self.out.append(doc)

    def window(
        self,
        registry: Any,
        device_id: str,
        metric: str,
        label: str,
        start_us: int,
        end_us: int,
        aggregates: dict[str, Any],
    ) -> None:
        device = _enabled_device(registry, device_id)
        applying = {
            rule.name: rule
            for rule in registry.rules
            if device is not None
            and rule.enabled
            and rule.metric == metric
            and rule.window == label
            and _covers(rule.selector, device)
        }
        remembered = {k[0] for k in self.history if k[1:] == (device_id, metric, label)}
        for name in sorted(set(applying) | remembered):
            key = (name, device_id, metric, label)
            firing, verdicts, was = self.history.pop(key, (False, [], None))
            where = dict(
                rule=name, device=device_id, metric=metric, window=label, start=start_us, end=end_us
            )
            if name not in applying:
                if firing:
                    self._emit(
                        registry, **where, aggregate=was.aggregate,
                        value=aggregates[was.aggregate], threshold=float(was.threshold),
                        state="resolved", severity=was.severity,
                    )  # fmt: skip
                continue
            rule = applying[name]
            clear = rule.threshold if rule.clear_threshold is None else rule.clear_threshold
            value = aggregates[rule.aggregate]
            verdicts = [*verdicts, _verdict(rule.comparison, value, rule.threshold, clear)]
            wanted = "C" if firing else "B"
            last = verdicts[-rule.for_count :]
            if len(last) == rule.for_count and all(v == wanted for v in last):
                self._emit(
                    registry, **where, aggregate=rule.aggregate, value=value,
                    threshold=float(rule.threshold),
                    state="resolved" if firing else "firing", severity=rule.severity,
                )  # fmt: skip
                firing, verdicts = not firing, []
            if firing or verdicts[-1:] == [wanted]:
                self.history[key] = (firing, verdicts, rule)

    def watermark(
        self, registry: Any, watermark_us: int, last_seen: dict[tuple[str, str], int]
    ) -> None:
        def applies(name: str, device_id: str, metric: str) -> Any:
            device = _enabled_device(registry, device_id)
            for rule in registry.absence_rules:
                if (
                    rule.name == name
                    and rule.enabled
                    and rule.metric == metric
                    and device is not None
                    and _covers(rule.selector, device)
                ):
                    return rule
            return None

        first: list[tuple[tuple[str, str, str], dict[str, Any]]] = []
        for (device_id, metric), t in sorted(last_seen.items()):
            for rule in registry.absence_rules:
                if applies(rule.name, device_id, metric) is None:
                    continue
                key = (rule.name, device_id, metric)
                if key not in self.absent:
                    self.absent[key] = (t, False, rule.severity)
                elif t > self.absent[key][0]:
                    if self.absent[key][1]:
                        first.append(
                            (
                                (device_id, metric, rule.name),
                                dict(
                                    rule=rule.name, device=device_id, metric=metric, window=None,
                                    start=t, end=t, aggregate=None, value=None,
                                    threshold=rule.duration_us / 1_000_000, state="resolved",
                                    severity=rule.severity,
                                ),
                            )
                        )  # fmt: skip
                    self.absent[key] = (t, False, rule.severity)
        then: list[tuple[tuple[str, str, str], dict[str, Any]]] = []
        for key in sorted(self.absent):
            name, device_id, metric = key
            last_t, firing, severity = self.absent[key]
            rule = applies(name, device_id, metric)
            if rule is None:
                del self.absent[key]
                if firing:
                    same_name = [r for r in registry.absence_rules if r.name == name]
                    duration = same_name[0].duration_us if same_name else 0
                    then.append(
                        (
                            (device_id, metric, name),
                            dict(
                                rule=name, device=device_id, metric=metric, window=None,
                                start=watermark_us, end=watermark_us, aggregate=None, value=None,
                                threshold=duration / 1_000_000, state="resolved",
                                severity=severity,
                            ),
                        )
                    )  # fmt: skip
                continue
            self.absent[key] = (last_t, firing, rule.severity)
            if not firing and watermark_us - last_t >= rule.duration_us:
                self.absent[key] = (last_t, True, rule.severity)
                then.append(
                    (
                        (device_id, metric, name),
                        dict(
                            rule=name, device=device_id, metric=metric, window=None,
                            start=last_t, end=last_t + rule.duration_us, aggregate=None,
                            value=None, threshold=rule.duration_us / 1_000_000,
                            state="firing", severity=rule.severity,
                        ),
                    )
                )  # fmt: skip
        for _, fields in sorted(first, key=lambda p: p[0]) + sorted(then, key=lambda p: p[0]):
            self._emit(registry, **fields)
