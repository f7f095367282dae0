"""The device registry: PostgreSQL as its system of record (:mod:`pulse.registry.store`), its
schema's migrations (:mod:`pulse.registry.migrate`, ``pulse db upgrade``) and Redis in front
of it (:mod:`pulse.registry.cache`). What it hands out is a :class:`models.alerts.Registry`
(within a :class:`models.registry.RegistrySnapshot`, with the webhooks). docs/registry.md
describes the schema, the versions and the cache."""
