"""The worker's app: the agents it discovers, and what building ``pulse.app:app`` does to the
process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import faust

from pulse.api import HttpServer
from pulse.app import create_app
from pulse.gc_tuning import SERVICE_THRESHOLDS
from pulse.settings import Settings

PULSE = Path(__file__).resolve().parents[2] / "pulse"

SHOW_GC = """
import gc, json
import pulse.app
pulse.app.app  # what `pulse worker` and `faust -A pulse.app:app worker --without-web` load
print(json.dumps([gc.get_threshold(), gc.get_freeze_count()]))
"""


def test_the_worker_app_tunes_the_cyclic_gc_for_a_large_state() -> None:
    # In a process of its own: the thresholds and the freeze are process-wide.
    shown = subprocess.run(
        [sys.executable, "-c", SHOW_GC], capture_output=True, text=True, check=True, timeout=60
    )
    after, frozen = json.loads(shown.stdout.splitlines()[-1])
    assert tuple(after) == SERVICE_THRESHOLDS == (20_000, 20, 100)
    assert frozen > 10_000  # the start-up objects (modules, Faust, aiokafka) are frozen


def test_the_app_discovers_the_agents_and_adds_the_web_views() -> None:
    app = create_app(Settings.from_env({}))
    processor = app.pulse_processor  # type: ignore[attr-defined]
    # The readings processor, the history, InfluxDB, alerts, alerts' history and stats
    # writers and the HTTP server start with the app, as its children (not @app.service);
    # PULSE_INFLUX_WRITER=off leaves the InfluxDB writers out (windows and alerts),
    # PULSE_ALERTS_WRITER=off the alerts writer to Redis, PULSE_ALERTS_HISTORY=off the alerts'
    # history writer to PostgreSQL, PULSE_STATS_INTERVAL=0 the stats writer. The notifier is
    # a process of its own (pulse notifier), never a child of a worker.
    assert sorted(type(child).__name__ for child in app._children) == [
        "AlertHistoryWriter",
        "AlertsInfluxWriter",
        "AlertsWriter",
        "HistoryWriter",
        "HttpServer",
        "InfluxWriter",
        "ReadingsProcessor",
        "StatsWriter",
    ]
    assert processor in app._children
    alone = create_app(Settings.from_env({"PULSE_INFLUX_WRITER": "off"}))
    assert sorted(type(child).__name__ for child in alone._children) == [
        "AlertHistoryWriter",
        "AlertsWriter",
        "HistoryWriter",
        "HttpServer",
        "ReadingsProcessor",
        "StatsWriter",
    ]
    no_alerts = create_app(Settings.from_env({"PULSE_ALERTS_WRITER": "off"}))
    assert sorted(type(child).__name__ for child in no_alerts._children) == [
        "AlertHistoryWriter",
        "AlertsInfluxWriter",
        "HistoryWriter",
        "HttpServer",
        "InfluxWriter",
        "ReadingsProcessor",
        "StatsWriter",
    ]
    quiet = create_app(Settings.from_env({"PULSE_STATS_INTERVAL": "0"}))
    assert sorted(type(child).__name__ for child in quiet._children) == [
        "AlertHistoryWriter",
        "AlertsInfluxWriter",
        "AlertsWriter",
        "HistoryWriter",
        "HttpServer",
        "InfluxWriter",
        "ReadingsProcessor",
    ]
    no_history = create_app(Settings.from_env({"PULSE_ALERTS_HISTORY": "off"}))
    assert "AlertHistoryWriter" not in {type(child).__name__ for child in no_history._children}
    assert list(app.agents) == ["dead-letter-monitor"]
    assert not app.conf.web_enabled  # Pulse's own aiohttp application serves HTTP

    def paths(built: faust.App) -> set[str]:
        (server,) = [c for c in built._children if isinstance(c, HttpServer)]
        return {r.resource.canonical for r in server.app.router.routes() if r.resource}

    health = {"/health", "/health/live", "/health/ready", "/metrics"}
    assert paths(app) == health
    serving = create_app(Settings.from_env({"PULSE_WORKER_SERVES_API": "true"}))
    assert health < paths(serving)
    assert {"/api/devices", "/api/devices/{device}", "/api/openapi.json"} < paths(serving)
    # Each app gets agents of its own.
    another = create_app(Settings.from_env({}))
    assert another.pulse_processor is not processor  # type: ignore[attr-defined]
