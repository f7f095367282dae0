"""The registry's values and the alert transitions, immutable (issue 23).

A :class:`Registry` is one version of the device registry and its rules, as the system of
record (PostgreSQL) holds it at that version; the worker judges each closed window with one
such snapshot (tables/alerts.py). An :class:`AlertTransition` is what judging emits: an
alert starting to fire or resolving, with its JSON for the ``alerts`` topic.

Rules apply to registered, enabled devices only: a selector names one device, a site, or
all of them (``Selector``), and an unregistered or disabled device has no alerts. That keeps
the alert state bounded by the registry (tables/alerts.py).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import orjson

from models.outputs import AGGREGATES
from models.reading import NAME_PATTERN

Comparison = Literal[">", ">=", "<", "<="]
COMPARISONS: tuple[Comparison, ...] = (">", ">=", "<", "<=")
AlertState = Literal["firing", "resolved"]


class RegistryError(ValueError):
    """A rule, device or silence that cannot be used; the message names the field."""


def _name(field_name: str, value: str) -> None:
    if not isinstance(value, str) or NAME_PATTERN.match(value) is None or value.endswith("\n"):
        raise RegistryError(f"{field_name}: {value!r} is not 1-128 characters of A-Z a-z 0-9 _ . -")


def _finite(field_name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RegistryError(f"{field_name}: {value!r} is not a finite number")


def breaches(comparison: Comparison, value: float, threshold: float) -> bool:
    """``value <comparison> threshold``."""
    if comparison == ">":
        return value > threshold
    if comparison == ">=":
        return value >= threshold
    if comparison == "<":
        return value < threshold
    return value <= threshold


@dataclass(frozen=True, slots=True)
class Selector:
    """Which devices a rule covers: ``device`` (that one), ``site`` (every device of that
    site) or neither (every device). Only registered, enabled devices are ever covered."""

    device: str | None = None
    site: str | None = None

    def __post_init__(self) -> None:
        if self.device is not None and self.site is not None:
            raise RegistryError("selector: a device or a site, not both")
        if self.device is not None:
            _name("selector.device", self.device)
        if self.site is not None and not self.site:
            raise RegistryError("selector.site: empty")

    def covers(self, device: Device) -> bool:
        if self.device is not None:
            return device.id == self.device
        if self.site is not None:
            return device.site == self.site
        return True


@dataclass(frozen=True, slots=True)
class Device:
    """A device's registry entry: its site (None: none) and labels."""

    id: str
    site: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    enabled: bool = True

    def __post_init__(self) -> None:
        _name("device.id", self.id)
        # a read-only copy, so the entry stays a value
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))

    def __hash__(self) -> int:
        return hash((self.id, self.site, tuple(sorted(self.labels.items())), self.enabled))


@dataclass(frozen=True, slots=True)
class AlertRule:
    """Fires when ``for_count`` consecutive closed windows of ``(metric, window)`` have
    ``aggregate <comparison> threshold``; resolves after ``for_count`` consecutive clear ones,
    a window being clear when ``aggregate <comparison> clear_threshold`` does *not* hold
    (the clear threshold is the threshold when None; hysteresis when it lies on the other
    side, e.g. ``> 80`` clearing at ``<= 70``)."""

    name: str
    metric: str
    window: str
    aggregate: str
    comparison: Comparison
    threshold: float
    clear_threshold: float | None = None
    for_count: int = 1
    selector: Selector = field(default_factory=Selector)
    severity: str = "warning"
    enabled: bool = True

    def __post_init__(self) -> None:
        _name("rule.name", self.name)
        _name("rule.metric", self.metric)
        if not self.window or "sliding:" in self.window:
            raise RegistryError(f"rule.window: {self.window!r} is not a tumbling or hopping window")
        if self.aggregate not in AGGREGATES:
            raise RegistryError(f"rule.aggregate: {self.aggregate!r} is not one of {AGGREGATES}")
        if self.comparison not in COMPARISONS:
            raise RegistryError(f"rule.comparison: {self.comparison!r} is not one of {COMPARISONS}")
        _finite("rule.threshold", self.threshold)
        # floats, so that a threshold reads back from the changelog as the same JSON
        object.__setattr__(self, "threshold", float(self.threshold))
        if self.clear_threshold is not None:
            _finite("rule.clear_threshold", self.clear_threshold)
            object.__setattr__(self, "clear_threshold", float(self.clear_threshold))
            above = self.comparison in (">", ">=")
            if (
                (self.clear_threshold > self.threshold)
                if above
                else (self.clear_threshold < self.threshold)
            ):
                raise RegistryError(
                    "rule.clear_threshold: must not lie on the breaching side of the threshold"
                )
        if isinstance(self.for_count, bool) or not isinstance(self.for_count, int):
            raise RegistryError(f"rule.for_count: {self.for_count!r} is not a whole number")
        if self.for_count < 1:
            raise RegistryError(f"rule.for_count: {self.for_count} is less than 1")
        _name("rule.severity", self.severity)

    @property
    def clear_at(self) -> float:
        return self.threshold if self.clear_threshold is None else self.clear_threshold

    def breaching(self, value: float) -> bool:
        return breaches(self.comparison, value, self.threshold)

    def clear(self, value: float) -> bool:
        """Not breaching the clear threshold: with ``>`` that is ``value <= clear_at``."""
        return not breaches(self.comparison, value, self.clear_at)


@dataclass(frozen=True, slots=True)
class AbsenceRule:
    """Fires when a covered device has had no reading of ``metric`` for ``duration_us`` of
    event time; resolves at its next reading."""

    name: str
    metric: str
    duration_us: int
    selector: Selector = field(default_factory=Selector)
    severity: str = "warning"
    enabled: bool = True

    def __post_init__(self) -> None:
        _name("absence.name", self.name)
        _name("absence.metric", self.metric)
        if isinstance(self.duration_us, bool) or not isinstance(self.duration_us, int):
            raise RegistryError(f"absence.duration_us: {self.duration_us!r} is not a whole number")
        if self.duration_us <= 0:
            raise RegistryError("absence.duration_us: must be greater than zero")
        _name("absence.severity", self.severity)


@dataclass(frozen=True, slots=True)
class Silence:
    """Mutes the transitions of ``rule`` (None: every rule) for ``device`` or the devices of
    ``site`` (neither: every device) whose event time is before ``until_us``. Muted
    transitions are still emitted, with ``silenced=True``. ``id`` is the registry's number
    for it (what ``pulse silence rm`` takes), None for one made outside the registry; it
    plays no part in what the silence covers."""

    rule: str | None = None
    device: str | None = None
    site: str | None = None
    until_us: int = 0
    id: int | None = None

    def __post_init__(self) -> None:
        if self.rule is None and self.device is None and self.site is None:
            raise RegistryError("silence: name a rule, a device or a site")
        if self.device is not None and self.site is not None:
            raise RegistryError("silence: a device or a site, not both")

    def covers(self, rule: str, device: str, site: str | None, t_us: int) -> bool:
        return (
            t_us < self.until_us
            and (self.rule is None or self.rule == rule)
            and (self.device is None or self.device == device)
            and (self.site is None or self.site == site)
        )


@dataclass(frozen=True, slots=True)
class Registry:
    """The registry as of ``version``: devices, rules (by name, unique across both kinds),
    absence rules and silences. Its lookups are indexes built once per snapshot."""

    version: int
    devices: tuple[Device, ...] = ()
    rules: tuple[AlertRule, ...] = ()
    absence_rules: tuple[AbsenceRule, ...] = ()
    silences: tuple[Silence, ...] = ()
    _devices: Mapping[str, Device] = field(init=False, repr=False, compare=False)
    _rules: Mapping[tuple[str, str], tuple[AlertRule, ...]] = field(
        init=False, repr=False, compare=False
    )
    _absence: Mapping[str, AbsenceRule] = field(init=False, repr=False, compare=False)
    _absence_by_metric: Mapping[str, tuple[AbsenceRule, ...]] = field(
        init=False, repr=False, compare=False
    )
    _memo: dict[tuple[str, ...], tuple[Any, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    """The answers of rules_for and absence_rules_for so far: the hot path asks the same
    ones for every window and reading; bounded by the registered devices' series."""

    def __post_init__(self) -> None:
        devices = {device.id: device for device in self.devices}
        if len(devices) != len(self.devices):
            raise RegistryError("devices: an id appears twice")
        names = [rule.name for rule in self.rules] + [rule.name for rule in self.absence_rules]
        if len(set(names)) != len(names):
            raise RegistryError("rules: a name appears twice")
        by_series: dict[tuple[str, str], list[AlertRule]] = {}
        for rule in sorted(self.rules, key=lambda r: r.name):
            if rule.enabled:
                by_series.setdefault((rule.metric, rule.window), []).append(rule)
        by_metric: dict[str, list[AbsenceRule]] = {}
        for absence in sorted(self.absence_rules, key=lambda r: r.name):
            if absence.enabled:
                by_metric.setdefault(absence.metric, []).append(absence)
        object.__setattr__(self, "_devices", MappingProxyType(devices))
        object.__setattr__(
            self, "_absence", MappingProxyType({r.name: r for r in self.absence_rules})
        )
        object.__setattr__(
            self,
            "_absence_by_metric",
            MappingProxyType({k: tuple(v) for k, v in by_metric.items()}),
        )
        object.__setattr__(
            self, "_rules", MappingProxyType({k: tuple(v) for k, v in by_series.items()})
        )

    def device(self, device_id: str) -> Device | None:
        """The device's entry if it is registered and enabled."""
        device = self._devices.get(device_id)
        return device if device is not None and device.enabled else None

    def entry(self, device_id: str) -> Device | None:
        """The device's entry, enabled or not."""
        return self._devices.get(device_id)

    def rules_for(self, device_id: str, metric: str, window: str) -> tuple[AlertRule, ...]:
        """The enabled rules that judge this series of windows, by name: none for a device
        that is not registered or disabled."""
        key = (device_id, metric, window)
        found = self._memo.get(key)
        if found is None:
            device = self.device(device_id)
            if device is None:
                return ()
            rules = self._rules.get((metric, window), ())
            found = self._memo[key] = tuple(r for r in rules if r.selector.covers(device))
        return found

    def absence_rules_for(self, device_id: str, metric: str) -> tuple[AbsenceRule, ...]:
        """The enabled absence rules that watch this (device, metric), by name."""
        key = (device_id, metric)
        found = self._memo.get(key)
        if found is None:
            device = self.device(device_id)
            if device is None:
                return ()
            rules = self._absence_by_metric.get(metric, ())
            found = self._memo[key] = tuple(r for r in rules if r.selector.covers(device))
        return found

    def absence_rule(self, name: str) -> AbsenceRule | None:
        """The absence rule of that name, enabled or not."""
        return self._absence.get(name)

    def silenced(self, rule: str, device: str, site: str | None, t_us: int) -> bool:
        return any(s.covers(rule, device, site, t_us) for s in self.silences)


def alert_id(rule: str, device: str, window: str | None, start_us: int) -> str:
    """The transition's id: a hash of (rule, device, window, start), so a replay that emits the
    same transition gives it the same id (an idempotency key for every sink). Names cannot
    contain the separator (NAME_PATTERN)."""
    text = f"{rule}\x1f{device}\x1f{window or ''}\x1f{start_us}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _seconds(t_us: int) -> int | float:
    whole, rest = divmod(t_us, 1_000_000)
    return whole if rest == 0 else t_us / 1_000_000


@dataclass(frozen=True, slots=True)
class AlertTransition:
    """An alert starting to fire or resolving, for one (rule, device).

    Of a window rule: ``window``, ``start_us`` and ``end_us`` are those of the closed window
    that made the transition, ``value`` its ``aggregate``. Of an absence rule: ``window`` and
    ``aggregate`` are None, ``threshold`` the duration in seconds; firing: ``start_us`` is
    the last reading's event time and ``end_us`` that plus the duration; resolved:
    ``start_us`` and ``end_us`` are the event time of the reading that ended the absence
    (or the watermark, when the rule stopped applying), and ``value`` is None.
    """

    rule: str
    device: str
    site: str | None
    labels: Mapping[str, str]
    metric: str
    window: str | None
    start_us: int
    end_us: int
    aggregate: str | None
    value: float | None
    threshold: float
    state: AlertState
    severity: str
    silenced: bool

    @property
    def id(self) -> str:
        return alert_id(self.rule, self.device, self.window, self.start_us)

    @property
    def t_us(self) -> int:
        """The event time of the transition (a silence covers it when before its end)."""
        return self.end_us

    def __hash__(self) -> int:
        return hash((self.id, self.state))

    def json(self) -> bytes:
        """The value of an ``alerts`` record (key: the device), keys in this order::

            {"id", "rule", "device", "site", "labels", "metric", "window", "start", "end",
             "aggregate", "value", "threshold", "state", "severity", "silenced"}

        ``start`` and ``end`` in epoch seconds (an integer when whole), as in ``aggregates``.
        """
        return orjson.dumps(
            {
                "id": self.id,
                "rule": self.rule,
                "device": self.device,
                "site": self.site,
                "labels": dict(self.labels),
                "metric": self.metric,
                "window": self.window,
                "start": _seconds(self.start_us),
                "end": _seconds(self.end_us),
                "aggregate": self.aggregate,
                "value": self.value,
                "threshold": self.threshold,
                "state": self.state,
                "severity": self.severity,
                "silenced": self.silenced,
            }
        )
