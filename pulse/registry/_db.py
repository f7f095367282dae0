"""How Pulse connects to PostgreSQL: libpq's URL from ``PULSE_POSTGRES_URL``, the password
from ``PULSE_POSTGRES_PASSWORD_FILE`` when set (kept out of the URL, so that nothing that
shows the URL shows it), and what a failure says (scrubbed of the password)."""

from __future__ import annotations

from typing import Any

import psycopg

from pulse.settings import Settings

CHANNEL = "pulse_registry"
"""The NOTIFY channel of registry changes; each payload is the new version (the migration's
trigger on ``registry_versions`` sends it when the change commits)."""

CONNECT_TIMEOUT = 5
"""Seconds libpq waits for a connection: a PostgreSQL away must not hold a command or the
cache's reconnection for long."""


def connect_kwargs(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of a psycopg connection to the registry's database."""
    kwargs: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT}
    if settings.postgres_password:
        kwargs["password"] = settings.postgres_password
    return kwargs


def describe_error(settings: Settings, exc: BaseException) -> str:
    """One line about a failed PostgreSQL operation, naming the server, never a secret."""
    address = settings.shown()["PULSE_POSTGRES_URL"]
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return settings.redact(f"PostgreSQL ({address}): {detail}")


async def connect(settings: Settings, *, autocommit: bool = False) -> psycopg.AsyncConnection:
    """One connection (the cache's LISTEN connection, the migrations' checks)."""
    return await psycopg.AsyncConnection.connect(
        settings.postgres_url, autocommit=autocommit, **connect_kwargs(settings)
    )
