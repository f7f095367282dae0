"""Every measurement, field and tag Pulse writes to InfluxDB, declared once.

The writers take their names from here (pulse/sinks/influx.py for the closed windows and
the alert transitions, agents/stats.py for the pipeline's health) and pulse/dashboards.py
generates the InfluxDB template's queries from the same declarations, so a name changes in
one place. Tests hold the writers to them (tests/pulse/test_measurements.py) and check that
every name declared reaches the store from a real worker (tests/integration/
test_measurements.py).

Pure: names and line formatting, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from models.outputs import AGGREGATES
from models.reading import DEAD_LETTER_REASONS

FieldValue = float | bool | str
"""A field's value as :meth:`Measurement.line` takes it (an integer field takes an int)."""


@dataclass(frozen=True)
class Field:
    """A field of a measurement: ``integer`` fields are written with InfluxDB's ``i``
    suffix, the others as floats, unless ``kind`` says ``boolean`` (``true``/``false``) or
    ``string`` (quoted); a ``counter`` counts since its worker process started (a rate is its
    non-negative difference: a restart starts it again from 0); an ``optional`` field is
    left out of the points that have no value for it."""

    name: str
    integer: bool
    help: str
    counter: bool = False
    kind: Literal["number", "boolean", "string"] = "number"
    optional: bool = False


@dataclass(frozen=True)
class Tag:
    """A tag of a measurement; ``always``: every point carries it."""

    name: str
    help: str
    always: bool = True


@dataclass(frozen=True)
class Measurement:
    """A measurement, its tags and its fields. ``name`` is None for the windows'
    measurement, which is named after each reading's metric."""

    name: str | None
    help: str
    tags: tuple[Tag, ...]
    fields: tuple[Field, ...]
    precision: Literal["ms", "ns"] = "ms"
    """The unit of the points' timestamps in its lines."""

    def field(self, name: str) -> Field:
        """The field called ``name`` (KeyError if none)."""
        for field in self.fields:
            if field.name == name:
                return field
        raise KeyError(f"{self.name or 'windows'} has no field {name!r}")

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(field.name for field in self.fields)

    @property
    def tag_names(self) -> tuple[str, ...]:
        return tuple(tag.name for tag in self.tags)

    def line(self, tags: Mapping[str, str], fields: Mapping[str, FieldValue], time: int) -> str:
        """The line-protocol line of one point (tags sorted, fields in declared order, time in
        :attr:`precision`). Every field that is not ``optional`` must be given and every tag
        must be declared, with each ``always`` tag present: a writer cannot drift from its
        declaration. Tag values and string fields are escaped; names are the declared ones
        and need no escaping."""
        if self.name is None:
            raise ValueError("the windows' lines are pulse/sinks/influx.py's (line_protocol)")
        declared = set(self.tag_names)
        required = {tag.name for tag in self.tags if tag.always}
        if not required <= set(tags) <= declared:
            raise ValueError(f"{self.name}: tags {sorted(tags)}, declared {sorted(declared)}")
        needed = {f.name for f in self.fields if not f.optional}
        if not needed <= set(fields) <= set(self.field_names):
            raise ValueError(f"{self.name}: fields {sorted(fields)}, declared {self.field_names}")
        tag_text = "".join(
            f",{key}={escape_tag(value)}" for key, value in sorted(tags.items()) if value
        )
        field_text = ",".join(
            f"{f.name}={_field_text(f, fields[f.name])}" for f in self.fields if f.name in fields
        )
        return f"{self.name}{tag_text} {field_text} {time}"


def _field_text(field: Field, value: FieldValue) -> str:
    if field.kind == "string":
        if not isinstance(value, str):
            raise ValueError(f"field {field.name}: {value!r} is not text")
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if field.kind == "boolean":
        if not isinstance(value, bool):
            raise ValueError(f"field {field.name}: {value!r} is not true or false")
        return "true" if value else "false"
    if isinstance(value, str):
        raise ValueError(f"field {field.name}: {value!r} is not a number")
    return f"{int(value)}i" if field.integer else repr(float(value))


_TAG_ESCAPES = str.maketrans({"\\": "\\\\", ",": "\\,", "=": "\\=", " ": "\\ "})


def escape_tag(value: str) -> str:
    """A tag value as line protocol writes it."""
    return value.translate(_TAG_ESCAPES)


SITE = "site"
"""The reading tag the dashboards filter by (README.md's example of a reading's ``tags``).
Readings may carry any tags (the contract's rules); each reaches InfluxDB as a tag of its
windows, and ``site`` is the one the template knows by name."""

WINDOWS = Measurement(
    name=None,
    help="One point per closed window, at the window's start; the measurement is the "
    "reading's metric (e.g. temperature).",
    tags=(
        Tag("device", "The device id."),
        Tag("window", "The window's label, as in PULSE_WINDOWS (10s, 5m/1m)."),
        Tag(
            SITE,
            "A tag of the reading that gave the window's last value (any other reading tag "
            "is written the same way).",
            always=False,
        ),
    ),
    fields=tuple(
        Field(name, integer=name == "count", help=f"The window's {name}.") for name in AGGREGATES
    ),
)

WORKER = Tag("worker", "The worker process: its host name and process id.")

PULSE_STATS = Measurement(
    name="pulse_stats",
    help="The readings processor's progress, per partition a worker owns, every "
    "PULSE_STATS_INTERVAL seconds (the /metrics counts of pulse/metrics.py).",
    tags=(WORKER, Tag("partition", "The partition of the readings topic.")),
    fields=(
        Field("readings", True, "Records taken in (applied or dead-lettered).", counter=True),
        *(
            Field(
                f"dead_letters_{reason}", True, f"Records dead-lettered as {reason}.", counter=True
            )
            for reason in DEAD_LETTER_REASONS
        ),
        Field("windows_closed", True, "Windows closed and handed to the sinks.", counter=True),
        Field("lag", True, "Records of the readings topic not applied yet."),
        Field("open_windows", True, "Open windows in the state."),
    ),
)

PULSE_STATS_WORKER = Measurement(
    name="pulse_stats_worker",
    help="A worker's flushes, every PULSE_STATS_INTERVAL seconds.",
    tags=(WORKER,),
    fields=(
        Field("flushes", True, "Flushes completed (changelog stored).", counter=True),
        Field(
            "flush_seconds_sum", False, "Seconds of the flushes completed, summed.", counter=True
        ),
        Field("flush_seconds_count", True, "Flushes timed in flush_seconds_sum.", counter=True),
    ),
)

PULSE_STATS_SINK = Measurement(
    name="pulse_stats_sink",
    help="Each sink's failed tries in a worker, every PULSE_STATS_INTERVAL seconds: the "
    "sinks are shared by the worker's partitions, so their errors are not per partition.",
    tags=(
        WORKER,
        Tag(
            "sink",
            "The sink: kafka, redis-latest, redis, influx, history, alerts, influx-alerts, "
            "influx-stats.",
        ),
    ),
    fields=(
        Field("errors_backpressure", True, "Tries the target asked to wait or was away.", True),
        Field("errors_refused", True, "Tries the target refused the client.", True),
        Field("errors_dead_lettered", True, "Outputs refused for their content.", True),
    ),
)

ALERTS = Measurement(
    name="alerts",
    help="One point per alert transition (an alert starting to fire or resolving), at the "
    "transition's end (a window rule's: the window's end; an absence rule's: the deadline "
    "or the reading that ended it), in nanoseconds; written from the alerts topic "
    "(agents/alerts_writer.py), so a repeat is the same point again.",
    tags=(
        Tag("rule", "The alert rule's name."),
        Tag("device", "The device id."),
        Tag(SITE, "The device's site in the registry (none: no tag).", always=False),
        Tag("severity", "The rule's severity."),
        Tag("state", "firing or resolved."),
        Tag("metric", "The metric the rule judges."),
        Tag("window", "The window label a window rule judges (an absence rule: none).", False),
    ),
    fields=(
        Field(
            "value",
            False,
            "The judged aggregate's value of the window (an absence rule: no value).",
            optional=True,
        ),
        Field("threshold", False, "The rule's threshold (an absence rule: its seconds)."),
        Field("silenced", False, "Whether a silence covered the transition.", kind="boolean"),
        Field("id", False, "The transition's id (rule, device, window, start).", kind="string"),
    ),
    precision="ns",
)

MEASUREMENTS = (WINDOWS, PULSE_STATS, PULSE_STATS_WORKER, PULSE_STATS_SINK, ALERTS)
"""Everything Pulse writes to InfluxDB."""

STATS = (PULSE_STATS, PULSE_STATS_WORKER, PULSE_STATS_SINK)
"""The pipeline's health, written by every worker (agents/stats.py)."""
