"""The alerts' history writer: the alerts topic into PostgreSQL's ``alert_history``.

Real servers: the session's tansu broker and PostgreSQL (a migrated database per test), and
for the outage a PostgreSQL of the test's own, stopped and started again mid-stream.
Transitions built with models.alerts.AlertTransition go into a two-partition ``alerts``
topic, keyed by device, with a worker's repeat of a partition's tail, an absence rule's
resolution and next firing that share an id, a silenced transition, a transition whose JSON
``jsonb`` refuses (a label key holding ``\\u0000``) and a record that is no transition. The
table must hold one row per distinct (id, state), each exactly the transition; the refused
and unreadable ones are dead letters; another group reading everything again inserts
nothing; and PostgreSQL away is waited out with nothing committed, then caught up.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import psycopg

from agents.alert_history import AlertHistoryWriter
from models.alerts import AlertTransition
from pulse.local.stack import postgres_data_dir, start_postgres
from pulse.registry import migrate
from pulse.settings import Settings
from pulse.sinks.alert_history import AlertHistorySink
from tests.helpers import kafka
from tests.helpers.alerts import absence_alert, keyed, window_alert
from tests.helpers.topic_writers import run_until_written


def settings_for(p: str, broker: str, postgres_url: str, app: str) -> Settings:
    return Settings.from_env(
        {
            "PULSE_BROKER": broker,
            "PULSE_POSTGRES_URL": postgres_url,
            "PULSE_APP_ID": app,
            "PULSE_TOPIC_READINGS": f"{p}-readings",
            "PULSE_TOPIC_AGGREGATES": f"{p}-aggregates",
            "PULSE_TOPIC_ALERTS": f"{p}-alerts",
            "PULSE_TOPIC_DLQ": f"{p}-dlq",
            "PULSE_TOPIC_OUTPUT_DLQ": f"{p}-output-dlq",
            "PULSE_PARTITIONS": "2",
            "PULSE_SESSION_TIMEOUT": "2",
        }
    )


def scenario(p: str) -> tuple[list[AlertTransition], list[AlertTransition]]:
    """Partition 0 (device ``{p}-a``) and 1 (``{p}-b``), in topic order."""
    a, b = f"{p}-a", f"{p}-b"
    hot = window_alert("hot", a, "t", "10s", 10, 1, "firing", 91.5)
    hot_resolved = window_alert("hot", a, "t", "10s", 10, 3, "resolved", 65.25)
    hot_again = window_alert("hot", a, "t", "10s", 10, 5, "firing", 88.0)
    quiet = absence_alert("quiet", a, "t", "firing", 0, 30)
    quiet_resolved = absence_alert("quiet", a, "t", "resolved", 25, 30)
    quiet_again = absence_alert("quiet", a, "t", "firing", 25, 30)
    assert quiet_resolved.id == quiet_again.id  # one id, two transitions
    partition_0 = [hot, quiet, hot_resolved, quiet_resolved]
    partition_0 += [*partition_0, hot_again, quiet_again]  # a worker's repeat, then on
    muted = window_alert("hot", b, "t", "10s", 10, 2, "firing", 99.0, silenced=True)
    cold = window_alert("cold", b, "h", "1m", 60, 1, "firing", 10.0, aggregate="min")
    cold_resolved = window_alert("cold", b, "h", "1m", 60, 2, "resolved", 35.0, aggregate="min")
    return partition_0, [muted, cold, cold_resolved]


def row_of(t: AlertTransition) -> dict[str, Any]:
    """The row the contract says ``t`` makes (docs/registry.md, alert_history)."""
    return {
        "id": t.id, "state": t.state, "rule": t.rule, "device": t.device, "site": t.site,
        "metric": t.metric, "window": t.window, "start_us": t.start_us, "end_us": t.end_us,
        "severity": t.severity, "silenced": t.silenced, "alert": orjson.loads(t.json()),
    }  # fmt: skip


def expected_rows(transitions: Iterable[AlertTransition]) -> list[dict[str, Any]]:
    rows = {(t.id, t.state): row_of(t) for t in transitions}
    return [rows[key] for key in sorted(rows)]


async def table(postgres_url: str) -> list[dict[str, Any]]:
    """Every row of alert_history, by (id, state), with ``recorded_at``."""
    async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        await cur.execute(
            'SELECT id, state, rule, device, site, metric, "window", start_us, end_us, '
            "severity, silenced, alert, recorded_at FROM alert_history ORDER BY id, state"
        )
        return list(await cur.fetchall())


def without_time(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "recorded_at"} for row in rows]


async def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.05)


async def run_writer(settings: Settings, records: int) -> AlertHistoryWriter:
    return await run_until_written(AlertHistoryWriter(settings), records)


def test_each_transition_is_one_row_whatever_replays(
    broker: str, registry_url: str, topic_prefix: str
) -> None:
    p = topic_prefix
    partition_0, partition_1 = scenario(p)
    refused = window_alert(
        "cold", f"{p}-b", "h", "1m", 60, 7, "firing", 1.0, labels={"bad\x00key": "v"}
    )
    topic = f"{p}-alerts"
    asyncio.run(kafka.create_topics(broker, {topic: 2}))
    produced: list[tuple[int | None, bytes | None, bytes | None, int | None]] = [
        *[(0, k, v, None) for k, v in keyed(partition_0)],
        *[(1, k, v, None) for k, v in keyed([*partition_1[:2], refused, partition_1[2]])],
        (1, b"x", b"{not json", None),
    ]
    stored = asyncio.run(kafka.produce(broker, topic, produced))

    settings = settings_for(p, broker, registry_url, f"{p}app")
    writer = asyncio.run(run_writer(settings, len(produced)))
    assert writer.group_id == f"{p}app-alerts-history"
    sink = writer.sink
    assert isinstance(sink, AlertHistorySink)
    want = expected_rows([*partition_0, *partition_1])
    assert len(want) == 6 + 3  # a's repeats are one row each; quiet's shared id is two
    assert sink.inserted == len(want)
    rows = asyncio.run(table(registry_url))
    assert without_time(rows) == want
    assert sink.health.document() == {
        "state": "ok",
        "since": sink.health.since,
        "dead_letters": 2,
    }

    dlq = asyncio.run(kafka.read_all(broker, f"{p}-output-dlq"))
    letters = [orjson.loads(r.value or b"") for r in dlq]
    assert len(letters) == 2
    by_reason = {letter["reason"]: letter for letter in letters}
    jsonb = by_reason["refused"]
    assert {k: v for k, v in jsonb.items() if k != "answer"} == {
        "reason": "refused",
        "sink": "alert-history",
        "target": "postgresql alert_history",
        "key": f"{p}-b",
        "output": refused.json().decode(),
    }
    # PostgreSQL's own words, with its detail: jsonb takes no \u0000.
    assert jsonb["answer"].startswith("PostgreSQL (postgresql://")
    assert jsonb["answer"].endswith(
        "unsupported Unicode escape sequence (\\u0000 cannot be converted to text.)"
    )
    assert by_reason["unreadable"] == {
        "reason": "unreadable",
        "sink": "alert-history",
        "target": f"topic {topic} partition 1 offset {stored[-1].offset}",
        "answer": "not an alert transition (not JSON: unexpected character, "
        "expected a string key: line 1 column 2 (char 1))",
        "key": "x",
        "output": "{not json",
    }

    # Another group reads everything again: no row added, none changed (recorded_at too).
    replay = settings_for(p, broker, registry_url, f"{p}again")
    again = asyncio.run(run_writer(replay, len(produced)))
    assert isinstance(again.sink, AlertHistorySink) and again.sink.inserted == 0
    assert asyncio.run(table(registry_url)) == rows


def test_postgres_away_is_waited_out_with_nothing_committed(
    broker: str, topic_prefix: str, tmp_path: Path
) -> None:
    p = topic_prefix
    transitions = [
        window_alert("hot", f"{p}-{i % 4}", "t", "10s", 10, i, "firing", 80.0 + i)
        for i in range(40)
    ]
    first, second = transitions[:20], transitions[20:]
    topic = f"{p}-alerts"
    asyncio.run(kafka.create_topics(broker, {topic: 2}))
    server = start_postgres(tmp_path, stop_with_parent=True)
    try:
        url = server.url
        settings = settings_for(p, broker, url, f"{p}app")
        migrate.upgrade(settings)

        async def run() -> None:
            nonlocal server
            writer = AlertHistoryWriter(settings)
            await writer.start()
            try:
                await kafka.produce(broker, topic, [(None, k, v, None) for k, v in keyed(first)])
                await until(lambda: writer.written == len(first), "the first half is written")
                assert without_time(await table(url)) == expected_rows(first)
                sink = writer.sink
                assert isinstance(sink, AlertHistorySink)

                server.stop()
                await kafka.produce(broker, topic, [(None, k, v, None) for k, v in keyed(second)])
                await until(lambda: sink.health.state == "waiting", "the sink waits", 60)
                assert sink.health.reason is not None
                assert sink.health.reason.startswith("PostgreSQL (postgresql://")
                await asyncio.sleep(2.0)  # several tries meanwhile: none commits anything
                assert writer.written == len(first) and not writer.crashed

                server = start_postgres(tmp_path, port=server.port, stop_with_parent=True)
                await until(lambda: writer.written == len(transitions), "caught up", 60)
                assert sink.health.state == "ok" and not writer.crashed
                assert without_time(await table(url)) == expected_rows(transitions)
                assert sink.inserted == len(transitions)
            finally:
                await writer.stop()

        asyncio.run(run())
    finally:
        server.stop()
        shutil.rmtree(postgres_data_dir(server.work_dir), ignore_errors=True)
