"""OpenSearch behind TLS and a password, as a cluster with its security plugin answers: an
HTTPS server (a certificate of the test's CA) that forwards every request with the right
HTTP basic credentials to the session's OpenSearch, and answers any other with 401 and the
security plugin's ``WWW-Authenticate``. It runs in a thread of the test process (its own
event loop); ``password`` may be changed while it runs (an operator's fix)."""

from __future__ import annotations

import asyncio
import base64
import ssl
import threading

import aiohttp
from aiohttp import web

from pulse.local.stack import free_port
from tests.helpers.tls import Issued


class SearchProxy:
    def __init__(self, upstream: str, server: Issued, user: str, password: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.user = user
        self.password = password
        self.refused = 0
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(server.cert, server.key)
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def url(self, password: str | None = None) -> str:
        """``https://USER:PASSWORD@127.0.0.1:PORT`` (the password percent-encoded)."""
        from urllib.parse import quote

        secret = quote(self.password if password is None else password, safe="")
        return f"https://{self.user}:{secret}@127.0.0.1:{self.port}"

    def start(self) -> SearchProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self) -> None:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._context).start()

    async def _handle(self, request: web.Request) -> web.Response:
        wanted = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if request.headers.get("Authorization") != wanted:
            self.refused += 1
            return web.json_response(
                {"error": "Unauthorized", "status": 401},
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="OpenSearch Security"'},
            )
        body = await request.read()
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("content-type", "accept", "content-encoding")
        }
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method,
                self.upstream + request.rel_url.path_qs,
                data=body or None,
                headers=headers,
            ) as answer,
        ):
            return web.Response(
                status=answer.status,
                body=await answer.read(),
                content_type=answer.content_type,
            )
