"""The device registry: PostgreSQL as its system of record (:mod:`pulse.registry.store`), its
schema's migrations (:mod:`pulse.registry.migrate`, ``pulse db upgrade``) and Redis in front
of it (:mod:`pulse.registry.cache`). The snapshot it hands out is a value of
:mod:`models.registry`. docs/registry.md describes the schema, the versions and the cache."""
