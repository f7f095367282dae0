"""The registry in a real PostgreSQL (pulse/registry/store.py): every version read back as of
itself equals an independent reconstruction from the list of changes; nothing is changed in
place; bad input and unknown entries are errors naming the field; alert history is
idempotent by id and state."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import psycopg
import pytest

from models.alerts import AbsenceRule, AlertRule, Device, Selector, Silence
from models.registry import MAX_UNTIL_US, RegistryInputError, RegistrySnapshot, Webhook
from pulse.registry import migrate
from pulse.registry.store import KEEP, RegistryNotFound, RegistryStore
from pulse.settings import Settings
from pulse.sinks.alerts import alert_record
from tests.helpers.alerts import absence_alert, window_alert


def _settings(url: str) -> Settings:
    return Settings.from_env({"PULSE_POSTGRES_URL": url})


async def _with_store(url: str, body: Callable[[RegistryStore], Awaitable[Any]]) -> Any:
    store = RegistryStore(_settings(url))
    await store.open()
    try:
        return await body(store)
    finally:
        await store.close()


RULE = AlertRule("hot", "temperature", "10s", "mean", ">", 30.0, 28.0, 3, Selector(site="plant-a"))
ABSENT = AbsenceRule("quiet", "temperature", 300_000_000, Selector(), "critical")


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
        muted = Silence("hot", site="plant-a", until_us=1_900_000_000_000_001)
        silence_id, version = await store.add_silence(muted)
        model["silences"][silence_id] = Silence(
            "hot", None, "plant-a", 1_900_000_000_000_001, silence_id
        )
        record(version)
        # A silence of a rule on every device, one of every rule on a device.
        for muted in (Silence("hot", until_us=1), Silence(device="dev-0", until_us=MAX_UNTIL_US)):
            silence_id, version = await store.add_silence(muted)
            model["silences"][silence_id] = Silence(
                muted.rule, muted.device, muted.site, muted.until_us, silence_id
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
        again = AlertRule("hot", "humidity", "1m", "p95", "<=", 10.0, 12.5, 1, Selector("dev-0"))
        model["rules"]["hot"] = again
        record(await store.add_rule(again))
        # Without a clear threshold (None: the threshold), which reads back as None.
        plain = AlertRule("cold", "temperature", "10s/5s", "min", "<", -5, None, 2)
        model["rules"]["cold"] = plain
        record(await store.add_rule(plain))
        # A rule replaced in one version: its threshold changed.
        colder = AlertRule("cold", "temperature", "10s/5s", "min", "<", -8, -6, 2)
        model["rules"]["cold"] = colder
        record(await store.set_rule(colder))
        del model["silences"][silence_id]
        record(await store.remove_silence(silence_id))
        device = Device("dev-2", None, {}, True)
        model["devices"]["dev-2"] = device
        record(await store.add_device(device))

        versions = sorted(expected)
        assert versions == list(range(19))  # one version per change, from one sequence
        for version in versions:
            assert await store.snapshot(version) == expected[version], version
        assert await store.snapshot() == expected[versions[-1]]
        assert await store.latest_version() == versions[-1]
        cold = (await store.snapshot(versions[-4])).registry.rules[0]
        assert (cold.name, cold.clear_threshold, cold.threshold) == ("cold", None, -5.0)
        with pytest.raises(
            RegistryNotFound, match=r"^version: no registry version 19 \(newest: 18\)"
        ):
            await store.snapshot(19)

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
        # Values the types of models.alerts take but the registry does not.
        (lambda s: s.add_device(Device("d", "a:b")), RegistryInputError, "^site: 'a:b' is not"),
        (
            lambda s: s.add_device(Device("d", None, {"a b": "x"})),
            RegistryInputError,
            "^labels: 'a b' is not a name",
        ),
        (
            lambda s: s.add_device(Device("dev-0")),
            RegistryInputError,
            "^id: device 'dev-0' is already",
        ),
        (lambda s: s.set_device("dev-9", enabled=True), RegistryNotFound, "^id: no device 'dev-9'"),
        (lambda s: s.set_device("dev-0", site="a b"), RegistryInputError, "^site: 'a b' is not"),
        (lambda s: s.remove_device("dev-9"), RegistryNotFound, "^id: no device 'dev-9'"),
        (lambda s: s.remove_rule("nope"), RegistryNotFound, "^name: no rule 'nope'"),
        (
            lambda s: s.set_rule(AlertRule("nope", "m", "10s", "mean", ">", 1)),
            RegistryNotFound,
            "^name: no alert rule 'nope'",
        ),
        (lambda s: s.remove_silence(99), RegistryNotFound, "^id: no silence 99"),
        (lambda s: s.remove_webhook(99), RegistryNotFound, "^id: no webhook 99"),
        (
            lambda s: s.add_rule(AlertRule("r", "m", "10s", "mean", ">", 1, severity="loud")),
            RegistryInputError,
            "^severity: 'loud' is not one of info, warning, critical",
        ),
        (
            lambda s: s.add_rule(AlertRule("r", "m", "1x", "mean", ">", 1)),
            RegistryInputError,
            "^window: '1x' is not a tumbling or hopping window",
        ),
        (
            lambda s: s.add_rule(AlertRule("r", "m", "10s", "mean", ">", 1, None, 1001)),
            RegistryInputError,
            "^for: must be a whole number from 1 to 1000, not 1001",
        ),
        (
            lambda s: s.add_rule(
                AlertRule("r", "m", "10s", "mean", ">", 1, selector=Selector(site="a b"))
            ),
            RegistryInputError,
            "^site: 'a b' is not a name",
        ),
        (
            lambda s: s.add_rule(AlertRule("r", "m", "10s", "mean", ">", 1e300)),
            RegistryInputError,
            "^threshold: '1e\\+300' is not a finite number",
        ),
        (
            lambda s: s.add_absence_rule(AbsenceRule("r", "m", 365 * 86400 * 10**6 + 1)),
            RegistryInputError,
            "^duration: must be more than 0 and at most a year",
        ),
        (
            lambda s: s.add_webhook("ftp://x/y"),
            RegistryInputError,
            "^url: 'ftp://x/y' is not an http",
        ),
        (
            lambda s: s.add_silence(Silence("r b", until_us=1)),
            RegistryInputError,
            "^rule: 'r b' is not a name",
        ),
        (
            lambda s: s.add_silence(Silence(device="dev-0", until_us=-1)),
            RegistryInputError,
            "^until: must be a whole number of epoch µs from 0",
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


def test_alert_history_is_idempotent_by_id_and_state(registry_url: str) -> None:
    # An absence rule's resolution at a reading and its next firing from that reading share
    # the id (rule, device, window, start): two rows, told apart by the state.
    resolved = absence_alert("quiet", "dev-0", "t", "resolved", 25, 30)
    again = absence_alert("quiet", "dev-0", "t", "firing", 25, 30, silenced=True)
    hot = window_alert("hot", "dev-0", "t", "10s", 10, 1, "firing", 31.5)
    assert resolved.id == again.id != hot.id
    records = [alert_record(t.json()) for t in (hot, resolved, again)]

    async def run(store: RegistryStore) -> None:
        assert await store.record_alerts(records) == 3
        assert await store.record_alerts([*records, records[0]]) == 0  # a replay: no row
        assert await store.record_alerts([]) == 0
        rows = await store.alert_history()
        assert sorted(rows, key=lambda r: (r["id"], r["state"])) == sorted(
            (
                {
                    "id": t.id, "state": t.state, "rule": t.rule, "device": t.device,
                    "site": t.site, "metric": t.metric, "window": t.window,
                    "start_us": t.start_us, "end_us": t.end_us, "severity": t.severity,
                    "silenced": t.silenced, "alert": orjson.loads(t.json()),
                }
                for t in (hot, resolved, again)
            ),
            key=lambda r: (r["id"], r["state"]),
        )  # fmt: skip

    asyncio.run(_with_store(registry_url, run))


def test_upgrade_twice_changes_nothing(postgres_url: str) -> None:
    settings = _settings(postgres_url)
    assert migrate.current(settings) is None
    assert migrate.upgrade(settings) == (None, migrate.head())
    assert migrate.upgrade(settings) == (migrate.head(), migrate.head())
    assert migrate.current(settings) == "0001"
