"""alembic's environment for the registry's migrations: runs them on the connection
:func:`pulse.registry.migrate.upgrade` hands over (``config.attributes["connection"]``), in
one transaction (PostgreSQL's DDL is transactional: a failed upgrade leaves nothing half
done)."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, transaction_per_migration=False)
with context.begin_transaction():
    context.run_migrations()
