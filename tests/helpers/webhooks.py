"""A real webhook receiver for the notifier's tests: an aiohttp server on a free loopback
port, in a thread of its own (so that a notifier in the test's event loop or in another
process reaches it alike), recording every request and answering as the test planned."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict


@dataclass(frozen=True)
class Reply:
    """An answer the receiver gives: status, headers, body."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str = "ok"


@dataclass(frozen=True)
class Received:
    """One request as the receiver got it, and the status it answered."""

    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    at: float
    """time.monotonic() when it arrived."""
    status: int

    @property
    def key(self) -> str:
        return self.headers["Idempotency-Key"]


class Receiver:
    """Answers each path's planned replies in order (:meth:`plan`), then its standing reply
    (:meth:`always`), else 200; each after ``delay`` seconds. :attr:`requests` lists every
    request, in arrival order."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.requests: list[Received] = []
        self._plans: dict[str, list[Reply]] = {}
        self._always: dict[str, Reply] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def plan(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self._plans.setdefault(path, []).extend(replies)

    def always(self, path: str, reply: Reply) -> None:
        with self._lock:
            self._always[path] = reply

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def start(self) -> Receiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _handle(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        body = await request.read()
        with self._lock:
            plan = self._plans.get(request.path)
            reply = plan.pop(0) if plan else self._always.get(request.path, Reply())
            self.requests.append(
                Received(
                    request.path,
                    request.query_string,
                    CIMultiDict(request.headers),
                    body,
                    arrived,
                    reply.status,
                )
            )
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=reply.status, headers=dict(reply.headers), text=reply.body)
