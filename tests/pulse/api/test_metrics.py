"""The API's request metrics (pulse/api/_metrics.py): requests counted and timed by route
pattern, method and status on the registry ``/metrics`` serves, on a real server and Redis."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from models.outputs import Latest
from pulse.api._metrics import request_metrics
from pulse.sinks._base import FlushBatch
from tests.pulse.api.test_api import T0, serving, settings_for, write


def test_requests_are_counted_and_timed_by_route_and_status(
    redis_url: str, topic_prefix: str
) -> None:
    settings = settings_for(redis_url, topic_prefix)

    async def run() -> str:
        await write(settings, FlushBatch(latest=[Latest("dev-1", "temperature", T0, 21.5, 7)]))
        async with serving(settings) as (base, session):
            for path in (
                "/api/devices/dev-1",
                "/api/devices/dev-1",
                "/api/devices/dev-2",  # no live state: 404
                "/api/devices/bad:name",  # 400
                "/no/such/path",
            ):
                async with session.get(base + path) as response:
                    await response.read()
            async with session.get(f"{base}/metrics") as response:
                return await response.text()

    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(asyncio.run(run()))
        for sample in family.samples
    }
    counts = {
        dict(labels)["route"] + " " + dict(labels)["status"]: value
        for (name, labels), value in samples.items()
        if name == "pulse_api_requests_total"
    }
    # /metrics itself is counted once it has answered, after the text was made.
    assert counts == {
        "/api/devices/{device} 200": 2.0,
        "/api/devices/{device} 404": 1.0,
        "/api/devices/{device} 400": 1.0,
        "unmatched 404": 1.0,
    }
    timed = {
        dict(labels)["route"] + " " + dict(labels)["status"]: value
        for (name, labels), value in samples.items()
        if name == "pulse_api_request_seconds_count"
    }
    assert timed == counts
    for (name, labels), value in samples.items():
        if name == "pulse_api_request_seconds_sum":
            assert value > 0, labels
        if name == "pulse_api_request_seconds_bucket" and dict(labels)["le"] == "+Inf":
            assert value == counts[dict(labels)["route"] + " " + dict(labels)["status"]]
    assert {
        dict(labels)["method"] for (name, labels) in samples if name.startswith("pulse_api_")
    } == {"GET"}


def test_one_registry_gets_the_metrics_once() -> None:
    registry = CollectorRegistry()
    assert request_metrics(registry) is request_metrics(registry)
    assert request_metrics(CollectorRegistry()) is not request_metrics(registry)
