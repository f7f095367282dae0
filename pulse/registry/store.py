"""The registry in PostgreSQL: snapshots as of a version, and changes that each make one.

Every change is one transaction that takes the registry's write lock (an advisory lock), adds
a row to ``registry_versions`` (its version from the one sequence ``registry_version_seq``;
the row's trigger sends NOTIFY ``pulse_registry`` with it at commit) and appends rows stamped
with that version: a new state of an entry, or a ``removed`` row. Nothing is updated or
deleted (triggers refuse it), so the registry as of version ``v`` is, per key, the newest row
of a version ``<= v`` unless it is a removal. The lock makes versions commit in their order,
so once a reader has seen version ``v`` no change of a version ``<= v`` can still appear.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from psycopg import AsyncConnection, IsolationLevel, sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from models.alerts import AbsenceRule, AlertRule, Device, Selector, Silence
from models.registry import (
    RegistryInputError,
    RegistrySnapshot,
    Webhook,
    check_absence_rule,
    check_device,
    check_name,
    check_rule,
    check_silence,
    new_device,
    new_webhook,
)
from pulse.registry._db import CONNECT_TIMEOUT, connect_kwargs
from pulse.settings import Settings

if TYPE_CHECKING:
    from pulse.sinks.alerts import AlertRecord

T = TypeVar("T")

WRITE_LOCK = 0x70756C7365  # "pulse": the advisory lock every registry change holds
_TABLES = ("devices", "alert_rules", "absence_rules", "silences", "webhooks")
_KEYS = {"devices": "id", "alert_rules": "name", "absence_rules": "name", "silences": "id",
         "webhooks": "id"}  # fmt: skip
HISTORY_COLUMNS = (
    ("id", "text"), ("state", "text"), ("rule", "text"), ("device", "text"), ("site", "text"),
    ("metric", "text"), ("window", "text"), ("start_us", "bigint"), ("end_us", "bigint"),
    ("severity", "text"), ("silenced", "boolean"), ("alert", "jsonb"),
)  # fmt: skip
"""The columns of ``alert_history`` a transition fills, with their types (``recorded_at`` is
the inserting transaction's time)."""


def _quoted(column: tuple[str, str]) -> str:
    return f'"{column[0]}"'


# One statement per batch: a column of values per array, unnested in order (one round trip
# whatever the batch's size; duplicates within it are fine for DO NOTHING).
_RECORD_ALERTS = (
    f"INSERT INTO alert_history ({', '.join(map(_quoted, HISTORY_COLUMNS))}) "
    f"SELECT {', '.join(map(_quoted, HISTORY_COLUMNS[:-1]))}, alert::jsonb FROM unnest("
    + ", ".join(f"%s::{'text' if kind == 'jsonb' else kind}[]" for _, kind in HISTORY_COLUMNS)
    + f") AS t({', '.join(map(_quoted, HISTORY_COLUMNS))}) ON CONFLICT (id, state) DO NOTHING"
)


class _Keep:
    """Marks an argument left as it is (``set_device(site=KEEP)``)."""


KEEP = _Keep


class RegistryNotFound(LookupError):
    """A change or read names an entry (or version) the registry does not have; the message
    names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class RegistryStore:
    """The registry's reads and changes over a pool of connections (psycopg_pool), opened
    by :meth:`open` and closed by :meth:`close`."""

    def __init__(self, settings: Settings, *, max_size: int = 4) -> None:
        self.settings = settings
        # Connections are made when needed and checked before each use: while PostgreSQL is
        # away the pool does not keep trying (and logging) in the background, and one that
        # comes back is used again without a stale connection failing the first change.
        self.pool = AsyncConnectionPool(
            settings.postgres_url,
            kwargs=connect_kwargs(settings),
            min_size=0,
            max_size=max_size,
            open=False,
            timeout=CONNECT_TIMEOUT,
            check=AsyncConnectionPool.check_connection,
        )

    async def open(self) -> None:
        """Open the pool without waiting for a connection: PostgreSQL may be away."""
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    # -- reads ---------------------------------------------------------------------------

    async def latest_version(self) -> int:
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute("SELECT max(version) FROM registry_versions")
            ).fetchone()
            return int(row[0] or 0) if row else 0

    async def snapshot(self, version: int | None = None) -> RegistrySnapshot:
        """The registry as of ``version`` (None: the newest), read in one repeatable-read
        transaction: per key, the newest row of a version ``<= version`` unless a removal.
        Exact and final: no change of a version ``<= version`` can commit after the newest
        version seen (module doc), so every read of one version gives an equal snapshot.
        :class:`RegistryNotFound` for a version not made yet."""
        async with self.pool.connection() as conn:
            await conn.set_isolation_level(IsolationLevel.REPEATABLE_READ)  # one view of all
            await conn.set_read_only(True)
            try:
                async with conn.transaction():
                    return await _snapshot(conn, version)
            finally:
                await conn.set_read_only(False)
                await conn.set_isolation_level(None)

    # -- changes: each returns the version it made ---------------------------------------

    async def add_device(self, device: Device) -> int:
        device = check_device(device)

        async def change(conn: AsyncConnection, version: int) -> None:
            if await _current(conn, "devices", device.id) is not None:
                raise RegistryInputError("id", f"device {device.id!r} is already registered")
            await _insert_device(conn, version, device)

        return await self._change(f"add device {device.id}", change)

    async def set_device(
        self,
        device_id: str,
        *,
        site: str | type[_Keep] | None = KEEP,
        labels: Mapping[str, str] | None = None,
        enabled: bool | None = None,
    ) -> int:
        """Change what is given of a registered device (``site``: a name, None to clear it,
        :data:`KEEP`, the default, to leave it; ``labels`` replace the old ones)."""
        check_name(device_id, "id")

        async def change(conn: AsyncConnection, version: int) -> None:
            row = await _current(conn, "devices", device_id)
            if row is None:
                raise RegistryNotFound("id", f"no device {device_id!r} in the registry")
            new = new_device(
                device_id,
                row["site"] if site is KEEP else site,  # type: ignore[arg-type]
                row["labels"] if labels is None else labels,
                row["enabled"] if enabled is None else enabled,
            )
            await _insert_device(conn, version, new)

        return await self._change(f"set device {device_id}", change)

    async def remove_device(self, device_id: str) -> int:
        check_name(device_id, "id")
        return await self._remove("devices", device_id, "id", f"device {device_id!r}")

    async def add_rule(self, rule: AlertRule) -> int:
        rule = check_rule(rule)

        async def change(conn: AsyncConnection, version: int) -> None:
            await _name_free(conn, rule.name)
            await _insert_rule(conn, version, rule)

        return await self._change(f"add rule {rule.name}", change)

    async def set_rule(self, rule: AlertRule) -> int:
        """Replace the alert rule named ``rule.name`` with ``rule``, in one version (a
        threshold changed, say). The workers' runs and firing alerts of the rule carry on
        from the windows judged before (tables.alerts.judge); a removal and an addition
        would be two versions, and a window judged by the one between would drop them."""
        rule = check_rule(rule)

        async def change(conn: AsyncConnection, version: int) -> None:
            if await _current(conn, "alert_rules", rule.name) is None:
                raise RegistryNotFound("name", f"no alert rule {rule.name!r} in the registry")
            await _insert_rule(conn, version, rule)

        return await self._change(f"set rule {rule.name}", change)

    async def add_absence_rule(self, rule: AbsenceRule) -> int:
        rule = check_absence_rule(rule)

        async def change(conn: AsyncConnection, version: int) -> None:
            await _name_free(conn, rule.name)
            await conn.execute(
                "INSERT INTO absence_rules (name, version, metric, duration_us, device, "
                "site, severity, enabled) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    rule.name, version, rule.metric, rule.duration_us, rule.selector.device,
                    rule.selector.site, rule.severity, rule.enabled,
                ),
            )  # fmt: skip

        return await self._change(f"add absence rule {rule.name}", change)

    async def remove_rule(self, name: str) -> int:
        """Remove the alert or absence rule ``name`` (rule names are unique across both)."""
        check_name(name, "name")

        async def change(conn: AsyncConnection, version: int) -> None:
            for table in ("alert_rules", "absence_rules"):
                if await _current(conn, table, name) is not None:
                    await _insert_removal(conn, table, name, version)
                    return
            raise RegistryNotFound("name", f"no rule {name!r} in the registry")

        return await self._change(f"remove rule {name}", change)

    async def add_silence(self, silence: Silence) -> tuple[int, int]:
        """Add ``silence`` (its ``id`` is ignored: the registry numbers it); returns (the
        silence's id, the version)."""
        silence = check_silence(silence)
        made: list[int] = []

        async def change(conn: AsyncConnection, version: int) -> None:
            row = await (await conn.execute("SELECT nextval('silence_id_seq')")).fetchone()
            assert row is not None
            made.append(int(row[0]))
            await conn.execute(
                "INSERT INTO silences (id, version, rule, device, site, until_us) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (made[0], version, silence.rule, silence.device, silence.site, silence.until_us),
            )

        muted = silence.device or silence.site or "every device"
        version = await self._change(f"add silence of {silence.rule or 'every rule'} for "
                                     f"{muted}", change)  # fmt: skip
        return made[0], version

    async def remove_silence(self, silence_id: int) -> int:
        return await self._remove("silences", silence_id, "id", f"silence {silence_id}")

    async def add_webhook(
        self, url: str, rule: str | None = None, severity: str | None = None
    ) -> tuple[int, int]:
        """Send the alerts of ``rule``, or of ``severity``, or (neither) all, to ``url``;
        returns (the webhook's id, the version)."""
        new_webhook(0, url, rule, severity)
        made: list[int] = []

        async def change(conn: AsyncConnection, version: int) -> None:
            row = await (await conn.execute("SELECT nextval('webhook_id_seq')")).fetchone()
            assert row is not None
            made.append(int(row[0]))
            await conn.execute(
                "INSERT INTO webhooks (id, version, url, rule, severity) "
                "VALUES (%s, %s, %s, %s, %s)",
                (made[0], version, url, rule, severity),
            )

        version = await self._change("add webhook", change)
        return made[0], version

    async def remove_webhook(self, webhook_id: int) -> int:
        return await self._remove("webhooks", webhook_id, "id", f"webhook {webhook_id}")

    async def record_alerts(self, alerts: Sequence[AlertRecord]) -> int:
        """:func:`record_alerts` on a connection of the pool."""
        async with self.pool.connection() as conn:
            return await record_alerts(conn, alerts)

    async def alert_history(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest alert transitions recorded, newest first (ties by id, firing first)."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {', '.join(_quoted(c) for c in HISTORY_COLUMNS[:-1])}, alert "
                "FROM alert_history ORDER BY recorded_at DESC, id, state LIMIT %s",
                (limit,),
            )
            return list(await cur.fetchall())

    # -- the frame of every change -------------------------------------------------------

    async def _change(self, what: str, change: Callable[[AsyncConnection, int], Any]) -> int:
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            row = await (
                await conn.execute(
                    "INSERT INTO registry_versions (change) VALUES (%s) RETURNING version",
                    (what,),
                )
            ).fetchone()
            assert row is not None
            version = int(row[0])
            await change(conn, version)
            return version

    async def _remove(self, table: str, key: Any, field: str, what: str) -> int:
        async def change(conn: AsyncConnection, version: int) -> None:
            if await _current(conn, table, key) is None:
                raise RegistryNotFound(field, f"no {what} in the registry")
            await _insert_removal(conn, table, key, version)

        return await self._change(f"remove {what}", change)


async def record_alerts(conn: AsyncConnection, alerts: Sequence[AlertRecord]) -> int:
    """Insert alert transitions (records of the ``alerts`` topic, read by
    :func:`pulse.sinks.alerts.alert_record`) into ``alert_history`` in one statement (one
    transaction), each by its ``(id, state)``: one already there (a replay, a repeat in the
    topic or in ``alerts``) inserts nothing. Returns the rows inserted. Raises what
    PostgreSQL raised: a :class:`psycopg.DataError` for a transition it refuses (a JSON
    text ``jsonb`` does not take), connection errors while it is away
    (pulse/sinks/alert_history.py sorts them)."""
    if not alerts:
        return 0
    columns: list[list[Any]] = [[] for _ in HISTORY_COLUMNS]
    for a in alerts:
        row = (
            a.id, a.state, a.rule, a.device, a.site, a.metric, a.window, a.start_us, a.end_us,
            a.severity, a.silenced, a.json.decode(),
        )  # fmt: skip
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    async with conn.transaction():
        cur = await conn.execute(_RECORD_ALERTS, columns)
        return cur.rowcount


async def _current(conn: AsyncConnection, table: str, key: Any) -> dict[str, Any] | None:
    """The newest row of ``key`` in ``table`` unless it is a removal."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        sql.SQL("SELECT * FROM {} WHERE {} = %s ORDER BY version DESC LIMIT 1").format(
            sql.Identifier(table), sql.Identifier(_KEYS[table])
        ),
        (key,),
    )
    row = await cur.fetchone()
    return None if row is None or row["removed"] else row


async def _name_free(conn: AsyncConnection, name: str) -> None:
    for table in ("alert_rules", "absence_rules"):
        if await _current(conn, table, name) is not None:
            raise RegistryInputError("name", f"a rule named {name!r} already exists")


async def _insert_device(conn: AsyncConnection, version: int, device: Device) -> None:
    await conn.execute(
        "INSERT INTO devices (id, version, site, labels, enabled) VALUES (%s, %s, %s, %s, %s)",
        (
            device.id, version, device.site,
            orjson.dumps(dict(sorted(device.labels.items()))).decode(), device.enabled,
        ),
    )  # fmt: skip


async def _insert_rule(conn: AsyncConnection, version: int, rule: AlertRule) -> None:
    await conn.execute(
        'INSERT INTO alert_rules (name, version, metric, "window", aggregate, comparison, '
        "threshold, clear_threshold, for_count, device, site, severity, enabled) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            rule.name, version, rule.metric, rule.window, rule.aggregate, rule.comparison,
            rule.threshold, rule.clear_threshold, rule.for_count, rule.selector.device,
            rule.selector.site, rule.severity, rule.enabled,
        ),
    )  # fmt: skip


async def _insert_removal(conn: AsyncConnection, table: str, key: Any, version: int) -> None:
    """A row that ends ``key``: its last state again, marked removed (the NOT NULL columns
    keep their values, so a removal is a row like any other)."""
    columns = await _columns(conn, table)
    rest = [c for c in columns if c not in (_KEYS[table], "version", "removed")]
    await conn.execute(
        sql.SQL(
            "INSERT INTO {table} ({key}, version, removed, {rest}) "
            "SELECT {key}, %s, true, {rest} FROM {table} WHERE {key} = %s "
            "ORDER BY version DESC LIMIT 1"
        ).format(
            table=sql.Identifier(table),
            key=sql.Identifier(_KEYS[table]),
            rest=sql.SQL(", ").join(map(sql.Identifier, rest)),
        ),
        (version, key),
    )


async def _columns(conn: AsyncConnection, table: str) -> list[str]:
    cur = await conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
        "ORDER BY ordinal_position",
        (table,),
    )
    return [row[0] for row in await cur.fetchall()]


async def _rows_as_of(conn: AsyncConnection, table: str, version: int) -> list[dict[str, Any]]:
    """Per key of ``table``, its newest row of a version ``<= version``, unless a removal."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        sql.SQL(
            "SELECT * FROM (SELECT DISTINCT ON ({key}) * FROM {table} WHERE version <= %s "
            "ORDER BY {key}, version DESC) newest WHERE NOT removed"
        ).format(table=sql.Identifier(table), key=sql.Identifier(_KEYS[table])),
        (version,),
    )
    return list(await cur.fetchall())


async def _snapshot(conn: AsyncConnection, version: int | None) -> RegistrySnapshot:
    row = await (
        await conn.execute("SELECT coalesce(max(version), 0) FROM registry_versions")
    ).fetchone()
    latest = int(row[0]) if row else 0
    if version is None:
        version = latest
    elif not 0 <= version <= latest:
        raise RegistryNotFound("version", f"no registry version {version} (newest: {latest})")
    rows = {table: await _rows_as_of(conn, table, version) for table in _TABLES}
    return RegistrySnapshot.of(
        version,
        [Device(r["id"], r["site"], r["labels"], r["enabled"]) for r in rows["devices"]],
        [
            AlertRule(
                r["name"], r["metric"], r["window"], r["aggregate"], r["comparison"],
                r["threshold"], r["clear_threshold"], r["for_count"],
                Selector(r["device"], r["site"]), r["severity"], r["enabled"],
            )
            for r in rows["alert_rules"]
        ],
        [
            AbsenceRule(
                r["name"], r["metric"], r["duration_us"], Selector(r["device"], r["site"]),
                r["severity"], r["enabled"],
            )
            for r in rows["absence_rules"]
        ],
        [
            Silence(r["rule"], r["device"], r["site"], r["until_us"], r["id"])
            for r in rows["silences"]
        ],
        [Webhook(r["id"], r["url"], r["rule"], r["severity"]) for r in rows["webhooks"]],
    )  # fmt: skip
