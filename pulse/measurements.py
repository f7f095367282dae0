"""Every measurement, field and tag Pulse writes to InfluxDB, declared once.

The writers take their names from here (pulse/sinks/influx.py for the closed windows,
agents/stats.py for the pipeline's health) and pulse/dashboards.py generates the InfluxDB
template's queries from the same declarations, so a name changes in one place. Tests hold
the writers to them (tests/pulse/test_measurements.py) and check that every name declared
reaches the store from a real worker (tests/integration/test_measurements.py).

Pure: names and line formatting, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from models.outputs import AGGREGATES
from models.reading import DEAD_LETTER_REASONS


@dataclass(frozen=True)
class Field:
    """A field of a measurement: ``integer`` fields are written with InfluxDB's ``i``
    suffix, the others as floats; a ``counter`` counts since its worker process started (a
    rate is its non-negative difference: a restart starts it again from 0)."""

    name: str
    integer: bool
    help: str
    counter: bool = False


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

    def line(self, tags: Mapping[str, str], fields: Mapping[str, float], time_ms: int) -> str:
        """The line-protocol line of one point (tags sorted, fields in declared order,
        millisecond time). Every field must be given and every tag must be declared, with
        each ``always`` tag present: a writer cannot drift from its declaration. Tag values
        are escaped; names are the declared ones and need no escaping."""
        if self.name is None:
            raise ValueError("the windows' lines are pulse/sinks/influx.py's (line_protocol)")
        declared = set(self.tag_names)
        required = {tag.name for tag in self.tags if tag.always}
        if not required <= set(tags) <= declared:
            raise ValueError(f"{self.name}: tags {sorted(tags)}, declared {sorted(declared)}")
        if set(fields) != set(self.field_names):
            raise ValueError(f"{self.name}: fields {sorted(fields)} != {self.field_names}")
        tag_text = "".join(
            f",{key}={escape_tag(value)}" for key, value in sorted(tags.items()) if value
        )
        field_text = ",".join(
            f"{f.name}={int(value)}i" if f.integer else f"{f.name}={float(value)!r}"
            for f, value in ((f, fields[f.name]) for f in self.fields)
        )
        return f"{self.name}{tag_text} {field_text} {time_ms}"


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
    tags=(WORKER, Tag("sink", "The sink: kafka, redis-latest, redis, influx, influx-stats.")),
    fields=(
        Field("errors_backpressure", True, "Tries the target asked to wait or was away.", True),
        Field("errors_refused", True, "Tries the target refused the client.", True),
        Field("errors_dead_lettered", True, "Outputs refused for their content.", True),
    ),
)

MEASUREMENTS = (WINDOWS, PULSE_STATS, PULSE_STATS_WORKER, PULSE_STATS_SINK)
"""Everything Pulse writes to InfluxDB."""

STATS = (PULSE_STATS, PULSE_STATS_WORKER, PULSE_STATS_SINK)
"""The pipeline's health, written by every worker (agents/stats.py)."""
