"""OpenSearch's async client as Pulse makes it: from ``PULSE_SEARCH_URL``, JSON by orjson.

One place builds it (:func:`search_client`) for the indexer (pulse/sinks/search.py) and the
readers (the search API, ``pulse search``). The client's own retries are off: the indexer
waits out a server that is away or pushing back itself (pulse/sinks/_retry.py), and a reader
answers 503 at once. Its per-request log lines (INFO for each request, WARNING for each
failed one) are silenced below ERROR: the sink's health logs a change of state once.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
from opensearchpy import AsyncOpenSearch
from opensearchpy.serializer import Serializer

from pulse.settings import Settings
from pulse.tls import TLSFiles, client_context

REQUEST_TIMEOUT = 60.0
"""Seconds a request may take (a bulk request of 5 MB on a busy node takes a few)."""

logging.getLogger("opensearch").setLevel(logging.ERROR)


class OrjsonSerializer(Serializer):
    """JSON in and out by orjson: a bulk response of thousands of items is read several
    times faster than by the standard library."""

    mimetype = "application/json"

    def loads(self, s: str | bytes) -> Any:
        return orjson.loads(s)

    def dumps(self, data: Any) -> Any:
        if isinstance(data, (str, bytes)):
            return data
        return orjson.dumps(data).decode()


def search_client(settings: Settings, timeout: float = REQUEST_TIMEOUT) -> AsyncOpenSearch:
    """The async client of ``PULSE_SEARCH_URL``: its user and password, if any, as HTTP basic
    authentication; with ``https``, the TLS context every Pulse client makes
    (pulse/tls.py: the certificate and host name verified against ``PULSE_SEARCH_CAFILE``,
    else the system's CAs)."""
    url = urlsplit(settings.search_url)
    https = url.scheme == "https"
    # Without a port: OpenSearch's 9200, or 443 with https (as opensearch-py reads a URL).
    host: dict[str, Any] = {"host": url.hostname, "port": url.port or (443 if https else 9200)}
    options: dict[str, Any] = {}
    if url.username or url.password:
        options["http_auth"] = (unquote(url.username or ""), unquote(url.password or ""))
    if https:
        files = TLSFiles(
            settings.search_cafile, "", "", "PULSE_SEARCH_CAFILE", "", ""
        )  # fmt: skip
        options["ssl_context"] = client_context(files)
    return AsyncOpenSearch(
        hosts=[host],
        use_ssl=https,
        serializer=OrjsonSerializer(),
        max_retries=0,
        retry_on_timeout=False,
        timeout=timeout,
        **options,
    )
