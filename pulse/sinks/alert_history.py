"""Alert transitions from the ``alerts`` topic into PostgreSQL's ``alert_history``.

The registry's history of alerts (docs/registry.md, "Schema") holds one row per transition,
keyed by its ``(id, state)``: the id alone is not enough, as an absence rule's resolution at
a reading and its next firing from that reading share it (both start there). The alerts'
history writer (agents/alert_history.py, consumer group ``{PULSE_APP_ID}-alerts-history``)
reads the topic with :func:`pulse.sinks.alerts.alert_record` (a value that is no transition
is ``unreadable``: dead-lettered) and hands each fetch to :class:`AlertHistorySink`, which
inserts it in statements of up to :data:`ROWS_PER_STATEMENT` rows with ``ON CONFLICT DO
NOTHING`` (pulse/registry/store.py, ``record_alerts``). So a replay after a crash or a
rebalance, a repeat in the topic, or a second writer reading everything again adds no row.

PostgreSQL's answers, sorted as every sink sorts its target's (pulse/sinks/_retry.py):

* away, restarting, out of connections, hung (a connection error, no answer within
  :data:`STATEMENT_TIMEOUT`, any other error of the server's): backpressure, waited out
  with backoff capped at :data:`MAX_RETRY_DELAY` on a new connection; the sink's state is
  ``waiting`` and the transitions wait in Kafka behind the group's committed offsets (never
  in memory beyond one fetch);
* a refusal of the client (no such table: the schema not made by ``pulse db upgrade``; no
  permission): ``refused_by_target``, retried likewise until an operator fixes it;
* a refusal of the content (``DataError``, ``IntegrityError``: a transition whose JSON
  ``jsonb`` does not take, e.g. a label key holding ``\\u0000``): the statement is split in
  halves until the refused transition is alone; it goes to the output dead-letter topic with
  PostgreSQL's message, and the others are written.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import psycopg

from models.outputs import RefusedOutput
from pulse.registry._db import connect, describe_error
from pulse.registry.store import record_alerts
from pulse.settings import Settings
from pulse.sinks._base import FlushBatch, RecordSink
from pulse.sinks._retry import (
    MAX_RETRY_DELAY,
    ContentRefused,
    RefusedByTarget,
    RetryLater,
    retry_forever,
)
from pulse.sinks.alerts import AlertRecord, alert_record
from pulse.sinks.dead_letters import OutputDeadLetters

ROWS_PER_STATEMENT = 5_000
"""Transitions inserted per statement (one round trip each; a fetch holds up to 20,000)."""
STATEMENT_TIMEOUT = 30.0
"""Seconds one insert may take before the connection is given up as hung (a server that
stopped answering without closing it) and the insert tried again on a new one."""
TARGET = "postgresql alert_history"
"""The target a dead letter of this sink names."""


class AlertHistorySink(RecordSink[AlertRecord]):
    """Alert transitions into ``alert_history`` (see the module doc), through one connection
    of its own: made at the first write, and again at the first try after it failed (so a
    PostgreSQL back from an outage is written within :data:`MAX_RETRY_DELAY`)."""

    name = "alert-history"

    def __init__(
        self,
        settings: Settings,
        dead_letters: OutputDeadLetters | None = None,
        *,
        max_delay: float = MAX_RETRY_DELAY,
    ) -> None:
        self.settings = settings
        self.connection: psycopg.AsyncConnection | None = None
        self.dead_letters = dead_letters
        self.max_delay = max_delay
        self.inserted = 0
        """Rows inserted so far (a repeat inserts none)."""

    async def stop(self) -> None:
        await self._drop_connection()

    async def _drop_connection(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            with contextlib.suppress(psycopg.Error, OSError):  # broken: nothing to release
                await connection.close()

    def read_record(self, value: bytes | None) -> AlertRecord:
        return alert_record(value)

    async def write(self, batch: FlushBatch) -> None:
        """Nothing: this sink is written from the alerts topic, never by a flush."""

    async def write_records(
        self, records: Sequence[AlertRecord], keys: Sequence[bytes | None]
    ) -> None:
        refused: list[RefusedOutput] = []
        for begin in range(0, len(records), ROWS_PER_STATEMENT):
            await self._insert(list(records[begin : begin + ROWS_PER_STATEMENT]), refused)
        if refused:
            assert self.dead_letters is not None, "a refused transition needs the dead letters"
            await self.dead_letters.store(refused, self.health)

    async def _insert(self, records: list[AlertRecord], refused: list[RefusedOutput]) -> None:
        """Insert ``records``; those PostgreSQL refuses for their content join ``refused``."""
        try:
            self.inserted += await retry_forever(
                "alert history insert",
                lambda: self._attempt(records),
                (),
                self.health,
                max_delay=self.max_delay,
            )
        except ContentRefused as exc:
            if len(records) == 1:
                (record,) = records
                refused.append(
                    RefusedOutput(
                        self.name,
                        TARGET,
                        "refused",
                        exc.answer,
                        record.device.encode(),
                        record.json,
                        self.settings.max_message_bytes,
                    )
                )
                return
            half = len(records) // 2
            await self._insert(records[:half], refused)
            await self._insert(records[half:], refused)

    async def _attempt(self, records: list[AlertRecord]) -> int:
        try:
            if self.connection is None or self.connection.closed:
                self.connection = await connect(self.settings, autocommit=True)
            return await asyncio.wait_for(
                record_alerts(self.connection, records), STATEMENT_TIMEOUT
            )
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            answer = describe_error(self.settings, exc)
            if exc.diag.message_detail:  # which value: "\u0000 cannot be converted to text."
                answer += f" ({self.settings.redact(exc.diag.message_detail)})"
            raise ContentRefused(answer) from None
        except (psycopg.ProgrammingError, psycopg.NotSupportedError) as exc:
            raise RefusedByTarget(describe_error(self.settings, exc)) from None
        except TimeoutError:
            await self._drop_connection()
            raise RetryLater(f"PostgreSQL: no answer within {STATEMENT_TIMEOUT:g} s") from None
        except (psycopg.Error, OSError) as exc:
            # Away, restarting, a connection lost: a new one at the next try.
            await self._drop_connection()
            raise RetryLater(describe_error(self.settings, exc)) from None
