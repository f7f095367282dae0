"""What the registry adds to the alert values of :mod:`models.alerts`: webhooks, the snapshot
a process holds, the checks of what the registry takes, and the snapshot's JSON form.

The devices, rules, absence rules and silences of a registry version are the types of
:mod:`models.alerts` (one definition, in their units: times and durations in µs), gathered in
a :class:`models.alerts.Registry`. A :class:`RegistrySnapshot` is that registry plus the
webhooks of the same version (the notifier's, not the worker's). Both are values: every
tuple is in :func:`registry_of`'s order (by id or name), so two snapshots of one version are
equal whoever read them and through which cache.

The ``new_*`` functions build a value from raw input (the CLI's strings, or the fields of a
value, by the ``check_*`` functions) and are the one definition of what the registry takes:
stricter than the types' own checks (names for sites, the window's label, severities, bounds)
and with the schema's CHECK constraints saying the same. A value they refuse raises
:class:`RegistryInputError` naming the field, a :class:`models.alerts.RegistryError`, so one
``except RegistryError`` catches both. No I/O here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from models.alerts import (
    COMPARISONS,
    AbsenceRule,
    AlertRule,
    Device,
    Registry,
    RegistryError,
    Selector,
    Silence,
)
from models.outputs import AGGREGATES
from models.reading import NAME_PATTERN

SEVERITIES = ("info", "warning", "critical")
"""An alert's severity; webhooks may be configured per severity."""
MAX_LABELS = 16
WINDOW_LABEL = re.compile(r"^[0-9]{1,9}(ms|s|m|h|d)(/[0-9]{1,9}(ms|s|m|h|d))?$")
"""A tumbling (``10s``) or hopping (``5m/1m``) window's label, as in ``PULSE_WINDOWS``."""
URL = re.compile(r"^https?://[^\s/?#]+[^\s]*$")
MAX_FOR = 1000
MAX_ABSENCE_US = 365 * 86400 * 1_000_000
"""The longest absence rule's duration: a year."""
MAX_UNTIL_US = 253_402_300_799_999_999
"""The last µs of year 9999 (UTC): the latest end of a silence."""


class RegistryInputError(RegistryError):
    """A value the registry does not take; ``field`` names it, the message says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class Webhook:
    """Where alerts are sent: those of ``rule``, or of ``severity``, or (neither) all.
    ``id`` is the registry's number for it (what ``pulse notify rm`` takes)."""

    id: int
    url: str
    rule: str | None = None
    severity: str | None = None

    def matches(self, rule: str, severity: str) -> bool:
        """Whether an alert of ``rule`` and ``severity`` goes to this webhook: its rule is
        that rule, or its severity that severity, or it names neither (every alert)."""
        if self.rule is not None:
            return self.rule == rule
        if self.severity is not None:
            return self.severity == severity
        return True


def registry_of(
    version: int,
    devices: Iterable[Device] = (),
    rules: Iterable[AlertRule] = (),
    absence_rules: Iterable[AbsenceRule] = (),
    silences: Iterable[Silence] = (),
) -> Registry:
    """The :class:`~models.alerts.Registry` of these entries in the registry's one order:
    devices by id, rules by name, silences by id (ids first, then by what they mute), so that
    equal contents make equal values."""
    return Registry(
        version,
        tuple(sorted(devices, key=lambda d: d.id)),
        tuple(sorted(rules, key=lambda r: r.name)),
        tuple(sorted(absence_rules, key=lambda r: r.name)),
        tuple(sorted(silences, key=_silence_order)),
    )


def _silence_order(s: Silence) -> tuple[Any, ...]:
    return (s.id is None, s.id or 0, s.rule or "", s.device or "", s.site or "", s.until_us)


@dataclass(frozen=True, slots=True)
class RegistrySnapshot:
    """The registry as of one version (0: before any change): ``registry`` (what the worker
    judges with) and the ``webhooks`` of that version, by id."""

    registry: Registry
    webhooks: tuple[Webhook, ...] = ()

    @property
    def version(self) -> int:
        return self.registry.version

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
        """A snapshot of these entries, each kind in the registry's order (:func:`registry_of`)."""
        return cls(
            registry_of(version, devices, rules, absence_rules, silences),
            tuple(sorted(webhooks, key=lambda w: w.id)),
        )

    def document(self) -> dict[str, Any]:
        """The snapshot as JSON-ready data (the Redis cache's value):
        :meth:`from_document` reads it back equal, float for float and µs for µs."""
        registry = self.registry
        return {
            "version": registry.version,
            "devices": [device_document(d) for d in registry.devices],
            "rules": [rule_document(r) for r in registry.rules],
            "absence_rules": [absence_document(r) for r in registry.absence_rules],
            "silences": [silence_document(s) for s in registry.silences],
            "webhooks": [webhook_document(w) for w in self.webhooks],
        }

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> RegistrySnapshot:
        """The snapshot :meth:`document` gave; KeyError, TypeError or RegistryError for
        anything else."""
        return cls(
            Registry(
                int(doc["version"]),
                tuple(map(device_from_document, doc["devices"])),
                tuple(map(rule_from_document, doc["rules"])),
                tuple(map(absence_from_document, doc["absence_rules"])),
                tuple(map(silence_from_document, doc["silences"])),
            ),
            tuple(map(webhook_from_document, doc["webhooks"])),
        )


# -- the JSON form of each entry (the Redis cache, the API, `pulse ... list --json`) ---------


def device_document(device: Device) -> dict[str, Any]:
    return {
        "id": device.id,
        "site": device.site,
        "labels": dict(sorted(device.labels.items())),
        "enabled": device.enabled,
    }


def selector_document(selector: Selector) -> dict[str, Any]:
    """``{"device", "site"}``: one device, the devices of a site, or (both null) all."""
    return {"device": selector.device, "site": selector.site}


def rule_document(rule: AlertRule) -> dict[str, Any]:
    """``clear_threshold`` null: the threshold."""
    return {
        "name": rule.name,
        "metric": rule.metric,
        "window": rule.window,
        "aggregate": rule.aggregate,
        "comparison": rule.comparison,
        "threshold": rule.threshold,
        "clear_threshold": rule.clear_threshold,
        "for_count": rule.for_count,
        "selector": selector_document(rule.selector),
        "severity": rule.severity,
        "enabled": rule.enabled,
    }


def absence_document(rule: AbsenceRule) -> dict[str, Any]:
    return {
        "name": rule.name,
        "metric": rule.metric,
        "duration_us": rule.duration_us,
        "selector": selector_document(rule.selector),
        "severity": rule.severity,
        "enabled": rule.enabled,
    }


def silence_document(silence: Silence) -> dict[str, Any]:
    return {
        "id": silence.id,
        "rule": silence.rule,
        "device": silence.device,
        "site": silence.site,
        "until_us": silence.until_us,
    }


def webhook_document(webhook: Webhook) -> dict[str, Any]:
    return {
        "id": webhook.id,
        "url": webhook.url,
        "rule": webhook.rule,
        "severity": webhook.severity,
    }


def device_from_document(doc: Mapping[str, Any]) -> Device:
    """The device :func:`device_document` gave (and so for each kind below)."""
    return Device(doc["id"], doc["site"], doc["labels"], doc["enabled"])


def selector_from_document(doc: Mapping[str, Any]) -> Selector:
    return Selector(doc["device"], doc["site"])


def rule_from_document(doc: Mapping[str, Any]) -> AlertRule:
    return AlertRule(
        doc["name"], doc["metric"], doc["window"], doc["aggregate"], doc["comparison"],
        doc["threshold"], doc["clear_threshold"], doc["for_count"],
        selector_from_document(doc["selector"]), doc["severity"], doc["enabled"],
    )  # fmt: skip


def absence_from_document(doc: Mapping[str, Any]) -> AbsenceRule:
    return AbsenceRule(
        doc["name"], doc["metric"], doc["duration_us"], selector_from_document(doc["selector"]),
        doc["severity"], doc["enabled"],
    )  # fmt: skip


def silence_from_document(doc: Mapping[str, Any]) -> Silence:
    return Silence(doc["rule"], doc["device"], doc["site"], doc["until_us"], doc["id"])


def webhook_from_document(doc: Mapping[str, Any]) -> Webhook:
    return Webhook(doc["id"], doc["url"], doc["rule"], doc["severity"])


# -- what the registry takes: one definition ----------------------------------------------


def check_name(text: Any, field: str) -> str:
    """A device, metric, site, rule or label name: the reading contract's names."""
    if not isinstance(text, str) or NAME_PATTERN.match(text) is None or text.endswith("\n"):
        raise RegistryInputError(
            field, f"{str(text)[:140]!r} is not a name (1-128 of A-Z a-z 0-9 _ . -)"
        )
    return text


def check_choice(text: Any, field: str, choices: tuple[str, ...]) -> str:
    if text not in choices:
        raise RegistryInputError(field, f"{str(text)[:40]!r} is not one of {', '.join(choices)}")
    return str(text)


def check_number(value: Any, field: str) -> float:
    """A finite number (a string of one too, as the CLI gives it), as a float."""
    if isinstance(value, bool):
        raise RegistryInputError(field, f"{value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RegistryInputError(field, f"{str(value)[:40]!r} is not a number") from None
    if not math.isfinite(number) or abs(number) > 1e290:
        raise RegistryInputError(field, f"{str(value)[:40]!r} is not a finite number")
    return number


def check_whole(value: Any, field: str, low: int, high: int, unit: str = "") -> int:
    """A whole number (an int, not a bool) from ``low`` to ``high``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RegistryInputError(
            field, f"must be a whole number{unit} from {low} to {high}, not {value!r}"
        )
    return value


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise RegistryInputError("labels", f"at most {MAX_LABELS} labels, not {len(labels)}")
    for key, value in labels.items():
        check_name(key, "labels")
        if not isinstance(value, str) or len(value) > 256 or any(ord(c) < 32 for c in value):
            raise RegistryInputError(
                "labels", f"{key}: the value must be at most 256 characters, no control ones"
            )
    return dict(sorted(labels.items()))


def check_selector(device: str | None, site: str | None) -> Selector:
    """One device, the devices of a site, or (neither) all."""
    if device is not None and site is not None:
        raise RegistryInputError("selector", "a rule is for a device or a site, not both")
    if device is not None:
        check_name(device, "device")
    if site is not None:
        check_name(site, "site")
    return Selector(device, site)


def check_severity(severity: Any) -> str:
    return check_choice(severity, "severity", SEVERITIES)


def new_device(
    device_id: str, site: str | None = None, labels: Mapping[str, str] | None = None,
    enabled: bool = True,
) -> Device:  # fmt: skip
    """A device entry the registry takes (``site`` and label names are names too)."""
    check_name(device_id, "id")
    if site is not None:
        check_name(site, "site")
    return Device(device_id, site, check_labels(labels or {}), bool(enabled))


def new_rule(
    name: str,
    metric: str,
    window: str,
    aggregate: str,
    comparison: str,
    threshold: Any,
    clear_threshold: Any = None,
    for_count: int = 1,
    *,
    device: str | None = None,
    site: str | None = None,
    severity: str = "warning",
    enabled: bool = True,
) -> AlertRule:
    """An alert rule the registry takes. ``threshold`` and ``clear_threshold`` may be the
    CLI's text; ``clear_threshold`` None means the threshold, and otherwise lies on the safe
    side of it (at most it for ``>``/``>=``, at least it for ``<``/``<=``: hysteresis)."""
    check_name(name, "name")
    check_name(metric, "metric")
    if not isinstance(window, str) or WINDOW_LABEL.match(window) is None:
        raise RegistryInputError(
            "window", f"{str(window)[:40]!r} is not a tumbling or hopping window (10s, 5m/1m)"
        )
    check_choice(aggregate, "aggregate", AGGREGATES)
    check_choice(comparison, "comparison", COMPARISONS)
    limit = check_number(threshold, "threshold")
    clear = None if clear_threshold is None else check_number(clear_threshold, "clear_threshold")
    above = comparison in (">", ">=")
    if clear is not None and ((above and clear > limit) or (not above and clear < limit)):
        side = "at most" if above else "at least"
        raise RegistryInputError(
            "clear_threshold",
            f"must be {side} the threshold ({limit!r}) for comparison {comparison!r}, "
            f"not {clear!r}",
        )
    check_whole(for_count, "for", 1, MAX_FOR)
    selector = check_selector(device, site)
    check_severity(severity)
    return AlertRule(
        name, metric, window, aggregate, comparison, limit, clear,  # type: ignore[arg-type]
        for_count, selector, severity, bool(enabled),
    )  # fmt: skip


def new_absence_rule(
    name: str,
    metric: str,
    duration_us: int,
    *,
    device: str | None = None,
    site: str | None = None,
    severity: str = "warning",
    enabled: bool = True,
) -> AbsenceRule:
    """An absence rule the registry takes: ``duration_us`` of event time, up to a year."""
    check_name(name, "name")
    check_name(metric, "metric")
    if (
        isinstance(duration_us, bool)
        or not isinstance(duration_us, int)
        or not 0 < duration_us <= MAX_ABSENCE_US
    ):
        raise RegistryInputError(
            "duration", f"must be more than 0 and at most a year, in whole µs, not {duration_us!r}"
        )
    selector = check_selector(device, site)
    check_severity(severity)
    return AbsenceRule(name, metric, duration_us, selector, severity, bool(enabled))


def new_silence(
    rule: str | None = None,
    device: str | None = None,
    site: str | None = None,
    until_us: int = 0,
    silence_id: int | None = None,
) -> Silence:
    """A silence the registry takes: of a rule (None: every rule), for a device or a site
    (neither: every device), at least one of the three named, until ``until_us`` (epoch µs,
    excluded, up to year 9999)."""
    if rule is not None:
        check_name(rule, "rule")
    if rule is None and device is None and site is None:
        raise RegistryInputError("target", "a silence mutes a rule, a device or a site: name one")
    if device is not None and site is not None:
        raise RegistryInputError("target", "a silence is for a device or a site, not both")
    if device is not None:
        check_name(device, "device")
    if site is not None:
        check_name(site, "site")
    check_whole(until_us, "until", 0, MAX_UNTIL_US, " of epoch µs")
    return Silence(rule, device, site, until_us, silence_id)


def check_webhook_url(url: Any) -> str:
    if not isinstance(url, str) or len(url) > 2048 or URL.match(url) is None:
        raise RegistryInputError("url", f"{str(url)[:80]!r} is not an http:// or https:// URL")
    return url


def new_webhook(
    webhook_id: int, url: str, rule: str | None = None, severity: str | None = None
) -> Webhook:
    """A webhook the registry takes: for a rule, or a severity, or (neither) every alert."""
    check_webhook_url(url)
    if rule is not None:
        check_name(rule, "rule")
    if severity is not None:
        check_severity(severity)
    if rule is not None and severity is not None:
        raise RegistryInputError("severity", "a webhook is for a rule or a severity, not both")
    return Webhook(webhook_id, url, rule, severity)


def check_device(device: Device) -> Device:
    """``device`` if the registry takes it (:func:`new_device`'s checks on its fields)."""
    return new_device(device.id, device.site, device.labels, device.enabled)


def check_rule(rule: AlertRule) -> AlertRule:
    """``rule`` if the registry takes it (:func:`new_rule`'s checks on its fields)."""
    return new_rule(
        rule.name, rule.metric, rule.window, rule.aggregate, rule.comparison, rule.threshold,
        rule.clear_threshold, rule.for_count, device=rule.selector.device,
        site=rule.selector.site, severity=rule.severity, enabled=rule.enabled,
    )  # fmt: skip


def check_absence_rule(rule: AbsenceRule) -> AbsenceRule:
    """``rule`` if the registry takes it (:func:`new_absence_rule`'s checks on its fields)."""
    return new_absence_rule(
        rule.name, rule.metric, rule.duration_us, device=rule.selector.device,
        site=rule.selector.site, severity=rule.severity, enabled=rule.enabled,
    )  # fmt: skip


def check_silence(silence: Silence) -> Silence:
    """``silence`` if the registry takes it (:func:`new_silence`'s checks on its fields)."""
    return new_silence(silence.rule, silence.device, silence.site, silence.until_us, silence.id)
