"""Redis in front of the registry (pulse/registry/cache.py) on a real PostgreSQL and Redis:
NOTIFY reaches every listening cache, which then uses exactly the new version (from Redis
when another already put it there) and tells its listeners; with PostgreSQL stopped a cache
keeps its snapshot and a new one starts from Redis; once PostgreSQL is back a change made
after is picked up. The registry as of each version (``at_version``) equals what was current
at that version, and an independent reconstruction, from each of its sources: the copy in
use, the in-process LRU, Redis, PostgreSQL; with none of them it is a clear error."""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from agents.flush import RegistrySource
from models.alerts import AbsenceRule, AlertRule, Device, Registry, Selector, Silence
from models.registry import RegistrySnapshot, registry_of
from pulse.local.stack import postgres_data_dir, start_postgres
from pulse.metrics import RegistryCollector
from pulse.redis_clients import redis_client
from pulse.registry import migrate
from pulse.registry.cache import RegistryCache, RegistryUnavailable
from pulse.registry.store import KEEP, RegistryNotFound, RegistryStore
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
            # Then PostgreSQL's, once listening (before the change below: else that load
            # could already read version 1, and the notification of 1 would load nothing).
            await asyncio.wait_for(second.listening.wait(), 15)
            assert (second.hits, second.misses) == (1, 1)

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
            assert "pulse_registry_cache_version 1.0" in text
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
                assert not cache.listening.is_set()
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
                assert cache.listening.is_set()
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


class _Model:
    """The registry as the test's changes make it, kept apart from Pulse's code: plain dicts,
    one Registry per version."""

    def __init__(self) -> None:
        self.devices: dict[str, Device] = {}
        self.rules: dict[str, AlertRule] = {}
        self.absence: dict[str, AbsenceRule] = {}
        self.silences: dict[int, Silence] = {}
        self.versions: dict[int, Registry] = {}

    def record(self, version: int) -> int:
        self.versions[version] = registry_of(
            version,
            self.devices.values(),
            self.rules.values(),
            self.absence.values(),
            self.silences.values(),
        )
        return version


async def _changes(
    writer: RegistryStore, model: _Model, after: Callable[[int], Awaitable[None]]
) -> None:
    """A sequence of changes of every kind; ``after(version)`` is awaited after each."""

    async def step(version: int) -> None:
        model.record(version)
        await after(version)

    device = Device("dev-0", "plant-a", {"rack": "r1"})
    model.devices[device.id] = device
    await step(await writer.add_device(device))
    model.devices["dev-1"] = Device("dev-1", "plant-b")
    await step(await writer.add_device(model.devices["dev-1"]))
    rule = AlertRule(
        "hot", "temperature", "10s", "p95", ">", 30.5, 28.25, 2, Selector(site="plant-a")
    )
    model.rules[rule.name] = rule
    await step(await writer.add_rule(rule))
    model.devices["dev-0"] = Device("dev-0", "plant-a", {"rack": "r9"}, False)
    await step(await writer.set_device("dev-0", site=KEEP, labels={"rack": "r9"}, enabled=False))
    quiet = AbsenceRule("quiet", "temperature", 90_000_001, Selector("dev-1"), "critical")
    model.absence[quiet.name] = quiet
    await step(await writer.add_absence_rule(quiet))
    silence_id, version = await writer.add_silence(Silence("hot", until_us=1_900_000_000_000_007))
    model.silences[silence_id] = Silence("hot", until_us=1_900_000_000_000_007, id=silence_id)
    await step(version)
    del model.rules["hot"]
    await step(await writer.remove_rule("hot"))
    cold = AlertRule("hot", "humidity", "1m", "min", "<=", 10.0, None, 1)
    model.rules[cold.name] = cold
    await step(await writer.add_rule(cold))
    del model.devices["dev-1"]
    await step(await writer.remove_device("dev-1"))


def test_each_version_reads_back_as_it_was_current(registry_url: str, redis_url: str) -> None:
    settings = _settings(registry_url, redis_url)

    async def run() -> None:
        redis = redis_client(settings)
        writer = RegistryStore(settings)
        await writer.open()
        cache = RegistryCache(settings, RegistryStore(settings), redis)
        source: RegistrySource = cache  # what the worker's flush pipeline takes (mypy checks)
        told: list[Registry] = []

        def failing(registry: Registry) -> None:
            raise RuntimeError("a listener's own failure")

        cache.add_listener(failing)  # logged; neither the others nor the cache stop
        cache.add_listener(told.append)
        model = _Model()
        current: dict[int, Registry] = {}
        try:
            assert cache.current() is None  # nothing loaded yet
            await cache.start()
            await _until(lambda: cache.version == 0, "the cache loads version 0")
            model.record(0)
            first = cache.current()
            assert first is not None
            current[0] = first

            async def wait_for(version: int) -> None:
                await _until(lambda: cache.version == version, f"the cache uses version {version}")
                found = cache.current()
                assert found is not None and found.version == version
                current[version] = found

            await _changes(writer, model, wait_for)
            versions = sorted(model.versions)
            assert versions == list(range(10))
            # Told once per version, in order, the very value current() returned.
            assert told == [current[v] for v in versions]
            assert all(a is b for a, b in zip(told, (current[v] for v in versions), strict=True))

            for version in versions:
                assert current[version] == model.versions[version], version
                # The copy in use or the LRU (every version loaded was remembered)...
                assert await source.at_version(version) == current[version], version
            assert source.current() is current[versions[-1]]

            # ...and a cold process: nothing in its LRU, the versions loaded by the first
            # one in Redis, the others read from PostgreSQL's history, then into Redis.
            in_redis = [v for v in versions if await redis.exists(_version_key(settings, v))]
            assert in_redis == versions  # each loaded from PostgreSQL by the first cache
            await redis.delete(*(_version_key(settings, v) for v in versions[::2]))
            cold = RegistryCache(settings, RegistryStore(settings), redis, history_size=3)
            await cold.start()
            try:
                for version in versions:
                    assert await cold.at_version(version) == current[version], version
                for version in versions:
                    held = await redis.get(_version_key(settings, version))
                    assert held is not None, version
                    back = RegistrySnapshot.from_document(orjson.loads(held))
                    assert back.registry == current[version]
                with pytest.raises(
                    RegistryNotFound, match=r"^version: no registry version 99 \(newest: 9\)$"
                ):
                    await cold.at_version(99)
            finally:
                await cold.stop()
        finally:
            await cache.stop()
            await writer.close()
            await redis.aclose()

    asyncio.run(run())


def _version_key(settings: Settings, version: int) -> str:
    return f"{settings.redis_prefix}:registry:version:{version}"


def test_a_version_cached_nowhere_while_postgres_is_away_is_a_clear_error(
    tmp_path: Path, redis_url: str
) -> None:
    server = start_postgres(tmp_path, stop_with_parent=True)
    try:
        settings = _settings(server.url, redis_url)
        migrate.upgrade(settings)

        async def run() -> None:
            nonlocal server
            redis = redis_client(settings)
            writer = RegistryStore(settings)
            await writer.open()
            model = _Model()
            model.record(0)

            async def nothing(version: int) -> None:
                pass

            await _changes(writer, model, nothing)
            newest = max(model.versions)
            cache = RegistryCache(
                settings, RegistryStore(settings), redis, reconnect_seconds=0.2, history_size=2
            )
            try:
                await cache.start()
                await _until(lambda: cache.version == newest, "the cache loads the newest")
                # Read from PostgreSQL: into the LRU (two versions) and into Redis.
                for version in (2, 3, 4):
                    assert await cache.at_version(version) == model.versions[version]
                server.stop()
                await _until(lambda: cache.health.state == "unavailable", "PostgreSQL is away")

                # The copy in use and the LRU's versions need neither PostgreSQL nor Redis.
                await redis.delete(*(_version_key(settings, v) for v in (3, 4)))
                for version in (newest, 3, 4):
                    assert await cache.at_version(version) == model.versions[version]
                # Version 2 left the LRU; Redis still has it.
                assert await cache.at_version(2) == model.versions[2]
                # Version 5 was never read, so nothing holds it but PostgreSQL: an error that
                # says which version, and why.
                with pytest.raises(
                    RegistryUnavailable,
                    match=r"^registry version 5: not cached \(in process or Redis\), and cannot "
                    r"be read: PostgreSQL \(postgresql://",
                ) as away:
                    await cache.at_version(5)
                assert away.value.version == 5
                # Another process: Redis's versions only.
                late = RegistryCache(settings, RegistryStore(settings), redis)
                await late.start()
                try:
                    assert late.current() == model.versions[newest]
                    assert await late.at_version(2) == model.versions[2]
                    with pytest.raises(
                        RegistryUnavailable, match=r"^registry version 3: not cached"
                    ):
                        await late.at_version(3)
                finally:
                    await late.stop()

                server = start_postgres(tmp_path, port=server.port, stop_with_parent=True)
                await _until(lambda: cache.health.state == "ok", "PostgreSQL is back")
                assert await cache.at_version(5) == model.versions[5]
                assert await cache.at_version(1) == model.versions[1]
            finally:
                await cache.stop()
                await writer.close()
                await redis.aclose()

        asyncio.run(run())
    finally:
        server.stop()
        shutil.rmtree(postgres_data_dir(server.work_dir), ignore_errors=True)
