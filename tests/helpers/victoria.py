"""Reading points back from VictoriaMetrics, the InfluxDB stand-in (see shared notes).

It names a series ``<measurement>_<field>`` with the tags as labels, keeps values as float64
rounded to 12 significant digits, and shows a new series only once its in-memory buffers are
flushed, up to ~10 s after the write: :func:`export` first asks for that flush
(``/internal/force_flush``, VictoriaMetrics' endpoint for tests), which brings it to about a
second. Callers still poll.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any


def _get(url: str, headers: Mapping[str, str] | None) -> bytes:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    with urllib.request.urlopen(request, timeout=10) as response:
        return bytes(response.read())


def force_flush(influx_url: str, headers: Mapping[str, str] | None = None) -> None:
    """Make what VictoriaMetrics has accepted searchable now rather than within ~10 s
    (``headers``: its credentials, where it asks for them)."""
    _get(f"{influx_url}/internal/force_flush", headers)


def export(
    influx_url: str, match: str, headers: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Every series that ``match`` selects, with all its samples, after a flush."""
    force_flush(influx_url, headers)
    query = urllib.parse.urlencode({"match[]": match, "start": "0", "nocache": "1"})
    body = _get(f"{influx_url}/api/v1/export?{query}", headers)
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def points(influx_url: str, match: str) -> dict[tuple[tuple[str, str], ...], dict[int, float]]:
    """``{sorted labels incl. __name__: {timestamp_ms: value}}`` (repeats of a point must agree)."""
    out: dict[tuple[tuple[str, str], ...], dict[int, float]] = {}
    for series in export(influx_url, match):
        labels = tuple(sorted(series["metric"].items()))
        values = out.setdefault(labels, {})
        for ts, value in zip(series["timestamps"], series["values"], strict=True):
            assert values.get(ts, value) == value, f"{labels} at {ts}: {values[ts]} != {value}"
            values[ts] = value
    return out


def wait_for_points(
    influx_url: str, match: str, expected: int, timeout: float = 30.0
) -> dict[tuple[tuple[str, str], ...], dict[int, float]]:
    """Poll until ``match`` holds ``expected`` distinct points (or fail with what it holds)."""
    deadline = time.monotonic() + timeout
    found: dict[tuple[tuple[str, str], ...], dict[int, float]] = {}
    while time.monotonic() < deadline:
        found = points(influx_url, match)
        if sum(len(v) for v in found.values()) >= expected:
            return found
        time.sleep(0.5)
    count = sum(len(v) for v in found.values())
    raise AssertionError(f"{match}: {count} points after {timeout}s, expected {expected}")
