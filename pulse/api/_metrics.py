"""Request metrics of the HTTP API: a count and a latency histogram per route and status.

:func:`request_metrics` makes an aiohttp middleware and registers its two metrics on the
registry ``/metrics`` serves. Labelled by the route's pattern (``/api/devices/{device}``),
not the path, so that the series stay as few as the routes however many devices are asked
for; a request no route matches counts as ``unmatched``. One observation per request.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
"""Seconds: the goals are a few milliseconds (5 ms for a device, 20 ms for a history)."""


def route_of(request: web.Request) -> str:
    """The pattern of the route that matched ``request`` (``unmatched`` for none)."""
    info = request.match_info
    if info.http_exception is not None:
        return "unmatched"
    route = info.route
    resource = route.resource
    return resource.canonical if resource is not None else "unmatched"


_made: weakref.WeakKeyDictionary[CollectorRegistry, Middleware] = weakref.WeakKeyDictionary()
"""The middleware made for each registry: its metrics can be registered there only once."""


def request_metrics(registry: CollectorRegistry) -> Middleware:
    """A middleware counting each request and its latency by route, method and status,
    registered on ``registry`` (``pulse_api_requests_total``, ``pulse_api_request_seconds``;
    one middleware per registry, made on first use). Place it first, so that it sees the
    status the error middleware answers with. A stream (``/api/live``) counts once it ends,
    with its whole duration."""
    made = _made.get(registry)
    if made is not None:
        return made
    requests = Counter(
        "pulse_api_requests",
        "HTTP requests answered, by route pattern, method and status",
        ["route", "method", "status"],
        registry=registry,
    )
    seconds = Histogram(
        "pulse_api_request_seconds",
        "Time to answer an HTTP request (until its handler returned), by route pattern, "
        "method and status",
        ["route", "method", "status"],
        buckets=BUCKETS,
        registry=registry,
    )

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        began = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            labels = (route_of(request), request.method, str(status))
            requests.labels(*labels).inc()
            seconds.labels(*labels).observe(time.perf_counter() - began)

    _made[registry] = middleware
    return middleware
