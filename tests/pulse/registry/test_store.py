"""The registry in a real PostgreSQL (pulse/registry/store.py): every version read back as of
itself equals an independent reconstruction from the list of changes; nothing is changed in
place; bad input and unknown entries are errors naming the field; alert history is
idempotent by id."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest

from models.registry import (
    AbsenceRule,
    AlertRule,
    Device,
    RegistryInputError,
    RegistrySnapshot,
    Silence,
    Webhook,
)
from pulse.registry import migrate
from pulse.registry.store import KEEP, RegistryNotFound, RegistryStore
from pulse.settings import Settings


def _settings(url: str) -> Settings:
    return Settings.from_env({"PULSE_POSTGRES_URL": url})


async def _with_store(url: str, body: Callable[[RegistryStore], Awaitable[Any]]) -> Any:
    store = RegistryStore(_settings(url))
    await store.open()
    try:
        return await body(store)
    finally:
        await store.close()


RULE = AlertRule("hot", "temperature", "10s", "mean", ">", 30.0, 28.0, 3, "site", "plant-a")
ABSENT = AbsenceRule("quiet", "temperature", 300.0, "all", None, "critical")


def test_every_version_reads_back_as_the_changes_made_it(registry_url: str) -> None:
    # The reconstruction: plain dicts, changed as each step says, copied at each version.
    model: dict[str, dict[Any, Any]] = {
        "devices": {}, "rules": {}, "absence": {}, "silences": {}, "webhooks": {}
    }  # fmt: skip
    expected: dict[int, RegistrySnapshot] = {}

    def record(version: int) -> None:
        expected[version] = RegistrySnapshot.of(
            version,
            model["devices"].values(),
            model["rules"].values(),
            model["absence"].values(),
            model["silences"].values(),
            model["webhooks"].values(),
        )

    async def run(store: RegistryStore) -> None:
        record(0)
        assert await store.snapshot() == expected[0]
        for i in range(3):
            device = Device(f"dev-{i}", "plant-a" if i < 2 else None, {"floor": str(i)})
            model["devices"][device.id] = device
            record(await store.add_device(device))
        version = await store.set_device("dev-1", site="plant-b", enabled=False)
        model["devices"]["dev-1"] = Device("dev-1", "plant-b", {"floor": "1"}, False)
        record(version)
        version = await store.set_device("dev-0", site=KEEP, labels={"floor": "9", "room": "x"})
        model["devices"]["dev-0"] = Device("dev-0", "plant-a", {"floor": "9", "room": "x"})
        record(version)
        model["rules"][RULE.name] = RULE
        record(await store.add_rule(RULE))
        model["absence"][ABSENT.name] = ABSENT
        record(await store.add_absence_rule(ABSENT))
        silence_id, version = await store.add_silence("hot", "site", "plant-a", 1_900_000_000.5)
        model["silences"][silence_id] = Silence(
            silence_id, "hot", "site", "plant-a", 1_900_000_000.5
        )
        record(version)
        hook_id, version = await store.add_webhook("http://127.0.0.1:9/hook", severity="critical")
        model["webhooks"][hook_id] = Webhook(hook_id, "http://127.0.0.1:9/hook", None, "critical")
        record(version)
        del model["devices"]["dev-2"]
        record(await store.remove_device("dev-2"))
        del model["rules"]["hot"]
        record(await store.remove_rule("hot"))
        # A name freed by a removal can be taken again, with other content.
        again = AlertRule("hot", "humidity", "1m", "p95", "<=", 10.0, 12.5, 1, "device", "dev-0")
        model["rules"]["hot"] = again
        record(await store.add_rule(again))
        del model["silences"][silence_id]
        record(await store.remove_silence(silence_id))
        device = Device("dev-2", None, {}, True)
        model["devices"]["dev-2"] = device
        record(await store.add_device(device))

        versions = sorted(expected)
        assert versions == list(range(15))  # one version per change, from one sequence
        for version in versions:
            assert await store.snapshot(version) == expected[version], version
        assert await store.snapshot() == expected[versions[-1]]
        assert await store.latest_version() == versions[-1]
        with pytest.raises(
            RegistryNotFound, match=r"^version: no registry version 15 \(newest: 14\)"
        ):
            await store.snapshot(15)

    asyncio.run(_with_store(registry_url, run))


def test_nothing_is_changed_in_place(registry_url: str) -> None:
    async def run(store: RegistryStore) -> None:
        await store.add_device(Device("dev-0", "plant-a"))
        await store.set_device("dev-0", enabled=False)
        await store.remove_device("dev-0")

    asyncio.run(_with_store(registry_url, run))
    with psycopg.connect(registry_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id, version, removed, site, enabled FROM devices ORDER BY version"
        ).fetchall()
        assert rows == [
            ("dev-0", 1, False, "plant-a", True),
            ("dev-0", 2, False, "plant-a", False),
            ("dev-0", 3, True, "plant-a", False),
        ]
        for statement in ("UPDATE devices SET site = 'x'", "DELETE FROM registry_versions"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(statement)
        changes = conn.execute("SELECT version, change FROM registry_versions").fetchall()
        assert changes == [
            (1, "add device dev-0"),
            (2, "set device dev-0"),
            (3, "remove device 'dev-0'"),
        ]


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda s: s.add_device(Device("dev 0")), RegistryInputError, "^id: 'dev 0' is not a name"),
        (lambda s: s.add_device(Device("d", "a:b")), RegistryInputError, "^site: 'a:b' is not"),
        (
            lambda s: s.add_device(Device("dev-0")),
            RegistryInputError,
            "^id: device 'dev-0' is already",
        ),
        (lambda s: s.set_device("dev-9", enabled=True), RegistryNotFound, "^id: no device 'dev-9'"),
        (lambda s: s.remove_device("dev-9"), RegistryNotFound, "^id: no device 'dev-9'"),
        (lambda s: s.remove_rule("nope"), RegistryNotFound, "^name: no rule 'nope'"),
        (lambda s: s.remove_silence(99), RegistryNotFound, "^id: no silence 99"),
        (
            lambda s: s.add_rule(AlertRule("r", "m", "10s", "avg", ">", 1, 1)),
            RegistryInputError,
            "^aggregate: 'avg' is not one of count, sum",
        ),
        (
            lambda s: s.add_rule(AlertRule("r", "m", "10s", "mean", ">", 10, 11)),
            RegistryInputError,
            "^clear_threshold: must be at most the threshold",
        ),
        (
            lambda s: s.add_rule(AlertRule("r", "m", "sliding:1m", "mean", ">", 1, 1)),
            RegistryInputError,
            "^window: 'sliding:1m' is not a tumbling or hopping window",
        ),
        (
            lambda s: s.add_rule(AlertRule("r", "m", "10s", "mean", ">", 1, 1, 0)),
            RegistryInputError,
            "^for: must be a whole number from 1 to 1000, not 0",
        ),
        (
            lambda s: s.add_rule(AlertRule("r", "m", "10s", "mean", ">", 1, 1, 1, "site")),
            RegistryInputError,
            "^selector: a site selector needs the site",
        ),
        (
            lambda s: s.add_absence_rule(AbsenceRule("r", "m", 0)),
            RegistryInputError,
            "^duration: must be more than 0 s",
        ),
        (
            lambda s: s.add_webhook("ftp://x/y"),
            RegistryInputError,
            "^url: 'ftp://x/y' is not an http",
        ),
        (
            lambda s: s.add_silence(None, "rack", "r1", 1e9),
            RegistryInputError,
            "^target: 'rack' is not one of device, site",
        ),
    ],
)
def test_bad_changes_name_the_field_and_change_nothing(
    registry_url: str, change: Any, error: type[Exception], message: str
) -> None:
    async def run(store: RegistryStore) -> None:
        await store.add_device(Device("dev-0"))
        before = await store.snapshot()
        with pytest.raises(error, match=message):
            await change(store)
        assert await store.snapshot() == before
        assert await store.latest_version() == 1

    asyncio.run(_with_store(registry_url, run))


def test_alert_history_is_idempotent_by_id(registry_url: str) -> None:
    alert = {"id": "hot:dev-0:10s:1790000000", "rule": "hot", "device": "dev-0", "state": "firing"}

    async def run(store: RegistryStore) -> None:
        assert await store.record_alert({**alert, "value": 31.5}) is True
        assert await store.record_alert({**alert, "value": 31.5}) is False
        assert await store.alert_history() == [
            {**{k: alert[k] for k in ("id", "rule", "device", "state")},
             "alert": {**alert, "value": 31.5}}
        ]  # fmt: skip

    asyncio.run(_with_store(registry_url, run))


def test_upgrade_twice_changes_nothing(postgres_url: str) -> None:
    settings = _settings(postgres_url)
    assert migrate.current(settings) is None
    assert migrate.upgrade(settings) == (None, migrate.head())
    assert migrate.upgrade(settings) == (migrate.head(), migrate.head())
    assert migrate.current(settings) == "0001"
