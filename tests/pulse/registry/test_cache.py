"""Redis in front of the registry (pulse/registry/cache.py) on a real PostgreSQL and Redis:
NOTIFY reaches every listening cache, which then uses exactly the new version (from Redis
when another already put it there); with PostgreSQL stopped a cache keeps its snapshot and a
new one starts from Redis; once PostgreSQL is back a change made after is picked up."""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from models.alerts import Device
from models.registry import RegistrySnapshot
from pulse.local.stack import postgres_data_dir, start_postgres
from pulse.metrics import RegistryCollector
from pulse.redis_clients import redis_client
from pulse.registry import migrate
from pulse.registry.cache import RegistryCache
from pulse.registry.store import RegistryStore
from pulse.settings import Settings

pytestmark = pytest.mark.integration


def _settings(postgres_url: str, redis_url: str) -> Settings:
    return Settings.from_env(
        {
            "PULSE_POSTGRES_URL": postgres_url,
            "PULSE_REDIS_URL": redis_url,
            "PULSE_REDIS_PREFIX": f"reg{secrets.token_hex(3)}",
            "PULSE_REGISTRY_CACHE_TTL": "60",
        }
    )


async def _until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


def test_notify_reaches_every_listener_which_uses_exactly_the_new_version(
    registry_url: str, redis_url: str
) -> None:
    settings = _settings(registry_url, redis_url)

    async def run() -> None:
        redis = redis_client(settings)
        writer = RegistryStore(settings)
        await writer.open()
        first = RegistryCache(settings, RegistryStore(settings), redis)
        second = RegistryCache(settings, RegistryStore(settings), redis)
        try:
            await first.start()
            await _until(lambda: first.version == 0, "the first cache loads version 0")
            assert (first.hits, first.misses) == (0, 1)  # Redis was empty: read PostgreSQL
            await second.start()
            assert second.version == 0 and (second.hits, second.misses) == (1, 0)  # Redis's
            await _until(lambda: second.misses == 1, "the second cache loads on LISTEN")

            version = await writer.add_device(Device("dev-0", "plant-a", {"rack": "r1"}))
            assert version == 1
            await _until(lambda: first.version == 1 and second.version == 1, "both reload")
            expected = await writer.snapshot(1)
            assert first.snapshot == second.snapshot == expected
            assert expected.registry.devices == (Device("dev-0", "plant-a", {"rack": "r1"}),)
            # 3 loads before (1 from Redis), then one each for version 1 (1+ from PostgreSQL).
            loads = first.hits + first.misses + second.hits + second.misses
            assert loads == 5 and first.misses + second.misses >= 3
            held = await redis.hgetall(f"{settings.redis_prefix}:registry:snapshot")
            assert int(held[b"version"]) == 1
            assert RegistrySnapshot.from_document(orjson.loads(held[b"snapshot"])) == expected
            ttl = await redis.ttl(f"{settings.redis_prefix}:registry:snapshot")
            assert 0 < ttl <= 60

            registry = CollectorRegistry(auto_describe=False)
            registry.register(RegistryCollector(first))
            text = generate_latest(registry).decode()
            assert "pulse_registry_version 1.0" in text
            assert f"pulse_registry_cache_hits_total {float(first.hits)}" in text
            assert f"pulse_registry_cache_misses_total {float(first.misses)}" in text
            assert "pulse_registry_snapshot_age_seconds " in text
        finally:
            await first.stop()
            await second.stop()
            await writer.close()
            await redis.aclose()

    asyncio.run(run())


def test_postgres_away_keeps_the_snapshot_and_a_change_after_its_return_is_used(
    tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_postgres(tmp_path, stop_with_parent=True)
    try:
        settings = _settings(server.url, redis_url)
        migrate.upgrade(settings)
        caplog.set_level(logging.WARNING, logger="pulse.registry.cache")

        async def run() -> None:
            nonlocal server
            redis = redis_client(settings)
            writer = RegistryStore(settings)
            await writer.open()
            await writer.add_device(Device("dev-0", "plant-a"))
            cache = RegistryCache(settings, RegistryStore(settings), redis, reconnect_seconds=0.2)
            try:
                await cache.start()
                await _until(lambda: cache.version == 1, "the cache loads version 1")
                before = cache.snapshot
                assert cache.health.state == "ok"

                server.stop()
                await _until(lambda: cache.health.state == "unavailable", "PostgreSQL is away")
                await asyncio.sleep(1.0)  # several reconnection tries meanwhile
                assert cache.snapshot is before and cache.version == 1
                away = [r for r in caplog.records if "PostgreSQL unavailable" in r.getMessage()]
                assert len(away) == 1  # said once, not at each try
                assert cache.health.document()["reason"].startswith("PostgreSQL (postgresql://")

                # A process starting now gets the snapshot from Redis.
                late = RegistryCache(settings, RegistryStore(settings), redis)
                await late.start()
                try:
                    assert late.snapshot == before and (late.hits, late.misses) == (1, 0)
                finally:
                    await late.stop()

                server = start_postgres(tmp_path, port=server.port, stop_with_parent=True)
                await _until(lambda: cache.health.state == "ok", "PostgreSQL is back")
                version = await writer.add_device(Device("dev-1", None, {}, False))
                assert version == 2
                await _until(lambda: cache.version == 2, "the change after the return is used")
                assert cache.snapshot == await writer.snapshot(2)
                assert cache.snapshot is not None
                assert [d.id for d in cache.snapshot.registry.devices] == ["dev-0", "dev-1"]
                back = [r for r in caplog.records if "answers again" in r.getMessage()]
                assert len(back) == 1
            finally:
                await cache.stop()
                await writer.close()
                await redis.aclose()

        asyncio.run(run())
    finally:
        server.stop()
        shutil.rmtree(postgres_data_dir(server.work_dir), ignore_errors=True)
