"""``pulse db upgrade``: the registry's schema brought to the newest revision with alembic.

The revisions (``migrations/versions``) are plain SQL run by ``op.execute``; alembic records
the applied one in ``alembic_version`` and runs the rest in one transaction, so an upgrade
is all or nothing, and running it again on an upgraded database does nothing.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

from pulse.registry._db import connect_kwargs
from pulse.settings import Settings

MIGRATIONS = Path(__file__).with_name("migrations")


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _engine(settings: Settings) -> Engine:
    url = make_url(settings.postgres_url).set(drivername="postgresql+psycopg")
    return create_engine(url, connect_args=connect_kwargs(settings), poolclass=NullPool)


def head() -> str:
    """The newest revision the code knows."""
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


def upgrade(settings: Settings) -> tuple[str | None, str]:
    """Apply every revision not yet applied; returns (the revision before, the one after)."""
    engine = _engine(settings)
    try:
        with engine.begin() as connection:
            before = MigrationContext.configure(connection).get_current_revision()
            config = _config()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        return before, head()
    finally:
        engine.dispose()


def current(settings: Settings) -> str | None:
    """The revision the database is at (None: no schema yet)."""
    engine = _engine(settings)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
