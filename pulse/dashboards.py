"""The InfluxDB 2 template of Pulse's dashboards, generated from pulse/measurements.py.

``python -m pulse.dashboards`` writes ``dashboards/pulse.json`` (``--check``: exit 1 if the
file differs from what it would write; a test does the same). The template holds InfluxDB 2
``Variable`` and ``Dashboard`` resources (``influx apply -f dashboards/pulse.json``; the
compose stack applies it on InfluxDB's first start). Every measurement, field and tag name
in it comes from the declarations, so a renamed field changes the queries with it.

No Flux engine runs on the machines that build Pulse (VictoriaMetrics stands in for
InfluxDB and answers no Flux), so the queries are not executed by any test: they are kept
to these few shapes, each built by one function here, and a test checks that every name a
query uses is declared:

* ``series``: one or more fields of the windows of the chosen metric, window, device and
  site over time, ``aggregateWindow`` to the display's resolution.
* ``top``: the latest ``mean`` of each device in the chosen metric, window and site,
  ``top(n: 10)``.
* ``rate``: counters of the health measurements as a per-second rate per series
  (``derivative(nonNegative: true)``: a worker's restart starts its counters again),
  then summed per group (worker, reason, sink) at each display interval.
* ``gauge``: a gauge of the health measurements, its last value per series at each display
  interval, summed per group.
* ``ratio``: the increase of one counter over another's per worker (the mean flush
  latency: seconds summed over flushes counted).
* ``alerts``: the alert transitions of the time range in the chosen site, newest first,
  one row each (its value, threshold and whether it was silenced, pivoted from the
  ``alerts`` measurement's fields).
* ``count``: the alert transitions of one state (firing or resolved) per display
  interval, per severity.

The alerts are the worker's rules' transitions (pulse/measurements.py, ``ALERTS``), not
InfluxDB checks: the template defines no InfluxDB alerts of its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pulse.measurements import (
    ALERTS,
    PULSE_STATS,
    PULSE_STATS_SINK,
    PULSE_STATS_WORKER,
    SITE,
    STATS,
    WINDOWS,
    Measurement,
)
from pulse.settings import VARIABLES

API_VERSION = "influxdata.com/v2alpha1"
TEMPLATE = Path("dashboards") / "pulse.json"
"""Where the template is kept, from the repository's root."""
DEFAULT_BUCKET = next(var.default for var in VARIABLES if var.name == "PULSE_INFLUX_BUCKET")
"""The bucket the queries read: the one a worker writes to by default."""
ALL = "*"
"""The site variable's value that selects every site (and readings without one)."""
TOP_DEVICES = 10
DEVICE, WINDOW = (tag.name for tag in WINDOWS.tags if tag.always)
"""The windows' own tags (pulse/measurements.py)."""
COLORS = ("#31C0F6", "#A500A5", "#FF7E27", "#7A65F2", "#4ED8A0", "#FFB94A")


def _fields(names: tuple[str, ...] | list[str]) -> str:
    return " or ".join(f'r._field == "{name}"' for name in names)


def _head(bucket: str) -> str:
    return f'from(bucket: "{bucket}")\n  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)'


def _windows_filter(bucket: str) -> str:
    return (
        f"{_head(bucket)}\n"
        f"  |> filter(fn: (r) => r._measurement == v.metric and r.{WINDOW} == v.window)\n"
        f'  |> filter(fn: (r) => v.site == "{ALL}" or r.{SITE} == v.site)'
    )


def series(bucket: str, fields: tuple[str, ...], fn: str) -> str:
    """Shape ``series``: ``fields`` of the chosen device's windows, ``fn`` per interval."""
    for name in fields:
        WINDOWS.field(name)
    return (
        f"{_windows_filter(bucket)}\n"
        f"  |> filter(fn: (r) => r.{DEVICE} == v.device and ({_fields(fields)}))\n"
        '  |> group(columns: ["_field"])\n'
        f"  |> aggregateWindow(every: v.windowPeriod, fn: {fn}, createEmpty: false)"
    )


def top(bucket: str, field: str = "mean") -> str:
    """Shape ``top``: each device's latest ``field``, the highest :data:`TOP_DEVICES`."""
    WINDOWS.field(field)
    return (
        f"{_windows_filter(bucket)}\n"
        f'  |> filter(fn: (r) => r._field == "{field}")\n'
        f'  |> group(columns: ["{DEVICE}"])\n'
        '  |> sort(columns: ["_time"])\n'
        "  |> last()\n"
        "  |> group()\n"
        f'  |> top(n: {TOP_DEVICES}, columns: ["_value"])\n'
        f'  |> keep(columns: ["{DEVICE}", "_time", "_value"])'
    )


def _stats(bucket: str, measurement: Measurement, fields: list[str], by: str) -> str:
    assert measurement in STATS and (by in measurement.tag_names or by == "_field")
    for name in fields:
        measurement.field(name)
    return (
        f"{_head(bucket)}\n"
        f'  |> filter(fn: (r) => r._measurement == "{measurement.name}" '
        f"and ({_fields(fields)}))"
    )


def rate(bucket: str, measurement: Measurement, fields: list[str], by: str) -> str:
    """Shape ``rate``: counters ``fields`` per second, summed per ``by``."""
    assert all(measurement.field(name).counter for name in fields)
    return (
        f"{_stats(bucket, measurement, fields, by)}\n"
        "  |> derivative(unit: 1s, nonNegative: true)\n"
        "  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)\n"
        f'  |> group(columns: ["{by}"])\n'
        "  |> aggregateWindow(every: v.windowPeriod, fn: sum, createEmpty: false)"
    )


def gauge(bucket: str, measurement: Measurement, field: str, by: str) -> str:
    """Shape ``gauge``: gauge ``field``'s last value per series, summed per ``by``."""
    assert not measurement.field(field).counter
    return (
        f"{_stats(bucket, measurement, [field], by)}\n"
        "  |> aggregateWindow(every: v.windowPeriod, fn: last, createEmpty: false)\n"
        f'  |> group(columns: ["{by}"])\n'
        "  |> aggregateWindow(every: v.windowPeriod, fn: sum, createEmpty: false)"
    )


def ratio(bucket: str, measurement: Measurement, over: str, under: str, by: str) -> str:
    """Shape ``ratio``: the increase of counter ``over`` divided by ``under``'s, per ``by``."""
    assert measurement.field(over).counter and measurement.field(under).counter
    cast = "float(v: r.{})".format
    return (
        f"{_stats(bucket, measurement, [over, under], by)}\n"
        "  |> difference(nonNegative: true)\n"
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
        f"  |> filter(fn: (r) => r.{under} > 0)\n"
        f"  |> map(fn: (r) => ({{r with _value: {cast(over)} / {cast(under)}}}))\n"
        f'  |> keep(columns: ["_start", "_stop", "_time", "_value", "{by}"])\n'
        "  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)"
    )


def _alerts_filter(bucket: str, fields: list[str], state: str | None = None) -> str:
    for name in fields:
        ALERTS.field(name)
    only = "" if state is None else f' and r.state == "{state}"'
    return (
        f"{_head(bucket)}\n"
        f'  |> filter(fn: (r) => r._measurement == "{ALERTS.name}" and ({_fields(fields)})'
        f"{only})\n"
        f'  |> filter(fn: (r) => v.site == "{ALL}" or r.{SITE} == v.site)'
    )


ALERT_COLUMNS = ("rule", "device", SITE, "severity", "state", "metric", "window")
"""The tags of an alert transition the table shows, in its order."""


def alerts(bucket: str) -> str:
    """Shape ``alerts``: each transition of the time range, newest first."""
    fields = ["value", "threshold", "silenced"]
    columns = ", ".join(f'"{name}"' for name in ("_time", *ALERT_COLUMNS, *fields))
    assert set(ALERT_COLUMNS) <= set(ALERTS.tag_names)
    return (
        f"{_alerts_filter(bucket, fields)}\n"
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
        "  |> group()\n"
        '  |> sort(columns: ["_time"], desc: true)\n'
        f"  |> keep(columns: [{columns}])"
    )


def count(bucket: str, state: str, by: str) -> str:
    """Shape ``count``: the transitions to ``state`` per display interval, per ``by``."""
    assert state in ("firing", "resolved") and by in ALERTS.tag_names
    return (
        f"{_alerts_filter(bucket, ['threshold'], state)}\n"
        f'  |> group(columns: ["{by}"])\n'
        "  |> aggregateWindow(every: v.windowPeriod, fn: count, createEmpty: false)"
    )


def _variable(name: str, description: str, query: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Variable",
        "metadata": {"name": f"pulse-{name}"},
        "spec": {
            "name": name,
            "description": description,
            "type": "query",
            "language": "flux",
            "query": query,
        },
    }


def variables(bucket: str) -> list[dict[str, Any]]:
    """The dashboards' variables: ``metric``, ``window``, ``device``, ``site``."""
    health = " and ".join(f'r._value != "{m.name}"' for m in (*STATS, ALERTS))
    schema = 'import "influxdata/influxdb/schema"\n\n'
    return [
        _variable(
            "metric",
            "A metric: the measurements of the windows (Pulse's health and alerts left out).",
            f'{schema}schema.measurements(bucket: "{bucket}")\n  |> filter(fn: (r) => {health})',
        ),
        _variable(
            "window",
            "A window, as PULSE_WINDOWS labels it.",
            f'{schema}schema.tagValues(bucket: "{bucket}", tag: "{WINDOW}")',
        ),
        _variable(
            "device",
            "A device that has windows of the chosen metric.",
            f"{schema}schema.measurementTagValues(\n"
            f'  bucket: "{bucket}", measurement: v.metric, tag: "{DEVICE}"\n)',
        ),
        _variable(
            "site",
            f"A site (the readings' {SITE} tag), or {ALL} for all and readings without one.",
            'import "array"\n'
            f"{schema}"
            f'all = array.from(rows: [{{_value: "{ALL}"}}])\n'
            f'sites = schema.tagValues(bucket: "{bucket}", tag: "{SITE}")\n\n'
            "union(tables: [all, sites])",
        ),
    ]


def _xy(name: str, query: str | list[str], note: str, unit: str = "") -> dict[str, Any]:
    queries = [query] if isinstance(query, str) else query
    return {
        "kind": "Xy",
        "name": name,
        "note": note,
        "noteOnEmpty": True,
        "geom": "line",
        "position": "overlaid",
        "xCol": "_time",
        "yCol": "_value",
        "queries": [{"query": text} for text in queries],
        "axes": [
            {"name": "x", "base": "10", "scale": "linear"},
            {"name": "y", "base": "10", "scale": "linear", "suffix": unit},
        ],
        "colors": [
            {"name": f"c{i}", "type": "scale", "hex": hex_} for i, hex_ in enumerate(COLORS)
        ],
    }


def _table(name: str, query: str, note: str, sort_by: str = "_value") -> dict[str, Any]:
    return {
        "kind": "Table",
        "name": name,
        "note": note,
        "noteOnEmpty": True,
        "queries": [{"query": query}],
        "tableOptions": {"sortBy": sort_by, "wrapping": "truncate", "fixFirstColumn": True},
        "colors": [{"name": "base", "type": "text", "hex": "#FFFFFF"}],
    }


def _dashboard(name: str, title: str, description: str, charts: list[Any]) -> dict[str, Any]:
    width, height = 6, 4
    for i, chart in enumerate(charts):
        chart.update(xPos=(i % 2) * width, yPos=(i // 2) * height, width=width, height=height)
    return {
        "apiVersion": API_VERSION,
        "kind": "Dashboard",
        "metadata": {"name": f"pulse-{name}"},
        "spec": {"name": title, "description": description, "charts": charts},
    }


def dashboards(bucket: str) -> list[dict[str, Any]]:
    """One dashboard per concern: the windows of a metric, the top devices, the pipeline,
    the alerts."""
    stats, worker, sink = PULSE_STATS, PULSE_STATS_WORKER, PULSE_STATS_SINK
    reasons = [name for name in stats.field_names if name.startswith("dead_letters_")]
    errors = [name for name in sink.field_names if name.startswith("errors_")]
    return [
        _dashboard(
            "windows",
            "Pulse: windows",
            "A metric's closed windows for one device (variables metric, window, device, site).",
            [
                _xy("Mean", series(bucket, ("mean",), "mean"), "Each window's mean."),
                _xy(
                    "Min and max",
                    [series(bucket, ("min",), "min"), series(bucket, ("max",), "max")],
                    "Each window's lowest and highest reading (per display interval, the "
                    "lowest min and the highest max).",
                ),
                _xy(
                    "p95",
                    series(bucket, ("p95",), "max"),
                    "Each window's 95th percentile (1 % relative accuracy; the highest per "
                    "interval).",
                ),
                _xy(
                    "Readings per window",
                    series(bucket, ("count",), "mean"),
                    "Each window's count of readings.",
                ),
            ],
        ),
        _dashboard(
            "top",
            "Pulse: top devices",
            "The devices with the highest mean in their latest window of the time range.",
            [
                _table(
                    f"Top {TOP_DEVICES} by mean",
                    top(bucket),
                    "Each device's latest closed window of the chosen metric and window.",
                )
            ],
        ),
        _dashboard(
            "pipeline",
            "Pulse: pipeline",
            "Every worker's progress (pulse_stats* measurements, written every "
            "PULSE_STATS_INTERVAL seconds).",
            [
                _xy(
                    "Readings per second",
                    rate(bucket, stats, ["readings"], "worker"),
                    "Records of the readings topic taken in, per worker.",
                    "/s",
                ),
                _xy(
                    "Dead letters per second",
                    rate(bucket, stats, reasons, "_field"),
                    "Records dead-lettered, by reason (README.md, The contract).",
                    "/s",
                ),
                _xy(
                    "Windows closed per second",
                    rate(bucket, stats, ["windows_closed"], "worker"),
                    "Windows closed and handed to the sinks, per worker.",
                    "/s",
                ),
                _xy(
                    "Consumer lag",
                    gauge(bucket, stats, "lag", "worker"),
                    "Records of the readings topic not applied yet, per worker.",
                ),
                _xy(
                    "Flush latency",
                    ratio(bucket, worker, "flush_seconds_sum", "flush_seconds_count", "worker"),
                    "Mean seconds from a flush's drain to its changelog stored, per worker.",
                    "s",
                ),
                _xy(
                    "Flushes per second",
                    rate(bucket, worker, ["flushes"], "worker"),
                    "Flushes completed (outputs durable, changelog stored), per worker.",
                    "/s",
                ),
                _xy(
                    "Open windows",
                    gauge(bucket, stats, "open_windows", "worker"),
                    "Open windows in the state, per worker.",
                ),
                _xy(
                    "Sink errors per second",
                    rate(bucket, sink, errors, "sink"),
                    "Failed tries of each sink (backpressure, refused, dead-lettered).",
                    "/s",
                ),
            ],
        ),
        alerts_dashboard(bucket),
    ]


def alerts_dashboard(bucket: str) -> dict[str, Any]:
    """The alert transitions (variable site)."""
    return _dashboard(
        "alerts",
        "Pulse: alerts",
        "The alert rules' transitions (measurement alerts, from the alerts topic), in the "
        "chosen site.",
        [
            _table(
                "Alert transitions",
                alerts(bucket),
                "Each alert starting to fire or resolving, newest first: rule, device, site, "
                "severity, state, metric and window (none: an absence rule), the judged value, "
                "the threshold (an absence rule: its seconds), and whether a silence covered it.",
                sort_by="_time",
            ),
            _xy(
                "Alerts fired",
                count(bucket, "firing", "severity"),
                "Alerts that started to fire, per display interval, per severity.",
            ),
            _xy(
                "Alerts resolved",
                count(bucket, "resolved", "severity"),
                "Alerts that resolved, per display interval, per severity.",
            ),
        ],
    )


def template(bucket: str = DEFAULT_BUCKET) -> list[dict[str, Any]]:
    """The whole template: variables, then dashboards."""
    return [*variables(bucket), *dashboards(bucket)]


def render(bucket: str = DEFAULT_BUCKET) -> str:
    """The template's text as it is committed."""
    return json.dumps(template(bucket), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pulse.dashboards", description=__doc__)
    parser.add_argument("--output", type=Path, default=TEMPLATE, help="default: %(default)s")
    parser.add_argument("--bucket", default=DEFAULT_BUCKET, help="default: %(default)s")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the file differs, write nothing"
    )
    args = parser.parse_args(argv)
    text = render(args.bucket)
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is not what python -m pulse.dashboards writes", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
