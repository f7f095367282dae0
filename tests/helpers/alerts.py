"""Alert transitions made for the alerts writers' tests, always through
models.alerts.AlertTransition (the worker's own type), so that a record here is what the
worker writes to the ``alerts`` topic; and what the contract says the sinks hold after a
sequence of them, computed without the sinks' fence."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from models.alerts import AlertState, AlertTransition

S = 1_000_000
START = 1_700_000_000 * S
"""Epoch microseconds the transitions here are counted from."""


def window_alert(
    rule: str,
    device: str,
    metric: str,
    window: str,
    size_s: int,
    k: int,
    state: AlertState,
    value: float,
    *,
    threshold: float = 80.0,
    aggregate: str = "mean",
    severity: str = "warning",
    site: str | None = "plant-a",
    labels: Mapping[str, str] | None = None,
    silenced: bool = False,
) -> AlertTransition:
    """A window rule's transition on window ``k`` (of ``size_s`` seconds from START) of a
    series."""
    start = START + k * size_s * S
    return AlertTransition(
        rule=rule,
        device=device,
        site=site,
        labels=labels if labels is not None else {"line": "2"},
        metric=metric,
        window=window,
        start_us=start,
        end_us=start + size_s * S,
        aggregate=aggregate,
        value=value,
        threshold=threshold,
        state=state,
        severity=severity,
        silenced=silenced,
    )


def absence_alert(
    rule: str,
    device: str,
    metric: str,
    state: AlertState,
    start_s: float,
    duration_s: float,
    *,
    severity: str = "critical",
    site: str | None = None,
    silenced: bool = False,
) -> AlertTransition:
    """An absence rule's transition: firing at ``(start, start + duration)`` (the last
    reading and the deadline), resolved at ``(start, start)`` (the reading that ended it);
    seconds after START."""
    start = START + round(start_s * S)
    return AlertTransition(
        rule=rule,
        device=device,
        site=site,
        labels={},
        metric=metric,
        window=None,
        start_us=start,
        end_us=start + round(duration_s * S) if state == "firing" else start,
        aggregate=None,
        value=None,
        threshold=float(duration_s),
        state=state,
        severity=severity,
        silenced=silenced,
    )


def keyed(transitions: Iterable[AlertTransition]) -> list[tuple[bytes, bytes]]:
    """Each transition's record of the alerts topic: (key = the device, value = its JSON)."""
    return [(t.device.encode(), t.json()) for t in transitions]


def alert_of(transition: AlertTransition) -> str:
    """The alert's field in ``P:alerts:active`` as the sink's docstring defines it."""
    return f"{transition.rule}:{transition.device}:{transition.metric}:{transition.window or ''}"


def expected_alerts(
    partitions: Iterable[Iterable[bytes]],
) -> tuple[dict[str, bytes], list[list[bytes]]]:
    """What the contract says the active alerts and the event stream hold after each
    partition's ``alerts`` records (values, in offset order) were written, computed from the
    topic's order rather than from the transitions' times: a worker's repeat replays a tail
    of the partition's transitions in the same order, so each alert ends as the last record
    of it left it (firing: its JSON; resolved: absent), and each transition (by id and
    state) is an event once, where it first appears."""
    active: dict[str, bytes] = {}
    events: list[list[bytes]] = []
    for values in partitions:
        seen: set[tuple[str, str]] = set()
        stream: list[bytes] = []
        for value in values:
            doc: dict[str, Any] = orjson.loads(value)
            alert = f"{doc['rule']}:{doc['device']}:{doc['metric']}:{doc['window'] or ''}"
            if doc["state"] == "firing":
                active[alert] = value
            else:
                active.pop(alert, None)
            if (doc["id"], doc["state"]) not in seen:
                seen.add((doc["id"], doc["state"]))
                stream.append(value)
        events.append(stream)
    return active, events
