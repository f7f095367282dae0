"""``pulse api`` (a real process on a real Redis) against its own OpenAPI document with
schemathesis: for generated requests to every documented operation, no 500, and every
answer's status, content type and body as the document says."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from models.alerts import AbsenceRule, AlertRule, Device, Selector
from models.outputs import DeadLetter
from pulse.local.stack import ServerProcess, create_database, free_port
from pulse.registry import migrate
from pulse.registry.store import RegistryStore
from pulse.search.documents import alert_document, dead_letter_document, window_document
from pulse.settings import Settings
from pulse.sinks.search import SearchSink
from tests.helpers.alerts import absence_alert, window_alert


async def _fill_registry(settings: Settings) -> None:
    store = RegistryStore(settings)
    await store.open()
    try:
        await store.add_device(Device("dev-1", "plant-a", {"rack": "r1"}))
        await store.add_rule(AlertRule("hot", "rpm", "10s", "mean", ">", 9.0, 8.0, 2))
        cold = AlertRule("cold", "rpm", "10s", "min", "<", 1.0, None, 1, Selector("dev-1"))
        await store.add_rule(cold)
        quiet = AbsenceRule("quiet", "rpm", 60_000_000, Selector(site="plant-a"))
        await store.add_absence_rule(quiet)
    finally:
        await store.close()


async def _fill_search(settings: Settings) -> None:
    """One document of each kind in the search indices, as the indexer writes them."""
    letter = DeadLetter("late", "window closed", "readings", 0, 7, b"dev-1", b"{}", 100, 1)
    transition = window_alert("hot", "dev-1", "rpm", "10s", 10, 1, "firing", 91.5)
    window = (
        b'{"device":"dev-1","metric":"rpm","window":"10s","start":1790000000,"end":1790000010,'
        b'"count":1,"sum":7,"min":7,"max":7,"mean":7,"first":7,"last":7,"p50":7,"p95":7,'
        b'"p99":7,"tags":{"site":"plant-a"}}'
    )
    documents = {
        "dead-letters": dead_letter_document(orjson.dumps(letter.document()), 0),
        "alerts": alert_document(transition.json()),
        "windows": window_document(window, {"10s"}),
    }
    for kind, document in documents.items():
        sink = SearchSink(settings, kind)
        await sink.start()
        try:
            await sink.write_records([document], [b"dev-1"])
        finally:
            await sink.stop()


@pytest.fixture(scope="module")
def api_url(
    redis_url: str,
    influx_url: str,
    search_url: str,
    postgres_server: ServerProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """``pulse api`` on a free port, over a Redis holding one device, a registry holding
    one device, two rules and an absence rule, and search indices holding a document of each
    kind."""
    import redis

    # Names of this setup's own: a test process may set this module fixture up more than
    # once (pytest-xdist's worksteal hands it the module's tests in more than one run), and
    # the test processes share OpenSearch.
    prefix = f"openapi{os.getpid()}x{secrets.token_hex(3)}"
    postgres_url = postgres_server.url.rpartition("/")[0] + f"/{prefix}"
    create_database(postgres_server, prefix)
    registry_settings = Settings.from_env({"PULSE_POSTGRES_URL": postgres_url})
    migrate.upgrade(registry_settings)
    asyncio.run(_fill_registry(registry_settings))

    client = redis.Redis.from_url(redis_url)
    client.hset(f"{prefix}:device:dev-1", mapping={"rpm": 7, "rpm:ts": 1790000000, "rpm:v": "1:1"})
    client.zadd(f"{prefix}:devices", {"dev-1": 1790000000})
    # Two active alerts (one of an absence rule, one silenced), as the alerts writer keeps them.
    for transition in (
        window_alert("hot", "dev-1", "rpm", "10s", 10, 1, "firing", 91.5),
        absence_alert("quiet", "dev-1", "rpm", "firing", 5, 30, silenced=True),
    ):
        field = f"{transition.rule}:dev-1:rpm:{transition.window or ''}"
        client.hset(f"{prefix}:alerts:active", field, transition.json())
    asyncio.run(_fill_search(Settings.from_env({
        "PULSE_SEARCH_URL": search_url, "PULSE_SEARCH_PREFIX": prefix,
        "PULSE_SEARCH_REPLICAS": "0", "PULSE_SEARCH_RETENTION_DAYS": "0",
        "PULSE_SEARCH_WINDOWS": "10s",
    })))  # fmt: skip
    port = free_port()
    log = tmp_path_factory.mktemp("api") / "api.log"
    env = {
        "PULSE_REDIS_URL": redis_url,
        "PULSE_REDIS_PREFIX": prefix,
        "PULSE_API_PORT": str(port),
        # History beyond what Redis holds from the session's VictoriaMetrics (a store that is
        # away would make it a 503, which schemathesis counts as a server error).
        "PULSE_INFLUX_URL": influx_url,
        "PULSE_HISTORY_STORE": "victoria",
        "PULSE_POSTGRES_URL": postgres_url,
        "PULSE_SEARCH_URL": search_url,
        "PULSE_SEARCH_PREFIX": prefix,
        "PATH": "/usr/bin:/bin",
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pulse", "api"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                # Ready, and the registry loaded (it loads in the background).
                with urllib.request.urlopen(f"{url}/api/rules", timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"pulse api did not start:\n{Path(log).read_text()}"
                    ) from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def _document() -> dict:
    from pulse.api import API_MODULES, _health, openapi

    return orjson.loads(
        orjson.dumps(openapi.document([_health.PATHS, *(m.PATHS for m in API_MODULES)]))
    )


# /api/live is an event stream that never ends, which schemathesis would read to its end:
# tests/pulse/api/test_live_api.py checks it.
schema = schemathesis.openapi.from_dict(_document()).exclude(path="/api/live")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case: schemathesis.Case, api_url: str) -> None:
    case.call_and_validate(base_url=api_url)


def test_the_served_document_is_the_one_tested(api_url: str) -> None:
    with urllib.request.urlopen(f"{api_url}/api/openapi.json") as response:
        assert orjson.loads(response.read()) == _document()


def test_pulse_api_shows_its_registry_cache_in_metrics_and_health(api_url: str) -> None:
    with urllib.request.urlopen(f"{api_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    # The registry filled by the fixture: four changes, loaded from PostgreSQL at least once.
    assert "pulse_registry_cache_version 4.0" in text
    misses = [
        line for line in text.splitlines() if line.startswith("pulse_registry_cache_misses_total ")
    ]
    assert len(misses) == 1 and float(misses[0].split()[1]) >= 1
    with urllib.request.urlopen(f"{api_url}/health/ready", timeout=5) as response:
        health = orjson.loads(response.read())
    assert health["dependencies"]["registry"]["state"] == "ok"
