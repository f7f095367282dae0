"""The live page: ``GET /`` (``static/index.html``) and ``GET /static/{path}`` (its script, its
style and the vendored uPlot with its licence), open without a token: the page signs in
itself when the API answers 401.

The files ship inside the package (pyproject package-data) and are read once, at import, so
a request never touches the disk and only the files listed there are ever served (no path
from a request reaches the file system). Each answer carries a strong ETag and
``Cache-Control: no-cache``: a browser keeps its copy and revalidates it (a 304 without a
body), so a page left open picks up a new version at its next reload. The page's
Content-Security-Policy allows nothing from other origins.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".LICENSE": "text/plain; charset=utf-8",
}
"""The content type of each kind of file under ``static/`` (by the end of its name); a file of
another kind there stops the import, so that none is ever served with a guessed type."""

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
"""Scripts, styles and connections from the page's own origin only: nothing from the
internet, and no inline script for an injected device id to run in."""


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def _content_type(name: str) -> str:
    for ending, content_type in CONTENT_TYPES.items():
        if name.endswith(ending):
            return content_type
    raise ValueError(f"pulse/api/static/{name}: no content type for this kind of file")


def _load() -> dict[str, StaticFile]:
    """Every file under ``static/``, by its path there (``vendor/uPlot.iife.min.js``)."""
    files: dict[str, StaticFile] = {}
    pending = [(resources.files("pulse.api").joinpath("static"), "")]
    while pending:
        folder, prefix = pending.pop()
        for entry in folder.iterdir():
            if entry.is_dir():
                pending.append((entry, f"{prefix}{entry.name}/"))
            elif entry.is_file():
                body = entry.read_bytes()
                etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
                files[prefix + entry.name] = StaticFile(body, _content_type(entry.name), etag)
    return files


FILES = _load()


def _answer(request: web.Request, file: StaticFile, headers: dict[str, str]) -> web.Response:
    headers = {"ETag": file.etag, "Cache-Control": "no-cache", **headers}
    headers["X-Content-Type-Options"] = "nosniff"
    if file.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = file.content_type
    return web.Response(body=file.body, headers=headers)


async def page(request: web.Request) -> web.Response:
    return _answer(
        request,
        FILES["index.html"],
        {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Referrer-Policy": "no-referrer"},
    )


async def static(request: web.Request) -> web.Response:
    file = FILES.get(request.match_info["path"])
    if file is None or request.match_info["path"] == "index.html":
        raise web.HTTPNotFound()
    return _answer(request, file, {})


ROUTES = [web.get("/", page), web.get("/static/{path:.+}", static)]


def _file_response(description: str, media_types: tuple[str, ...]) -> dict[str, Any]:
    return {
        "description": description,
        "content": {media_type: {"schema": {"type": "string"}} for media_type in media_types},
    }


PATHS: dict[str, Any] = {
    "/": {
        "get": {
            "summary": "The live page (needs no token: it signs in itself)",
            "responses": {
                "200": _file_response("The page", ("text/html",)),
                "304": {"description": "The browser's copy is current (If-None-Match)"},
            },
        }
    },
    "/static/{path}": {
        "get": {
            "summary": "The page's script and style, and the vendored uPlot with its licence",
            "parameters": [
                {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": _file_response("The file", ("text/javascript", "text/css", "text/plain")),
                "304": {"description": "The browser's copy is current (If-None-Match)"},
                "404": {"$ref": "#/components/responses/Error"},
            },
        }
    },
}
