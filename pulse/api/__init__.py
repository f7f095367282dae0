"""Pulse's HTTP API and live page: one aiohttp application that reads Redis (and, for older
history, the time-series store) and never the worker's memory, so that ``pulse api`` can
serve it in processes of its own, and a worker can serve it too
(``PULSE_WORKER_SERVES_API=true``).

The public surface is :func:`create_api`, :class:`ApiContext`, :class:`Readiness`,
:class:`ApiError` and :class:`HttpServer`; the route modules are private. Each route module
declares its routes (``ROUTES``) and their OpenAPI description (``PATHS``) side by side.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

from aiohttp import web
from mode import Service

from pulse.api import (
    _alerts,
    _auth,
    _health,
    _history,
    _live,
    _page,
    _registry,
    _search,
    _state,
    openapi,
)
from pulse.api._context import CONTEXT, ApiContext, Readiness
from pulse.api._errors import ApiError, error_middleware
from pulse.api._metrics import request_metrics

__all__ = ["ApiContext", "ApiError", "HttpServer", "Readiness", "create_api"]

log = logging.getLogger(__name__)

API_MODULES: tuple[ModuleType, ...] = (
    _auth, _state, _history, _alerts, _live, _registry, _search, _page,
)  # fmt: skip
"""The route modules of the full API and the live page, besides health and metrics (always
served)."""


def create_api(context: ApiContext, *, full: bool = True) -> web.Application:
    """The application: health and metrics, and with ``full`` the API, its OpenAPI document
    and the live page."""
    # First, so that it counts the status the error middleware answers with.
    middlewares: list[Any] = [request_metrics(context.registry), error_middleware]
    if full:
        middlewares.append(_auth.auth_middleware)
    app = web.Application(middlewares=middlewares)
    app[CONTEXT] = context
    if context.store is not None:
        app.on_cleanup.append(_close_store)
    if context.device_registry is not None:
        app.on_startup.append(_start_registry)
        app.on_cleanup.append(_stop_registry)
    app.add_routes(_health.ROUTES)
    if full:
        for module in API_MODULES:
            app.add_routes(module.ROUTES)
        app[_live.STREAMS] = set()
        app[_search.CLIENT] = _search.ClientHolder()
        app.on_cleanup.append(_search.close_client)
        app.on_shutdown.append(_live.close_streams)
        app.add_routes([openapi.route([_health.PATHS, *(m.PATHS for m in API_MODULES)])])
    return app


async def _close_store(app: web.Application) -> None:
    store = app[CONTEXT].store
    if store is not None:
        await store.close()


async def _start_registry(app: web.Application) -> None:
    device_registry = app[CONTEXT].device_registry
    if device_registry is not None:
        # Redis's snapshot at once, PostgreSQL's in the background (it may be away).
        await device_registry.start()


async def _stop_registry(app: web.Application) -> None:
    device_registry = app[CONTEXT].device_registry
    if device_registry is not None:
        await device_registry.stop()


class HttpServer(Service):
    """Serves an application on ``host:port`` for as long as the service runs (beside the
    worker's processor, or alone in ``pulse api``)."""

    def __init__(self, app: web.Application, port: int, host: str = "0.0.0.0", **kwargs: Any):
        super().__init__(**kwargs)
        self.app = app
        self.port = port
        self.host = host
        self._runner: web.AppRunner | None = None

    async def on_start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        log.info("HTTP: serving on %s:%d", self.host, self.port)

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
