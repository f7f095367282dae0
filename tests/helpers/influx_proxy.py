"""An HTTP server in front of VictoriaMetrics that answers InfluxDB writes as a test says.

It runs in a thread of the test process (its own event loop), so that a worker process can
write to it while the test changes its answers: ``refuse`` holds the status and body of the
answer every write gets (None: forward the write to VictoriaMetrics and its answer back).
"""

from __future__ import annotations

import asyncio
import threading

import aiohttp
from aiohttp import web

from pulse.local.stack import free_port


class InfluxProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.refuse: tuple[int, str] | None = None
        self.answered: list[int] = []
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> InfluxProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        refuse = self.refuse
        if refuse is not None:
            self.answered.append(refuse[0])
            return web.Response(status=refuse[0], text=refuse[1], content_type="application/json")
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.upstream}{request.path_qs}", data=body, headers=headers) as up,
        ):
            self.answered.append(up.status)
            return web.Response(status=up.status, body=await up.read())
