"""dashboards/pulse.json: what pulse/dashboards.py generates, in InfluxDB 2's template format,
reading only names pulse/measurements.py declares.

No Flux engine runs here: the queries are checked for their names and shapes, not run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pulse import dashboards
from pulse.measurements import ALERTS, MEASUREMENTS, STATS, WINDOWS

ROOT = Path(__file__).resolve().parents[2]
BUILTINS = {"timeRangeStart", "timeRangeStop", "windowPeriod"}
"""The variables InfluxDB's dashboards define themselves."""
COLUMNS = {"_time", "_value", "_field", "_start", "_stop"}


@pytest.fixture(scope="module")
def template() -> list[dict[str, Any]]:
    data = json.loads((ROOT / dashboards.TEMPLATE).read_text())
    assert isinstance(data, list)
    return data


def queries(template: list[dict[str, Any]]) -> list[str]:
    found = [r["spec"]["query"] for r in template if r["kind"] == "Variable"]
    for resource in template:
        if resource["kind"] == "Dashboard":
            for chart in resource["spec"]["charts"]:
                found.extend(q["query"] for q in chart["queries"])
    return found


def test_the_committed_template_is_what_the_script_generates(tmp_path: Path) -> None:
    assert (ROOT / dashboards.TEMPLATE).read_text() == dashboards.render()
    check = [sys.executable, "-m", "pulse.dashboards", "--check"]
    assert subprocess.run(check, cwd=ROOT, check=False).returncode == 0
    # --check fails on a file that differs; the script writes the same text.
    other = tmp_path / "pulse.json"
    other.write_text("[]\n")
    assert subprocess.run([*check, "--output", str(other)], check=False).returncode == 1
    write = [sys.executable, "-m", "pulse.dashboards", "--output", str(other)]
    assert subprocess.run(write, check=False).returncode == 0
    assert other.read_text() == dashboards.render()


def test_resources_follow_the_template_format(template: list[dict[str, Any]]) -> None:
    # Variables and dashboards only: the alerts dashboard shows the rules' transitions; the
    # template defines no InfluxDB checks of its own.
    assert {(r["apiVersion"], r["kind"]) for r in template} == {
        ("influxdata.com/v2alpha1", "Variable"),
        ("influxdata.com/v2alpha1", "Dashboard"),
    }
    names = [r["metadata"]["name"] for r in template]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) for name in names)
    variables = {r["spec"]["name"] for r in template if r["kind"] == "Variable"}
    assert variables == {"metric", "window", "device", "site"}
    for resource in template:
        if resource["kind"] == "Variable":
            assert resource["spec"]["type"] == "query"
            assert resource["spec"]["language"] == "flux"
    titles = [r["spec"]["name"] for r in template if r["kind"] == "Dashboard"]
    assert titles == ["Pulse: windows", "Pulse: top devices", "Pulse: pipeline", "Pulse: alerts"]
    for resource in template:
        if resource["kind"] != "Dashboard":
            continue
        cells = set()
        for chart in resource["spec"]["charts"]:
            assert chart["width"] > 0 and chart["height"] > 0
            cell = (chart["xPos"], chart["yPos"])
            assert cell not in cells
            cells.add(cell)
            assert chart["queries"] and all(q["query"] for q in chart["queries"])
            assert all(re.fullmatch(r"#[0-9A-F]{6}", c["hex"]) for c in chart["colors"])
            if chart["kind"] == "Xy":  # what influx apply validates for an XY chart
                assert chart["geom"] == "line"
                assert {axis["name"] for axis in chart["axes"]} == {"x", "y"}
            else:
                assert chart["kind"] == "Table"
                assert chart["tableOptions"]["wrapping"] == "truncate"
    charts = {
        chart["name"] for r in template if r["kind"] == "Dashboard" for chart in r["spec"]["charts"]
    }
    assert {
        "Mean",
        "Min and max",
        "p95",
        "Top 10 by mean",
        "Readings per second",
        "Dead letters per second",
        "Windows closed per second",
        "Consumer lag",
        "Flush latency",
        "Alert transitions",
        "Alerts fired",
        "Alerts resolved",
    } <= charts


def test_queries_read_only_declared_names(template: list[dict[str, Any]]) -> None:
    measurements = {m.name: m for m in MEASUREMENTS if m.name is not None}
    tags = {tag for m in MEASUREMENTS for tag in m.tag_names}
    variables = {r["spec"]["name"] for r in template if r["kind"] == "Variable"}
    texts = queries(template)
    assert texts
    for text in texts:
        for bucket in re.findall(r'bucket: "([^"]*)"', text):
            assert bucket == dashboards.DEFAULT_BUCKET
        used = set(re.findall(r'r\._measurement == "([^"]+)"', text))
        declared = [measurements[name] for name in used]  # KeyError: not declared
        if "r._measurement == v.metric" in text:
            declared.append(WINDOWS)
        fields = set(re.findall(r'r\._field == "([^"]+)"', text))
        assert fields <= {f for m in declared for f in m.field_names}, text
        for column in re.findall(r"\br\.([A-Za-z_][A-Za-z0-9_]*)", text):
            if column in ("_measurement", "_field", "_value"):
                continue
            assert column in tags or column in {f for m in declared for f in m.field_names}, column
        fields_of = {f for m in declared for f in m.field_names}
        pivoted = "|> pivot(" in text  # the fields become columns of their own
        for group in re.findall(r"columns: \[([^\]]*)\]", text):
            for column in re.findall(r'"([^"]+)"', group):
                assert column in tags or column in COLUMNS or (pivoted and column in fields_of), (
                    column
                )
        for variable in re.findall(r"\bv\.([A-Za-z_]+)", text):
            assert variable in variables | BUILTINS, variable
    # Every health measurement and every declared field of each appears in some chart.
    charts = "\n".join(texts)
    for measurement in STATS:
        assert f'r._measurement == "{measurement.name}"' in charts
        for field in measurement.field_names:
            assert f'r._field == "{field}"' in charts, field
    for field in ("mean", "min", "max", "p95"):
        assert f'r._field == "{field}"' in charts
    # The alerts: every field but the id (a text, for the record) in some chart.
    assert f'r._measurement == "{ALERTS.name}"' in charts
    for field in ("value", "threshold", "silenced"):
        assert f'r._field == "{field}"' in charts, field


def test_queries_keep_to_the_documented_shapes(template: list[dict[str, Any]]) -> None:
    # Each chart query is one of the shapes the module builds: its pipeline of functions.
    shapes = {
        ("range", "filter", "filter", "filter", "group", "aggregateWindow"): "series",
        ("range", "filter", "filter", "filter", "group", "sort", "last", "group", "top", "keep"): (
            "top"
        ),
        ("range", "filter", "derivative", "aggregateWindow", "group", "aggregateWindow"): "rate",
        ("range", "filter", "aggregateWindow", "group", "aggregateWindow"): "gauge",
        (
            "range",
            "filter",
            "difference",
            "pivot",
            "filter",
            "map",
            "keep",
            "aggregateWindow",
        ): "ratio",
        ("range", "filter", "filter", "pivot", "group", "sort", "keep"): "alerts",
        ("range", "filter", "filter", "group", "aggregateWindow"): "count",
    }
    seen = set()
    for resource in template:
        if resource["kind"] != "Dashboard":
            continue
        for chart in resource["spec"]["charts"]:
            for query in chart["queries"]:
                steps = tuple(re.findall(r"\|> ([A-Za-z]+)\(", query["query"]))
                assert steps in shapes, (chart["name"], steps)
                seen.add(shapes[steps])
    assert seen == set(shapes.values())
    assert "Shape ``" not in dashboards.__doc__  # the shapes are listed in the module's doc
    for shape in shapes.values():
        assert f"* ``{shape}``" in (dashboards.__doc__ or "")
