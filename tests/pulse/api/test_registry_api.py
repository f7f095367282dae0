"""``/api/registry/devices/{device}`` and ``/api/rules`` on a real registry (PostgreSQL) and
Redis: the answers of the newest version, a change seen once NOTIFY has reloaded the cache,
404 and 400 naming the parameter, 503 while no snapshot could be loaded, and the registry's
state in ``/health``."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import aiohttp
import pytest

from models.alerts import AbsenceRule, AlertRule, Device, Selector
from pulse.registry.store import RegistryStore
from pulse.settings import Settings
from tests.helpers.api import serving

pytestmark = pytest.mark.integration


def _settings(postgres_url: str, redis_url: str) -> Settings:
    return Settings.from_env(
        {
            "PULSE_POSTGRES_URL": postgres_url,
            "PULSE_REDIS_URL": redis_url,
            "PULSE_REDIS_PREFIX": f"regapi{secrets.token_hex(3)}",
        }
    )


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        return response.status, await response.json()


async def _until_version(session: aiohttp.ClientSession, base: str, version: int) -> None:
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        status, body = await _get(session, f"{base}/api/rules")
        if status == 200 and body["version"] == version:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"/api/rules never showed version {version}: {status} {body}")
        await asyncio.sleep(0.02)


def test_registry_answers_follow_the_changes(registry_url: str, redis_url: str) -> None:
    settings = _settings(registry_url, redis_url)

    async def run() -> None:
        store = RegistryStore(settings)
        await store.open()
        try:
            await store.add_device(Device("dev-0", "plant-a", {"rack": "r1"}))
            await store.add_rule(
                AlertRule("hot", "temperature", "1m", "max", "<", 2.0, 3.0, 2, Selector("dev-0"))
            )
            async with serving(settings, registry=True) as (base, session):
                await _until_version(session, base, 2)
                assert await _get(session, f"{base}/api/registry/devices/dev-0") == (
                    200,
                    {
                        "version": 2,
                        "device": {
                            "id": "dev-0", "site": "plant-a", "labels": {"rack": "r1"},
                            "enabled": True,
                        },
                    },
                )  # fmt: skip
                assert await _get(session, f"{base}/api/rules") == (
                    200,
                    {
                        "version": 2,
                        "rules": [
                            {
                                "name": "hot", "metric": "temperature", "window": "1m",
                                "aggregate": "max", "comparison": "<", "threshold": 2.0,
                                "clear_threshold": 3.0, "for_count": 2,
                                "selector": {"device": "dev-0", "site": None},
                                "severity": "warning", "enabled": True,
                            }
                        ],
                        "absence_rules": [],
                    },
                )  # fmt: skip
                await store.set_device("dev-0", enabled=False)
                await store.add_absence_rule(
                    AbsenceRule("quiet", "temperature", 60_000_000, Selector(site="plant-a"))
                )
                await _until_version(session, base, 4)
                status, body = await _get(session, f"{base}/api/registry/devices/dev-0")
                assert (status, body["version"], body["device"]["enabled"]) == (200, 4, False)
                status, body = await _get(session, f"{base}/api/rules")
                assert body["absence_rules"] == [
                    {
                        "name": "quiet", "metric": "temperature", "duration_us": 60_000_000,
                        "selector": {"device": None, "site": "plant-a"}, "severity": "warning",
                        "enabled": True,
                    }
                ]  # fmt: skip
                assert await _get(session, f"{base}/api/registry/devices/dev-9") == (
                    404,
                    {
                        "error": "device 'dev-9': not in the registry (version 4)",
                        "parameter": "device",
                    },
                )
                status, body = await _get(session, f"{base}/api/registry/devices/a:b")
                assert (status, body["parameter"]) == (400, "device")
                status, body = await _get(session, f"{base}/health/ready")
                assert body["dependencies"]["registry"]["state"] == "ok"
        finally:
            await store.close()

    asyncio.run(run())


def test_no_snapshot_is_a_503_and_health_says_why(redis_url: str) -> None:
    settings = _settings("postgresql://pulse@127.0.0.1:1/pulse", redis_url)

    async def run() -> None:
        async with serving(settings, registry=True) as (base, session):
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                _, health = await _get(session, f"{base}/health/ready")
                if health["dependencies"]["registry"]["state"] == "unavailable":
                    break
                assert asyncio.get_running_loop().time() < deadline, health
                await asyncio.sleep(0.05)
            assert health["dependencies"]["registry"]["reason"].startswith(
                "PostgreSQL (postgresql://pulse@127.0.0.1:1/pulse): "
            )
            assert await _get(session, f"{base}/api/rules") == (
                503,
                {
                    "error": "the registry is unavailable: no snapshot loaded yet (PostgreSQL "
                    "and Redis away)",
                    "parameter": None,
                },
            )

    asyncio.run(run())
