"""The event-time window state of one input partition, and the rules that close windows.

Pure: records in, closed windows and state deltas out; no clocks, no I/O. The processor feeds
it records in partition offset order, so every output is determined by the data alone.

Watermark::

    W = max(largest event time applied so far - grace, idle floor)

    event time ─────────[ window )──────────────────────▶
                        start  end
                                 ▲ the window closes when W >= end;
                                   a reading for it after that is late

A reading is applied to each of its windows that is still open; if every one has closed it is
late and is not applied at all.

Sliding window SIZE of a (device, metric): the readings with event time in ``(t - SIZE, t]``
where ``t`` is the latest event time seen for the key. Its readings are kept (sorted by event
time, then offset) so min and max stay exact as readings leave. A reading enters it only if
``event time > W - SIZE``; the key's sliding state is dropped once ``W >= t + 2 * SIZE``, after
which no reading that could share a window with the old ones can be applied::

    ────(────────────────]─────────────── event time
     t - SIZE            t = latest for the key

Closed windows leave the state at once, so the state holds only open windows (and the latest
value of keys that have one).

Tag values in use (``max_tag_values``): every tag value is a new InfluxDB series (with each
device, metric and window), so a partition keeps at most ``max_tag_values`` values of each tag
key in use, and at most :data:`MAX_TAG_KEYS` keys; a reading that would add one more is
rejected (``Rejected``, reason ``too_many_tag_values``) before it touches the state. A value
is in use while a window that could hold its latest reading may be open, until
``W >= its latest event time + the longest window``. The registry (:attr:`tag_values`) is part
of the state and of its changelog, and whether a value is in use depends on W only, so a
replay or a recovery admits exactly the same readings::

    tag_values = {key: {value: latest event time applied with it}}

Changelog deltas carry *full values* of the keys that changed (or their removal) plus the
input offsets they cover, ``[from_offset, to_offset)``. A delta made from a correct state at
``from_offset`` and applied to a state at any offset in ``[from_offset, to_offset]`` gives the
correct state at ``to_offset``; that is what makes recovery exact even when a batch of deltas
was written twice or only partly (see :meth:`PartitionState.apply_delta`).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from models.alerts import AlertTransition, Registry
from models.outputs import ClosedWindow, Latest, OpenView
from models.reading import VALID_NAMES, Reading, Rejected
from tables._native import (
    apply_common,
    apply_windows,
    close_windows,
    delta_rows,
    open_views,
    update_latest,
)
from tables.aggregators import Summary, SummaryState
from tables.alerts import AlertTable, all_rows, apply_rows, changed_rows, due, judge, seen
from tables.windows import WindowSpec

WindowKey = tuple[str, str, int, int]
"""(device, metric, index of the window spec, window start in microseconds)."""

SeriesKey = tuple[str, str, int]
"""(device, metric, index of the window spec): one series of windows."""

NO_WATERMARK = -(2**63)
NO_DEADLINE = 2**63 - 1
"""The absence deadline when no absence rule waits for the watermark."""

MAX_TAG_KEYS = 64
"""Tag keys in use at once in a partition, at most (see the module doc): a reading has at
most 16 (models.reading.MAX_TAGS); this bounds how many keys a stream of readings spreads
over, each key a dimension of InfluxDB's series."""


SlidingState = list[Any]
"""``[latest event time, entries]``; entries ``[t_us, offset, value, tags]`` sorted."""


@dataclass(frozen=True, slots=True)
class Delta:
    """What changed in one partition's state over input offsets ``[from_offset, to_offset)``.

    ``windows``: full state of each changed window as ``[device, metric, label, start, state]``;
    ``removed``: ``[device, metric, label, start]`` of windows that closed;
    ``latest``: ``[device, metric, t_us, value]``; ``latest_removed``: ``[device, metric]``;
    ``sliding``: ``[device, metric, label, latest, entries]`` of changed sliding windows;
    ``sliding_removed``: ``[device, metric, label]`` of expired ones;
    ``tag_values``: ``[key, value, latest event time]`` of tag values that came into use or
    were seen at a later time; ``tag_values_removed``: ``[key, value]`` of those forgotten;
    ``max_t`` and ``idle_floor``: the watermark inputs after the delta.
    A snapshot is a delta with ``snapshot=True`` that holds the whole state.
    """

    from_offset: int
    to_offset: int
    max_t: int
    idle_floor: int
    windows: list[list[Any]]
    removed: list[list[Any]]
    latest: list[list[Any]]
    latest_removed: list[list[Any]]
    sliding: list[list[Any]]
    sliding_removed: list[list[Any]]
    snapshot: bool = False
    tag_values: list[list[Any]] = field(default_factory=list)
    tag_values_removed: list[list[Any]] = field(default_factory=list)
    registry_version: int = 0
    alert_series: list[list[Any]] = field(default_factory=list)
    alert_absence: list[list[Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.from_offset,
            "to": self.to_offset,
            "max_t": self.max_t,
            "idle_floor": self.idle_floor,
            "windows": self.windows,
            "removed": self.removed,
            "latest": self.latest,
            "latest_removed": self.latest_removed,
            "sliding": self.sliding,
            "sliding_removed": self.sliding_removed,
            "snapshot": self.snapshot,
            "tag_values": self.tag_values,
            "tag_values_removed": self.tag_values_removed,
            "registry_version": self.registry_version,
            "alert_series": self.alert_series,
            "alert_absence": self.alert_absence,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Delta:
        return cls(
            from_offset=doc["from"],
            to_offset=doc["to"],
            max_t=doc["max_t"],
            idle_floor=doc["idle_floor"],
            windows=doc["windows"],
            removed=doc["removed"],
            latest=doc["latest"],
            latest_removed=doc["latest_removed"],
            sliding=doc["sliding"],
            sliding_removed=doc["sliding_removed"],
            snapshot=doc["snapshot"],
            # absent from the changelogs of versions without the tag registry
            tag_values=doc.get("tag_values", []),
            tag_values_removed=doc.get("tag_values_removed", []),
            # absent from the changelogs of versions without alerts
            registry_version=doc.get("registry_version", 0),
            alert_series=doc.get("alert_series", []),
            alert_absence=doc.get("alert_absence", []),
        )

    @property
    def empty(self) -> bool:
        return not (
            self.windows
            or self.removed
            or self.latest
            or self.latest_removed
            or self.sliding
            or self.sliding_removed
            or self.tag_values
            or self.tag_values_removed
            or self.alert_series
            or self.alert_absence
        )


class Drained(NamedTuple):
    """Everything a flush takes from one partition's state."""

    closed: list[ClosedWindow]
    open_views: list[OpenView]
    latest: list[Latest]
    sliding_views: list[OpenView]
    delta: Delta
    alerts: list[AlertTransition]


class PartitionState:
    """Open windows of one input partition. Feed :meth:`apply` records in offset order."""

    def __init__(
        self,
        specs: tuple[WindowSpec, ...],
        grace_us: int,
        next_offset: int = 0,
        max_tag_values: int | None = None,
    ):
        self.specs = specs
        self.grace_us = grace_us
        self.max_tag_values = max_tag_values
        """Tag values in use per tag key, at most (``PULSE_MAX_TAG_VALUES``); None: no bound."""
        self._tag_horizon = max(spec.size_us for spec in specs)
        self.tag_values: dict[str, dict[str, int]] = {}
        """Per tag key, its values in use (or not yet forgotten) and the latest event time
        applied with each (see the module doc)."""
        self._tags_changed: set[tuple[str, str]] = set()
        self._tags_removed: set[tuple[str, str]] = set()
        self._spec_index = {spec.label: i for i, spec in enumerate(specs)}
        self._labels = tuple(spec.label for spec in specs)
        self._sizes = tuple(spec.size_us for spec in specs)
        # (index, size, step) of the tumbling and hopping specs, for apply_windows.
        self._spec_math = tuple(
            (i, s.size_us, s.step_us) for i, s in enumerate(specs) if s.kind != "sliding"
        )
        self._sliding_math = tuple(
            (i, s.size_us) for i, s in enumerate(specs) if s.kind == "sliding"
        )
        self.next_offset = next_offset
        """The first input offset not yet applied."""
        self.max_t = NO_WATERMARK
        self.idle_floor = NO_WATERMARK
        self.watermark = NO_WATERMARK
        self.windows: dict[WindowKey, SummaryState] = {}
        self.latest: dict[tuple[str, str], tuple[int, float]] = {}
        self._ends: list[int] = []  # heap of distinct window ends
        self._by_end: dict[int, list[WindowKey]] = {}
        self._closed_of_first_end = 0  # of the earliest end's windows, closed so far
        self._newest: dict[SeriesKey, int] = {}  # newest open window start per series
        self._open_per_key: dict[tuple[str, str], int] = {}
        self._changed: set[WindowKey] = set()
        self._removed: set[WindowKey] = set()
        self._latest_changed: set[tuple[str, str]] = set()
        # Latest values forgotten before a drain emitted them: the drain still must.
        self._latest_unsent: dict[tuple[str, str], tuple[int, float]] = {}
        self._views_changed: set[SeriesKey] = set()
        self._closed: list[ClosedWindow] = []
        self._drained_offset = next_offset
        self.sliding: dict[SeriesKey, SlidingState] = {}
        self._sliding_expiry: list[tuple[int, SeriesKey]] = []  # heap, lazily checked
        self._sliding_changed: set[SeriesKey] = set()
        self._sliding_removed: set[SeriesKey] = set()
        self.registry: Registry | None = None
        """The registry version this partition judges by (None: no registry: no alerts, and
        every device admitted); see :meth:`use_registry`."""
        self.registry_version = 0
        """Its version, as recorded in the changelog (0: none)."""
        self.registry_required = False
        """Readings of devices the registry lacks (or disables) are rejected
        (``unknown_device``): ``PULSE_REGISTRY_REQUIRED``."""
        self.alerts = AlertTable()
        self._transitions: list[AlertTransition] = []
        """Alert transitions since the last drain, in input order."""
        self._admitted: dict[str, None] | None = None
        self._stops: dict[tuple[str, str], bool] = {}
        self._deadlines: list[tuple[int, tuple[str, str, str]]] = []
        """A heap of (watermark at which it fires, absence key) of the entries not firing;
        lazily kept: an item whose entry moved on is dropped or corrected when it comes up."""
        self._queued: set[tuple[str, str, str]] = set()
        """The keys with an item in ``_deadlines``: one each."""

    # -- the registry and absence rules ---------------------------------------------------

    def use_registry(self, registry: Registry | None, required: bool = False) -> None:
        """Judge by ``registry`` from now on (the caller records its version first: see
        :meth:`drain`'s ``switch_to``), and with ``required`` reject the readings of devices
        it lacks or disables. The absence entries are judged once against it at once (at
        this watermark): those whose rule no longer applies are dropped, resolving if they
        fired; a replay from the delta that recorded the version does the same at the same
        point."""
        self.registry = registry
        self.registry_version = 0 if registry is None else registry.version
        self.registry_required = required
        self._admitted = (
            None
            if registry is None or not required
            else {d.id: None for d in registry.devices if d.enabled}
        )
        self._stops = {}
        self._deadlines = []
        self._queued = set()
        if registry is None:
            return
        if self.alerts.absence:
            self._transitions += due(self.alerts, registry, self.watermark)
        for absence_rule in registry.absence_rules:
            for device in registry.devices:
                pair = (device.id, absence_rule.metric)
                if pair not in self._stops:
                    self._update_stop(pair)
        for key, (last_t, firing, _) in self.alerts.absence.items():
            rule = registry.absence_rule(key[0])
            if not firing and rule is not None:
                self._deadlines.append((last_t + rule.duration_us, key))
                self._queued.add(key)
        heapq.heapify(self._deadlines)

    @property
    def _deadline(self) -> int:
        """The least watermark at which an absence entry may fire (the heap's least)."""
        return self._deadlines[0][0] if self._deadlines else NO_DEADLINE

    def _update_stop(self, pair: tuple[str, str]) -> None:
        """Whether the batch path must leave the readings of ``pair`` to :meth:`apply`: an
        absence rule covers it that has no entry for it yet or is firing for it (its next
        reading starts the watch or resolves it, at that reading's place in the input)."""
        registry = self.registry
        rules = () if registry is None else registry.absence_rules_for(*pair)
        if not rules:
            self._stops.pop(pair, None)
            return
        absence = self.alerts.absence
        self._stops[pair] = any(
            (entry := absence.get((rule.name, pair[0], pair[1]))) is None or entry[1]
            for rule in rules
        )

    def _seen(self, registry: Registry, last_seen: dict[tuple[str, str], int]) -> None:
        """tables.alerts.seen, and the stops and deadlines of the entries it touched."""
        table = self.alerts
        pending, table.changed_absence = table.changed_absence, set()
        self._transitions += seen(table, registry, last_seen)
        touched, table.changed_absence = table.changed_absence, pending
        self._after(registry, touched)
        pending |= touched

    def _after(self, registry: Registry, touched: set[tuple[str, str, str]]) -> None:
        """The stops and deadlines of absence entries that changed. A deadline that moved
        later keeps its old heap item, corrected when it comes up (see _due); only an entry
        with no item (new, or no longer firing) gets one."""
        absence, stops, queued = self.alerts.absence, self._stops, self._queued
        for key in touched:
            pair = (key[1], key[2])
            entry = absence.get(key)
            if entry is None or entry[1] or stops.get(pair) is not False:
                self._update_stop(pair)
            if entry is not None and not entry[1] and key not in queued:
                rule = registry.absence_rule(key[0])
                if rule is not None:
                    heapq.heappush(self._deadlines, (entry[0] + rule.duration_us, key))
                    queued.add(key)

    def _latest_t(self, pair: tuple[str, str]) -> int | None:
        value = self.latest.get(pair) or self._latest_unsent.get(pair)
        return None if value is None else value[0]

    def _due(self, registry: Registry) -> None:
        """Fire the absences whose deadline the watermark has reached: the heap's entries up
        to the watermark, each checked against the table (a newer reading moves its deadline;
        entries gone or firing are skipped), then tables.alerts.due of those still due."""
        watermark, table, heap = self.watermark, self.alerts, self._deadlines
        candidates: set[tuple[str, str, str]] = set()
        queued = self._queued
        while heap and heap[0][0] <= watermark:
            deadline, key = heapq.heappop(heap)
            queued.discard(key)
            entry = table.absence.get(key)
            rule = registry.absence_rule(key[0])
            if entry is None or entry[1] or rule is None:
                continue
            pair = (key[1], key[2])
            t = self._latest_t(pair)
            if t is not None and t > entry[0]:  # read since: a later deadline
                self._seen(registry, {pair: t})
            if entry[0] + rule.duration_us > deadline:  # moved later: its own deadline
                if key not in queued:
                    heapq.heappush(heap, (entry[0] + rule.duration_us, key))
                    queued.add(key)
                continue
            candidates.add(key)
        if candidates:
            pending, table.changed_absence = table.changed_absence, set()
            self._transitions += due(table, registry, watermark, sorted(candidates))
            touched, table.changed_absence = table.changed_absence, pending
            self._after(registry, touched)
            pending |= touched

    def _watch(self, pairs: Iterable[tuple[str, str]] | None = None) -> None:
        """Judge the absence rules at this point of the input: the latest readings of
        ``pairs`` (None: of every pair read since the last drain), then the watermark.
        Called after each reading the batch path leaves for it, whenever the watermark
        reaches the least deadline, and at each drain, so every absence fires and resolves
        at the same record whatever the fetches and drains."""
        registry = self.registry
        if registry is None:
            return
        last_seen = {}
        for each in self._latest_changed if pairs is None else pairs:
            t = self._latest_t(each)
            if t is not None:
                last_seen[each] = t
        if last_seen:
            self._seen(registry, last_seen)
        if self._deadlines and self._deadlines[0][0] <= self.watermark:
            self._due(registry)

    # -- processing ----------------------------------------------------------------------

    def apply(self, reading: Reading, offset: int) -> bool:
        """Apply a valid reading at input ``offset``; False if it is late for every window.

        Records at offsets already applied are ignored (returns True): after a restart the
        consumer may hand back records the recovered state already holds. A reading whose
        tags would put more values of a key (or more keys) in use than the bound raises
        :class:`Rejected` (``too_many_tag_values``) and changes nothing but the position.
        """
        if offset < self.next_offset:
            return True
        device, metric, value, t, tags = reading
        if self._admitted is not None and device not in self._admitted:
            self.next_offset = offset + 1
            raise Rejected(
                "unknown_device",
                f"device {device!r} is not in the registry (version "
                f"{self.registry_version}) or is disabled (PULSE_REGISTRY_REQUIRED)",
            )
        self.next_offset = offset + 1
        if tags is not None and self.max_tag_values is not None:
            self._admit_tags(tags, self.max_tag_values)
        watermark = self.watermark
        # Each window of WindowSpec.starts_containing(t) that is still open (end > W) gets
        # the reading (Summary.initialize or Summary.add) and goes into _changed.
        opened = apply_windows(
            self.windows, self._changed, self._spec_math, device, metric, value, t, tags, watermark
        )
        applied = opened is not None
        if opened:
            for key, end in opened:
                self._open(key, end)
        for index, size in self._sliding_math:
            if t <= watermark - size:
                continue
            series = (device, metric, index)
            sliding = self.sliding.get(series)
            if sliding is None:
                sliding = self.sliding[series] = [t, [[t, offset, value, tags]]]
                heapq.heappush(self._sliding_expiry, (t + 2 * size, series))
            elif t <= sliding[0] - size:
                continue  # older than the key's window
            else:
                entries = sliding[1]
                bisect.insort(entries, [t, offset, value, tags])
                if t > sliding[0]:
                    sliding[0] = t
                    cutoff = t - size
                    drop = 0
                    while entries[drop][0] <= cutoff:
                        drop += 1
                    if drop:
                        del entries[:drop]
                    heapq.heappush(self._sliding_expiry, (t + 2 * size, series))
            self._sliding_changed.add(series)
            applied = True
        if not applied:
            return False
        if tags is not None and self.max_tag_values is not None:
            self._note_tags(tags, t)
        update_latest(self.latest, self._latest_changed, device, metric, t, value)
        if t > self.max_t:
            self.max_t = t
            if t - self.grace_us > watermark:
                self.watermark = t - self.grace_us
        pair = (device, metric)
        if self._stops.get(pair):
            self._watch((pair,))
        elif self.watermark >= self._deadline:
            self._watch(())
        return True

    def apply_records(
        self, records: list[Any], begin: int, max_bytes: int, max_future_us: int
    ) -> int:
        """Apply the common readings of ``records[begin:]`` (Kafka records: ``offset``,
        ``key``, ``value``, ``timestamp``) in order; return the index of the first record left
        to the caller, ``len(records)`` if none is.

        The batch path of the worker: it stops at the first record that is not the common
        reading (see parse_common in tables/_speedups_py.py: among others, one at most
        ``max_future_us`` ahead of its record's timestamp) or is late for every window, which
        the caller then handles one by one (parse_reading, apply, dead letters) before
        calling again from the next. Each record it applies changes the state as
        :meth:`apply` would; with sliding windows configured it applies none.
        """
        if self._sliding_math:
            return begin  # sliding windows are applied by apply() only
        while True:
            position = [self.next_offset, self.max_t, self.watermark, self._deadline]
            try:
                at = apply_common(
                    records,
                    begin,
                    max_bytes,
                    max_future_us,
                    VALID_NAMES,
                    orjson.loads,
                    self._spec_math,
                    self.grace_us,
                    position,
                    self.windows,
                    self._changed,
                    self._by_end,
                    self._ends,
                    self._newest,
                    self._views_changed,
                    self._open_per_key,
                    self.latest,
                    self._latest_changed,
                    self._stops,
                    self._admitted,
                )
            finally:  # the records applied count also when one failed
                self.next_offset, self.max_t, self.watermark = position[:3]
            if self.watermark < self._deadline:
                return at
            # stopped right after the record that took the watermark to an absence
            # deadline: judge there, then go on (the new deadline lies beyond the watermark)
            self._watch(())
            if at >= len(records):
                return at
            begin = at

    def _admit_tags(self, tags: dict[str, str], limit: int) -> None:
        """Raise Rejected if ``tags`` would put more than MAX_TAG_KEYS keys, or more than
        ``limit`` values of a key, in use; a value no longer in use is forgotten first."""
        registry = self.tag_values
        new_keys = [key for key in tags if key not in registry]
        if new_keys and len(registry) + len(new_keys) > MAX_TAG_KEYS:
            self._forget_stale_tags(list(registry))
            new_keys = [key for key in tags if key not in registry]
            if len(registry) + len(new_keys) > MAX_TAG_KEYS:
                raise Rejected(
                    "too_many_tag_values",
                    f"tag key {new_keys[0]!r} would be one more than the {MAX_TAG_KEYS} tag "
                    "keys in use in this partition (each makes new InfluxDB series)",
                )
        for key, value in tags.items():
            values = registry.get(key)
            if values is None or value in values or len(values) < limit:
                continue
            self._forget_stale_tags([key])
            if key in registry and len(registry[key]) >= limit:
                shown = value if len(value) <= 80 else value[:80] + "..."
                raise Rejected(
                    "too_many_tag_values",
                    f"tag {key!r} has {limit} values in use in this partition "
                    f"(PULSE_MAX_TAG_VALUES); {shown!r} would be one more (each makes new "
                    "InfluxDB series; a value is in use until the windows of its latest "
                    "reading have closed)",
                )

    def _note_tags(self, tags: dict[str, str], t: int) -> None:
        """The values of ``tags`` are in use until at least ``t`` + the longest window."""
        registry = self.tag_values
        for key, value in tags.items():
            values = registry.get(key)
            if values is None:
                values = registry[key] = {}
            seen = values.get(value)
            if seen is None or t > seen:
                values[value] = t
                self._tags_changed.add((key, value))
                self._tags_removed.discard((key, value))

    def _forget_stale_tags(self, keys: list[str]) -> None:
        """Forget the values of ``keys`` no longer in use (the watermark has passed their
        latest event time by the longest window), and the keys left with none."""
        stale_before = self.watermark - self._tag_horizon
        registry = self.tag_values
        for key in keys:
            values = registry[key]
            for value in [v for v, t in values.items() if t <= stale_before]:
                del values[value]
                self._tags_changed.discard((key, value))
                self._tags_removed.add((key, value))
            if not values:
                del registry[key]

    def skip(self, offset: int) -> None:
        """Record that the record at ``offset`` was handled without applying it (rejected)."""
        if offset >= self.next_offset:
            self.next_offset = offset + 1

    def advance_idle(self, floor_us: int) -> None:
        """Raise the watermark to at least ``floor_us`` (idle close); never lowers it."""
        if floor_us > self.idle_floor:
            self.idle_floor = floor_us
            if floor_us > self.watermark:
                self.watermark = floor_us

    def _open(self, key: WindowKey, end: int) -> None:
        keys = self._by_end.get(end)
        if keys is None:
            self._by_end[end] = [key]
            heapq.heappush(self._ends, end)
        else:
            keys.append(key)
        device, metric, index, start = key
        series = (device, metric, index)
        if self._newest.get(series, NO_WATERMARK) < start:
            self._newest[series] = start
            self._views_changed.add(series)
        pair = (device, metric)
        self._open_per_key[pair] = self._open_per_key.get(pair, 0) + 1

    def close_ready(self, spread_us: int = 0) -> None:
        """Close the windows whose end the watermark W has reached; they wait in the drain.

        With ``spread_us`` > 0 the windows that end together close over that much event time
        instead of at once: of the n windows ending at E, about n * (W - E) / spread_us
        have closed at W, all of them once W >= E + spread_us::

            W       E ──────────── E + spread/2 ──────────── E + spread
            closed  0                  n / 2                     n

        Windows still close in order of their end (the earlier end's all before any of the
        later's), so each series' windows come out in order. A window W has passed takes no
        more readings whether or not it has closed, so closing it later emits the same
        aggregates: spreading only smooths the work of a burst (the epoch-aligned windows of
        every series end together) over several drains.
        """
        watermark = self.watermark
        expiry = self._sliding_expiry
        while expiry and expiry[0][0] <= watermark:
            _, series = heapq.heappop(expiry)
            sliding = self.sliding.get(series)
            size = self.specs[series[2]].size_us
            if sliding is not None and sliding[0] + 2 * size <= watermark:
                del self.sliding[series]
                self._sliding_changed.discard(series)
                self._sliding_removed.add(series)
                self._forget_latest_if_unused((series[0], series[1]))
        ends = self._ends
        budget = self._close_budget(spread_us) if spread_us > 0 else sys.maxsize
        while ends and ends[0] <= watermark and budget > 0:
            end = ends[0]
            keys = self._by_end[end]
            if len(keys) > budget:
                keys, self._by_end[end] = keys[:budget], keys[budget:]
                self._closed_of_first_end += budget
            else:
                heapq.heappop(ends)
                del self._by_end[end]
                self._closed_of_first_end = 0
            budget -= len(keys)
            # The pairs left with no open window forget their latest value if unused.
            emptied = close_windows(
                keys,
                end,
                self.windows,
                self._closed,
                self._changed,
                self._removed,
                self._newest,
                self._views_changed,
                self._open_per_key,
                self._labels,
                ClosedWindow,
            )
            for pair in emptied:
                self._forget_latest_if_unused(pair)

    def _close_budget(self, spread_us: int) -> int:
        """How many more windows may close now when each end's are spread over spread_us."""
        watermark = self.watermark
        first = self._ends[0] if self._ends else None
        allowed = -self._closed_of_first_end
        for end, keys in self._by_end.items():
            if end > watermark:
                continue
            n = len(keys) + (self._closed_of_first_end if end == first else 0)
            passed = watermark - end
            allowed += n if passed >= spread_us else -(-n * passed // spread_us)
        return allowed

    def _forget_latest_if_unused(self, pair: tuple[str, str]) -> None:
        # With no open window and no sliding state left, any reading applied later is newer
        # than this one (see the module doc), so the latest value need not be kept.
        if pair in self._open_per_key or pair not in self.latest:
            return
        device, metric = pair
        if any((device, metric, index) in self.sliding for index, _ in self._sliding_math):
            return
        forgotten = self.latest.pop(pair)
        if pair in self._latest_changed:
            self._latest_unsent[pair] = forgotten
        self._latest_changed.add(pair)

    # -- flushing ------------------------------------------------------------------------

    def _latest_changes(self) -> tuple[list[Latest], list[list[Any]], list[list[Any]]]:
        """The drain's latest values: for each pair changed since the last drain, its value
        (or, when it was forgotten since, the value it had) as an output, versioned by the
        partition's position (``next_offset``), and a changelog row, and a removed row for
        each forgotten pair."""
        outputs: list[Latest] = []
        rows: list[list[Any]] = []
        removed: list[list[Any]] = []
        offset = self.next_offset
        for pair in self._latest_changed:
            value = self.latest.get(pair)
            gone = value is None
            if gone:
                value = self._latest_unsent.get(pair)
            if value is not None:
                outputs.append(Latest(pair[0], pair[1], value[0], value[1], offset))
                rows.append([pair[0], pair[1], value[0], value[1]])
            if gone:
                removed.append(list(pair))
        return outputs, rows, removed

    def drain(
        self, snapshot: bool = False, spread_us: int = 0, switch_to: Registry | None = None
    ) -> Drained:
        """Take the closed windows, changed views, alert transitions and the changelog delta
        since the last drain.

        With ``snapshot=True`` the delta holds the whole state instead of the changes.
        ``spread_us`` spreads the closing of windows that end together (see
        :meth:`close_ready`). The windows closed are judged by the registry in use
        (tables.alerts.judge), in close order, then the absence rules at the watermark.

        ``switch_to``: the registry to judge by after this drain. Its version goes into this
        delta, so a replay from it judges by the same version; the caller must not let any
        output judged by it reach a sink before this delta is stored, and must not pass
        one unless the state's version is to change.
        """
        self.close_ready(spread_us)
        closed = self._closed
        in_use = self.registry
        if in_use is not None:
            # Both steps do nothing for a registry without rules of their kind and a table
            # without entries of that kind: skipped, a required registry costs its lookup.
            if in_use.absence_rules or self.alerts.absence or self._deadlines:
                self._watch()
            if in_use.rules or self.alerts.windows:
                transitions = self._transitions
                for window in closed:
                    transitions += judge(self.alerts, in_use, window)
        if snapshot:
            alert_series, alert_absence = all_rows(self.alerts)
        else:
            alert_series, alert_absence = changed_rows(self.alerts)
        alerts, self._transitions = self._transitions, []
        if switch_to is not None:
            self.use_registry(switch_to, self.registry_required)
        labels = self._labels
        windows = self.windows
        # A series' view changed when its newest window opened or closed (_views_changed)
        # or changed (its key in _changed with the start newest[series]).
        views = open_views(
            self._views_changed,
            self._changed,
            self._newest,
            windows,
            self._labels,
            self._sizes,
            closed,
            OpenView,
        )
        latest, latest_rows, latest_removed = self._latest_changes()
        sliding_views = [self._sliding_view(key) for key in self._sliding_changed]
        sliding_keys: Iterable[SeriesKey] = (
            self.sliding.keys() if snapshot else self._sliding_changed
        )
        sliding_rows = [[d, m, labels[i], *self.sliding[(d, m, i)]] for d, m, i in sliding_keys]
        sliding_removed = (
            [] if snapshot else [[d, m, labels[i]] for d, m, i in self._sliding_removed]
        )
        if snapshot:
            changed: Iterable[WindowKey] = windows.keys()
            removed: list[list[Any]] = []
            latest_rows = [[d, m, t, v] for (d, m), (t, v) in self.latest.items()]
            latest_removed = []
        else:
            changed = self._changed
            removed = delta_rows(self._removed, None, self._labels)  # [[d, m, label, s], ...]
        registry = self.tag_values
        if snapshot:
            tag_rows = [[k, v, t] for k, values in registry.items() for v, t in values.items()]
            tags_removed: list[list[Any]] = []
        else:
            tag_rows = [[k, v, registry[k][v]] for k, v in self._tags_changed]
            tags_removed = [[k, v] for k, v in self._tags_removed]
        delta = Delta(
            from_offset=self._drained_offset,
            to_offset=self.next_offset,
            max_t=self.max_t,
            idle_floor=self.idle_floor,
            windows=delta_rows(changed, windows, self._labels),
            removed=removed,
            latest=latest_rows,
            latest_removed=latest_removed,
            sliding=sliding_rows,
            sliding_removed=sliding_removed,
            snapshot=snapshot,
            tag_values=tag_rows,
            tag_values_removed=tags_removed,
            registry_version=self.registry_version,
            alert_series=alert_series,
            alert_absence=alert_absence,
        )
        drained = Drained(closed, views, latest, sliding_views, delta, alerts)
        self._closed = []
        self._changed = set()
        self._removed = set()
        self._latest_changed = set()
        self._latest_unsent = {}
        self._views_changed = set()
        self._sliding_changed = set()
        self._sliding_removed = set()
        self._tags_changed = set()
        self._tags_removed = set()
        self._drained_offset = self.next_offset
        return drained

    def live_views(self) -> tuple[list[OpenView], list[Latest], list[OpenView]]:
        """Every live output of the state as it is, changing nothing: the newest open window
        of each series, each kept latest value (versioned by ``next_offset``) and each
        sliding window, as a drain would give them had all changed. What a target that
        mirrors the state needs to be rewritten whole (agents/flush.py, MirrorLane)."""
        views = open_views(
            set(self._newest),
            set(),
            self._newest,
            self.windows,
            self._labels,
            self._sizes,
            [],
            OpenView,
        )
        offset = self.next_offset
        latest = [Latest(d, m, t, value, offset) for (d, m), (t, value) in self.latest.items()]
        return views, latest, [self._sliding_view(key) for key in self.sliding]

    def _sliding_view(self, key: SeriesKey) -> OpenView:
        """The view of a sliding window: ``(latest - size, latest]``, its entries' aggregates."""
        device, metric, index = key
        latest_t, entries = self.sliding[key]
        spec = self.specs[index]
        return OpenView(
            device, metric, spec.label, latest_t - spec.size_us, latest_t, _summarize(entries)
        )

    # -- recovery ------------------------------------------------------------------------

    def apply_delta(self, delta: Delta) -> bool:
        """Apply a changelog delta during recovery; False if it does not fit and was ignored.

        A delta covers ``[from, to)``. It fits a state at offset ``x`` when
        ``from <= x <= to``: the keys it names get their values at ``to``, and every other key
        did not change between ``from`` and ``to``, so the result is the state at ``to``.
        A snapshot fits whenever ``to >= x``. A delta with ``to < x`` is older than the state
        (written twice, or by a worker that lost the partition) and is ignored; one with
        ``from > x`` would leave a gap and is ignored too (it cannot happen without data loss).

        A delta (or snapshot) with an idle floor below the state's is ignored whatever its
        offsets: along one worker's deltas the floor only rises, so it was written late by a
        worker that lost the partition before an idle close its successor made (a zombie);
        applied at the successor's offset it would reopen the windows that close closed.
        """
        x = self.next_offset
        if delta.idle_floor < self.idle_floor:
            return False
        if delta.snapshot:
            if delta.to_offset < x:
                return False
            self._reset()
        elif not delta.from_offset <= x <= delta.to_offset:
            return False
        index_of = self._spec_index
        for device, metric, label, start in delta.removed:
            index = index_of.get(label)
            if index is not None:
                self.windows.pop((device, metric, index, start), None)
        for device, metric, label, start, state in delta.windows:
            index = index_of.get(label)
            if index is not None:  # a window spec no longer configured is dropped
                self.windows[(device, metric, index, start)] = Summary.decode(state)
        for device, metric, label in delta.sliding_removed:
            index = index_of.get(label)
            if index is not None:
                self.sliding.pop((device, metric, index), None)
        for device, metric, label, latest_t, entries in delta.sliding:
            index = index_of.get(label)
            if index is not None:
                self.sliding[(device, metric, index)] = [latest_t, entries]
        for device, metric in delta.latest_removed:
            self.latest.pop((device, metric), None)
        for device, metric, t, value in delta.latest:
            self.latest[(device, metric)] = (t, value)
        registry = self.tag_values
        for key, value in delta.tag_values_removed:
            values = registry.get(key)
            if values is not None:
                values.pop(value, None)
                if not values:
                    del registry[key]
        for key, value, t in delta.tag_values:
            registry.setdefault(key, {})[value] = t
        apply_rows(self.alerts, delta.alert_series, delta.alert_absence)
        self.registry_version = delta.registry_version
        self.next_offset = delta.to_offset
        self.max_t = delta.max_t
        self.idle_floor = delta.idle_floor
        return True

    def _reset(self) -> None:
        self.windows = {}
        self.latest = {}
        self.sliding = {}
        self.tag_values = {}
        self.alerts = AlertTable()

    def finish_recovery(self) -> None:
        """Rebuild the indexes derived from the recovered windows; call once after recovery,
        then :meth:`use_registry` with the registry of the recovered ``registry_version``."""
        self.watermark = max(self.max_t - self.grace_us, self.idle_floor, NO_WATERMARK)
        self._ends = []
        self._by_end = {}
        self._closed_of_first_end = 0
        self._newest = {}
        self._open_per_key = {}
        for key in sorted(self.windows, key=lambda k: k[3]):
            _, _, index, start = key
            self._open(key, start + self.specs[index].size_us)
        self._sliding_expiry = [
            (latest_t + 2 * self.specs[key[2]].size_us, key)
            for key, (latest_t, _) in self.sliding.items()
        ]
        heapq.heapify(self._sliding_expiry)
        # Keys whose windows were all dropped (spec removed) keep no latest value.
        sliding_pairs = {(d, m) for d, m, _ in self.sliding}
        for pair in [
            p for p in self.latest if p not in self._open_per_key and p not in sliding_pairs
        ]:
            del self.latest[pair]
        self._views_changed = set()
        self._drained_offset = self.next_offset

    @property
    def open_windows(self) -> int:
        return len(self.windows)

    def memory_estimate(self, sample: int = 32) -> int:
        """An estimate of the bytes this state holds: each table's own size plus its entry
        count times the mean size of up to ``sample`` of its entries (keys and values, every
        list, tuple, dict and number in them, each object once; not the device and metric
        strings, which every key shares with the parser's cache, nor the window keys the
        index by end shares with the windows). An estimate, not a measure: the entries
        sampled are the oldest, a number two windows share (a reading's value in both) counts
        in each, and memory the allocator keeps is not seen. Costs O(sample).
        """
        total = sys.getsizeof(self._ends) + 8 * len(self._ends)
        for table in (
            self.windows,
            self.latest,
            self.sliding,
            self._newest,
            self._open_per_key,
            self.tag_values,
        ):
            total += sys.getsizeof(table)
            if table:
                taken = list(itertools.islice(table.items(), sample))
                each = sum(_deep_size(entry, set()) for entry in taken) / len(taken)
                total += int(each * len(table))
        total += sys.getsizeof(self._by_end)
        for end, keys in itertools.islice(self._by_end.items(), sample):
            total += int(
                (sys.getsizeof(end) + sys.getsizeof(keys))
                * len(self._by_end)
                / min(sample, len(self._by_end))
            )
        return total

    @property
    def closing(self) -> bool:
        """Whether windows the watermark has passed wait to be closed by a drain."""
        return bool(self._ends) and self._ends[0] <= self.watermark


def _deep_size(value: Any, seen: set[int]) -> int:
    """Bytes of ``value`` and of the containers and numbers in it, each object once (by
    ``seen``); strings count as shared (see PartitionState.memory_estimate), and so do the
    interpreter's own single objects (None, booleans, the small ints from -5 to 256)."""
    if (
        value is None
        or isinstance(value, str | bool)
        or (type(value) is int and -5 <= value <= 256)
        or id(value) in seen
    ):
        return 0
    seen.add(id(value))
    size = sys.getsizeof(value)
    if isinstance(value, (list, tuple)):
        size += sum(_deep_size(item, seen) for item in value)
    elif isinstance(value, dict):
        size += sum(_deep_size(k, seen) + _deep_size(v, seen) for k, v in value.items())
    return size


def _summarize(entries: list[list[Any]]) -> SummaryState:
    """The aggregates of a sliding window's entries, added in processing (offset) order."""
    ordered = sorted(entries, key=lambda entry: entry[1])
    t, _, value, tags = ordered[0]
    state = Summary.initialize(t, value, tags)
    for t, _, value, tags in ordered[1:]:
        Summary.add(state, t, value, tags)
    return state
