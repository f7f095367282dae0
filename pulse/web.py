"""The worker's HTTP API and live page (Faust's web server, port ``PULSE_WEB_PORT``).

* ``GET /health``: readiness and per-partition progress of the readings processor, and the
  state of each sink (``ok``, ``waiting``, ``refused_by_target`` with the reason, since when).
* ``GET /metrics``: Prometheus metrics of the worker (pulse.metrics).
* ``GET /state/{device}``: the device's live state from Redis (see :mod:`pulse.live_state`).
* ``GET /top/{window}/{metric}``: devices with the highest mean in their last closed window.
* ``GET /``: a live page that polls the API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Protocol

import faust
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pulse.live_state import device_state, top_devices
from pulse.metrics import WorkerMetrics, worker_registry
from pulse.redis_clients import redis_client
from pulse.settings import Settings
from pulse.sinks._base import SinkHealth
from tables.partition_state import PartitionState


class ReadingsProgress(Protocol):
    """What ``/health`` reads of the readings processor (agents/readings.py provides it as
    ``app.pulse_processor``)."""

    @property
    def ready(self) -> asyncio.Event:
        """Set once the first assignment has been recovered."""

    @property
    def states(self) -> Mapping[int, PartitionState]:
        """The state of each assigned partition."""

    @property
    def flushes(self) -> int:
        """Flushes completed so far."""


LIVE_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Pulse</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#eee}</style>
</head><body><h1>Pulse</h1>
<p id="health">…</p>
<form onsubmit="device=this.d.value;refresh();return false">Device:
<input name="d" value="dev-0000"> <button>show</button></form>
<pre id="state"></pre>
<script>
let device = "dev-0000";
async function refresh() {
  const h = await (await fetch("/health")).json();
  document.getElementById("health").textContent =
    (h.ready ? "ready" : "starting") + " - partitions " + h.partitions.join(",") +
    " - open windows " + h.open_windows;
  const s = await (await fetch("/state/" + encodeURIComponent(device))).json();
  document.getElementById("state").textContent = JSON.stringify(s, null, 2);
}
refresh(); setInterval(refresh, 1000);
</script></body></html>
"""


def register(
    app: faust.App,
    settings: Settings,
    processor: ReadingsProgress,
    sinks: Sequence[SinkHealth] = (),
    worker_metrics: WorkerMetrics | None = None,
) -> None:
    """Add the API's views to ``app``; ``sinks``: the health of the sinks its agents run,
    read at each request (agents add theirs as they start); ``worker_metrics``: what its
    agents count (pulse.metrics)."""
    client = redis_client(settings)
    metrics = worker_registry(worker_metrics or WorkerMetrics(), sinks)

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json(
                {
                    "ready": processor.ready.is_set(),
                    "partitions": sorted(processor.states),
                    "open_windows": sum(s.open_windows for s in processor.states.values()),
                    "next_offsets": {p: s.next_offset for p, s in processor.states.items()},
                    "flushes": processor.flushes,
                    "sinks": {health.name: health.document() for health in sinks},
                }
            )

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            body = generate_latest(metrics)
            return self.bytes(body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/state/{device}")
    class DeviceState(View):
        async def get(self, request: Request, device: str) -> Response:
            return self.json(await device_state(client, settings, device))

    @app.page("/top/{window}/{metric}")
    class Top(View):
        async def get(self, request: Request, window: str, metric: str) -> Response:
            rows = await top_devices(client, settings, window, metric)
            return self.json([{"device": d, "mean": mean} for d, mean in rows])

    @app.page("/")
    class LivePage(View):
        async def get(self, request: Request) -> Response:
            return self.html(LIVE_PAGE)
