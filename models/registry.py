"""The device registry as an immutable value: what PostgreSQL held as of one registry version.

A :class:`RegistrySnapshot` holds the devices, alert rules, absence rules, silences and
webhooks of one version; equal versions of one registry give equal snapshots, whoever read
them and through which cache. Every entry is a frozen dataclass, so a snapshot handed to the
hot path cannot change under it.

The ``check_*`` functions are the one definition of a valid entry: the CLI, the writer
(pulse/registry) and the schema's CHECK constraints say the same, and a bad value raises
:class:`RegistryInputError` naming the field. No I/O here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from models.outputs import AGGREGATES
from models.reading import NAME_PATTERN

COMPARISONS = (">", ">=", "<", "<=")
"""How an alert rule compares a window's aggregate with its threshold."""
SELECTORS = ("device", "site", "all")
"""What an alert or absence rule applies to: one device, the devices of a site, or all."""
SEVERITIES = ("info", "warning", "critical")
"""An alert's severity; webhooks may be configured per severity."""
SILENCE_TARGETS = ("device", "site")
"""What a silence mutes: one device, or the devices of a site."""
MAX_LABELS = 16
WINDOW_LABEL = re.compile(r"^[0-9]{1,9}(ms|s|m|h|d)(/[0-9]{1,9}(ms|s|m|h|d))?$")
"""A tumbling (``10s``) or hopping (``5m/1m``) window's label, as in ``PULSE_WINDOWS``."""
URL = re.compile(r"^https?://[^\s/?#]+[^\s]*$")


class RegistryInputError(ValueError):
    """A value the registry does not take; ``field`` names it, the message says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    site: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class AlertRule:
    """Fires after ``for_count`` consecutive closed windows whose ``aggregate`` compares with
    ``threshold`` by ``comparison``; resolves after ``for_count`` consecutive ones that are
    clear of ``clear_threshold`` (the same comparison fails), which lies on the safe side of
    the threshold (hysteresis)."""

    name: str
    metric: str
    window: str
    aggregate: str
    comparison: str
    threshold: float
    clear_threshold: float
    for_count: int = 1
    selector: str = "all"
    selector_value: str | None = None
    """The device id (``selector`` ``device``) or site (``site``); None for ``all``."""
    severity: str = "warning"
    enabled: bool = True

    def applies_to(self, device: Device) -> bool:
        return _selects(self.selector, self.selector_value, device)


@dataclass(frozen=True, slots=True)
class AbsenceRule:
    """Fires when a selected device's ``metric`` has had no reading for ``duration`` seconds
    of event time."""

    name: str
    metric: str
    duration: float
    selector: str = "all"
    selector_value: str | None = None
    severity: str = "warning"
    enabled: bool = True

    def applies_to(self, device: Device) -> bool:
        return _selects(self.selector, self.selector_value, device)


@dataclass(frozen=True, slots=True)
class Silence:
    """Mutes ``rule`` (None: every rule) for ``target`` (a device or a site) until ``until``
    (epoch seconds, excluded)."""

    id: int
    rule: str | None
    target: str
    target_value: str
    until: float

    def mutes(self, rule: str, device: Device, at: float) -> bool:
        if at >= self.until or (self.rule is not None and self.rule != rule):
            return False
        if self.target == "device":
            return device.id == self.target_value
        return device.site == self.target_value


@dataclass(frozen=True, slots=True)
class Webhook:
    """Where alerts are sent: those of ``rule``, or of ``severity``, or (neither) all."""

    id: int
    url: str
    rule: str | None = None
    severity: str | None = None


@dataclass(frozen=True)
class RegistrySnapshot:
    """The registry as of ``version`` (0: before any change). Maps by key, read-only."""

    version: int
    devices: Mapping[str, Device] = field(default_factory=lambda: MappingProxyType({}))
    rules: Mapping[str, AlertRule] = field(default_factory=lambda: MappingProxyType({}))
    absence_rules: Mapping[str, AbsenceRule] = field(default_factory=lambda: MappingProxyType({}))
    silences: Mapping[int, Silence] = field(default_factory=lambda: MappingProxyType({}))
    webhooks: Mapping[int, Webhook] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(
        cls,
        version: int,
        devices: Iterable[Device] = (),
        rules: Iterable[AlertRule] = (),
        absence_rules: Iterable[AbsenceRule] = (),
        silences: Iterable[Silence] = (),
        webhooks: Iterable[Webhook] = (),
    ) -> RegistrySnapshot:
        """A snapshot of these entries, each map in key order."""
        return cls(
            version,
            _frozen({d.id: d for d in devices}),
            _frozen({r.name: r for r in rules}),
            _frozen({r.name: r for r in absence_rules}),
            _frozen({s.id: s for s in silences}),
            _frozen({w.id: w for w in webhooks}),
        )

    def document(self) -> dict[str, Any]:
        """The snapshot as JSON-ready data (the Redis cache's value; :meth:`from_document`
        reads it back equal)."""
        return {
            "version": self.version,
            "devices": [device_document(d) for d in self.devices.values()],
            "rules": [rule_document(r) for r in self.rules.values()],
            "absence_rules": [absence_document(r) for r in self.absence_rules.values()],
            "silences": [silence_document(s) for s in self.silences.values()],
            "webhooks": [webhook_document(w) for w in self.webhooks.values()],
        }

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> RegistrySnapshot:
        """The snapshot :meth:`document` gave; KeyError or TypeError for anything else."""
        return cls.of(
            int(doc["version"]),
            [
                Device(d["id"], d["site"], _frozen(d["labels"]), d["enabled"])
                for d in doc["devices"]
            ],
            [AlertRule(**r) for r in doc["rules"]],
            [AbsenceRule(**r) for r in doc["absence_rules"]],
            [Silence(**s) for s in doc["silences"]],
            [Webhook(**w) for w in doc["webhooks"]],
        )


def device_document(device: Device) -> dict[str, Any]:
    return {
        "id": device.id,
        "site": device.site,
        "labels": dict(device.labels),
        "enabled": device.enabled,
    }


def rule_document(rule: AlertRule) -> dict[str, Any]:
    return {name: getattr(rule, name) for name in AlertRule.__dataclass_fields__}


def absence_document(rule: AbsenceRule) -> dict[str, Any]:
    return {name: getattr(rule, name) for name in AbsenceRule.__dataclass_fields__}


def silence_document(silence: Silence) -> dict[str, Any]:
    return {name: getattr(silence, name) for name in Silence.__dataclass_fields__}


def webhook_document(webhook: Webhook) -> dict[str, Any]:
    return {name: getattr(webhook, name) for name in Webhook.__dataclass_fields__}


def _frozen(mapping: dict[Any, Any]) -> Mapping[Any, Any]:
    return MappingProxyType(dict(sorted(mapping.items())))


def _selects(selector: str, value: str | None, device: Device) -> bool:
    if selector == "all":
        return True
    if selector == "device":
        return device.id == value
    return device.site == value


# -- checks: one definition of a valid entry ------------------------------------------------


def check_name(text: str, field: str) -> str:
    """A device, metric, site, rule or label name: the reading contract's names."""
    if not isinstance(text, str) or NAME_PATTERN.match(text) is None or text.endswith("\n"):
        raise RegistryInputError(
            field, f"{str(text)[:140]!r} is not a name (1-128 of A-Z a-z 0-9 _ . -)"
        )
    return text


def check_choice(text: str, field: str, choices: tuple[str, ...]) -> str:
    if text not in choices:
        raise RegistryInputError(field, f"{str(text)[:40]!r} is not one of {', '.join(choices)}")
    return text


def check_number(value: Any, field: str) -> float:
    """A finite number (a string of one too, as the CLI gives it)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RegistryInputError(field, f"{str(value)[:40]!r} is not a number") from None
    if not math.isfinite(number) or abs(number) > 1e290:
        raise RegistryInputError(field, f"{str(value)[:40]!r} is not a finite number")
    return number


def check_labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    if len(labels) > MAX_LABELS:
        raise RegistryInputError("labels", f"at most {MAX_LABELS} labels, not {len(labels)}")
    for key, value in labels.items():
        check_name(key, "labels")
        if not isinstance(value, str) or len(value) > 256 or any(ord(c) < 32 for c in value):
            raise RegistryInputError(
                "labels", f"{key}: the value must be at most 256 characters, no control ones"
            )
    return _frozen(dict(labels))


def check_device(device: Device) -> Device:
    check_name(device.id, "id")
    if device.site is not None:
        check_name(device.site, "site")
    return Device(device.id, device.site, check_labels(device.labels), bool(device.enabled))


def check_selector(selector: str, value: str | None) -> None:
    check_choice(selector, "selector", SELECTORS)
    if selector == "all":
        if value is not None:
            raise RegistryInputError("selector", "a rule for all devices names no device or site")
    elif value is None:
        raise RegistryInputError("selector", f"a {selector} selector needs the {selector}")
    else:
        check_name(value, selector)


def check_rule(rule: AlertRule) -> AlertRule:
    check_name(rule.name, "name")
    check_name(rule.metric, "metric")
    if WINDOW_LABEL.match(rule.window) is None:
        raise RegistryInputError(
            "window", f"{rule.window[:40]!r} is not a tumbling or hopping window (10s, 5m/1m)"
        )
    check_choice(rule.aggregate, "aggregate", AGGREGATES)
    check_choice(rule.comparison, "comparison", COMPARISONS)
    threshold = check_number(rule.threshold, "threshold")
    clear = check_number(rule.clear_threshold, "clear_threshold")
    above = rule.comparison in (">", ">=")
    if (above and clear > threshold) or (not above and clear < threshold):
        side = "at most" if above else "at least"
        raise RegistryInputError(
            "clear_threshold",
            f"must be {side} the threshold ({threshold!r}) for comparison {rule.comparison!r}, "
            f"not {clear!r}",
        )
    if not isinstance(rule.for_count, int) or not 1 <= rule.for_count <= 1000:
        raise RegistryInputError(
            "for", f"must be a whole number from 1 to 1000, not {rule.for_count!r}"
        )
    check_selector(rule.selector, rule.selector_value)
    check_choice(rule.severity, "severity", SEVERITIES)
    return AlertRule(
        rule.name, rule.metric, rule.window, rule.aggregate, rule.comparison, threshold, clear,
        rule.for_count, rule.selector, rule.selector_value, rule.severity, bool(rule.enabled),
    )  # fmt: skip


def check_absence_rule(rule: AbsenceRule) -> AbsenceRule:
    check_name(rule.name, "name")
    check_name(rule.metric, "metric")
    duration = check_number(rule.duration, "duration")
    if not 0 < duration <= 365 * 86400:
        raise RegistryInputError(
            "duration", f"must be more than 0 s and at most a year, not {duration!r}"
        )
    check_selector(rule.selector, rule.selector_value)
    check_choice(rule.severity, "severity", SEVERITIES)
    return AbsenceRule(
        rule.name, rule.metric, duration, rule.selector, rule.selector_value, rule.severity,
        bool(rule.enabled),
    )  # fmt: skip


def check_silence_target(target: str, value: str) -> None:
    check_choice(target, "target", SILENCE_TARGETS)
    check_name(value, target)


def check_webhook_url(url: str) -> str:
    if not isinstance(url, str) or len(url) > 2048 or URL.match(url) is None:
        raise RegistryInputError("url", f"{str(url)[:80]!r} is not an http:// or https:// URL")
    return url
