"""The HTTP API (pulse/api) served for a test: the full application on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from pulse.api import ApiContext, Readiness, create_api
from pulse.history import HistoryStore
from pulse.local.stack import free_port
from pulse.redis_clients import redis_client
from pulse.registry.cache import RegistryCache
from pulse.registry.store import RegistryStore
from pulse.settings import Settings


async def ready() -> Readiness:
    return Readiness(True)


@asynccontextmanager
async def serving(
    settings: Settings, store: HistoryStore | None = None, *, registry: bool = False
) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    """The full API for ``settings`` (and the history ``store``, closed afterwards; with
    ``registry``, the device registry's cache on ``PULSE_POSTGRES_URL``) on a free port, and a
    client session."""
    redis = redis_client(settings)
    cache = RegistryCache(settings, RegistryStore(settings), redis) if registry else None
    context = ApiContext(settings, redis, CollectorRegistry(), ready, store, device_registry=cache)
    server = TestServer(create_api(context), port=free_port())
    await server.start_server()
    try:
        # unsafe: keep cookies of an IP address, as a browser does
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            yield f"http://127.0.0.1:{server.port}", session
    finally:
        await server.close()
        await context.redis.aclose()
