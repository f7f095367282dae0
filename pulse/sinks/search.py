"""Documents into OpenSearch: bulk requests into daily indices, at OpenSearch's pace.

One :class:`SearchSink` per kind of document (alerts, dead letters, windows:
pulse/search/documents.py), written by the indexer (agents/indexer.py) from the kind's
topic: each record is read into its :class:`~pulse.search.documents.Document` (or None: a
window the indexer does not index), a fetch's documents are written in bulk requests of at
most ``PULSE_SEARCH_BULK_DOCS`` documents and ``PULSE_SEARCH_BULK_BYTES`` bytes, each
document an ``index`` action with its own id into its daily index: a repeat overwrites
itself, so the index holds each id once whatever is replayed.

The answers, sorted as every sink sorts them (pulse/sinks/_retry.py):

* Backpressure: the whole request answered 429 (OpenSearch's queue full, a circuit breaker)
  or 5xx, or no answer at all; or single items answered 429 (a rejected execution, an index
  blocked for disk) or 5xx (a shard unavailable): those documents are sent again after a
  wait (backoff with jitter, up to 5 s), never dropped. The sink's state is ``waiting``.
* A refusal of the client: 401, 403 (credentials, permissions, a write block an operator
  set), an item's 404 (an index that may not be created): kept and retried with backoff
  until fixed; state ``refused_by_target``.
* A refusal of the content: an item answered 4xx otherwise (a mapping conflict, a value a
  field cannot take), or a document alone refused as too large (413): stored in the output
  dead-letter topic with OpenSearch's answer, the rest written. A whole request refused as
  too large is split in halves.

Before its first write the sink puts its kind's index template (pulse/search/indices.py),
so that every daily index is made by it; and every hour (from its start) it deletes the
daily indices past ``PULSE_SEARCH_RETENTION_DAYS``. A document that would land in one is
not indexed (counted in :attr:`SearchSink.expired`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from opensearchpy import AsyncOpenSearch
from opensearchpy.exceptions import ConnectionError as SearchConnectionError
from opensearchpy.exceptions import TransportError

from models.outputs import RefusedOutput
from pulse.search import indices
from pulse.search.client import search_client
from pulse.search.documents import MS_PER_DAY, Document, alert_document, window_document
from pulse.settings import Settings
from pulse.sinks._base import FlushBatch, RecordSink
from pulse.sinks._retry import Backoff, RefusedByTarget, RetryLater, retry_forever
from pulse.sinks.dead_letters import OutputDeadLetters

log = logging.getLogger(__name__)

EXPIRE_INTERVAL = 3600.0
"""Seconds between two deletions of the daily indices past the retention."""
FILTER_PATH = "errors,items.*.status,items.*.error"
"""What a bulk answer holds: whether any item failed and each item's status (and error)."""
CLIENT_STATUSES = frozenset({401, 403, 404})
"""An item's (or a request's) status that an operator must act on: retried until fixed."""


def _status(exc: TransportError) -> int | None:
    return exc.status_code if isinstance(exc.status_code, int) else None


class SearchSink(RecordSink[Document | None]):
    """One kind's documents into OpenSearch (see the module's docstring)."""

    def __init__(
        self,
        settings: Settings,
        kind: str,
        dead_letters: OutputDeadLetters | None = None,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.kind = kind
        self.name = f"search-{kind}"
        self.dead_letters = dead_letters
        self.prefix = settings.search_prefix
        self.windows = frozenset(settings.search_windows)
        self.max_docs = settings.search_bulk_docs
        self.max_bytes = settings.search_bulk_bytes
        self.now = now
        self.url_shown = settings.shown()["PULSE_SEARCH_URL"]
        self.client: AsyncOpenSearch | None = None
        self._template_put = False
        self._indices: dict[int, bytes] = {}
        self._expiring: asyncio.Task[None] | None = None
        self.indexed = 0
        """Documents OpenSearch acknowledged so far (a repeat counts again)."""
        self.expired = 0
        """Documents not indexed because their day is past the retention."""
        self.skipped = 0
        """Records read that are no document of this sink (windows not indexed)."""
        self.requests = 0
        """Bulk requests answered (each try counts)."""
        self.deleted_indices: list[str] = []
        """Daily indices this sink deleted for the retention, oldest first."""

    @property
    def target(self) -> str:
        return f"alias {indices.alias(self.prefix, self.kind)}"

    async def start(self) -> None:
        self.client = search_client(self.settings)
        if self.settings.search_retention_days > 0:
            self._expiring = asyncio.create_task(self._expire_forever())

    async def stop(self) -> None:
        if self._expiring is not None:
            self._expiring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiring
        if self.client is not None:
            await self.client.close()

    async def write(self, batch: FlushBatch) -> None:
        """Nothing: this sink is written from its topic, never by a flush."""

    def read_record(self, value: bytes | None) -> Document | None:
        if self.kind == "alerts":
            return alert_document(value)
        if self.kind == "windows":
            document = window_document(value, self.windows)
            if document is None:
                self.skipped += 1
            return document
        raise AssertionError("dead letters are read with their record's time (agents/indexer.py)")

    # -- writing -------------------------------------------------------------------------

    def today(self) -> int:
        return int(self.now() * 1000) // MS_PER_DAY

    async def write_records(
        self, documents: Sequence[Document | None], keys: Sequence[bytes | None]
    ) -> None:
        first_kept = indices.first_kept_day(self.settings.search_retention_days, self.today())
        items: list[tuple[bytes, Document, bytes | None]] = []
        for document, key in zip(documents, keys, strict=True):
            if document is None:
                continue
            if document.day < first_kept:
                self.expired += 1
                continue
            items.append((self.action(document), document, key))
        if not items:
            return
        if not self._template_put:
            await retry_forever(
                f"{self.name} template",
                self.put_template,
                (SearchConnectionError,),
                self.health,
            )
            self._template_put = True
        refused: list[RefusedOutput] = []
        for chunk in self._chunks(items):
            refused += await self._write_chunk(chunk)
        if refused:
            assert self.dead_letters is not None, "a refused document, and no dead-letter topic"
            await self.dead_letters.store(refused, self.health)

    def action(self, document: Document) -> bytes:
        """The bulk action line of ``document``: ``index`` into its daily index, by its id
        (the index names cached per day)."""
        index = self._indices.get(document.day)
        if index is None:
            index = self._indices[document.day] = indices.index_name(
                self.prefix, self.kind, document.day
            ).encode()
        return b'{"index":{"_index":"%s","_id":%s}}' % (index, orjson.dumps(document.id))

    def _chunks(
        self, items: list[tuple[bytes, Document, bytes | None]]
    ) -> list[list[tuple[bytes, Document, bytes | None]]]:
        chunks: list[list[tuple[bytes, Document, bytes | None]]] = []
        chunk: list[tuple[bytes, Document, bytes | None]] = []
        size = 0
        for item in items:
            length = len(item[0]) + len(item[1].source) + 2
            if chunk and (len(chunk) >= self.max_docs or size + length > self.max_bytes):
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append(item)
            size += length
        if chunk:
            chunks.append(chunk)
        return chunks

    async def _write_chunk(
        self, chunk: list[tuple[bytes, Document, bytes | None]]
    ) -> list[RefusedOutput]:
        """Write one bulk request's documents until each is indexed or refused for its
        content; returns the refused."""
        assert self.client is not None
        refused: list[RefusedOutput] = []
        waiting = [chunk]
        backoff = Backoff()
        while waiting:
            again: list[list[tuple[bytes, Document, bytes | None]]] = []
            trouble: tuple[str, str] | None = None  # (kind, reason) of the last failure
            for part in waiting:
                body = b"".join(b"%s\n%s\n" % (action, doc.source) for action, doc, _ in part)
                try:
                    answer = await self.client.bulk(body=body, params={"filter_path": FILTER_PATH})
                except TransportError as exc:
                    self.requests += 1
                    status = _status(exc)
                    if status in (400, 413) and len(part) > 1:
                        middle = len(part) // 2  # find what is refused: halves, at once
                        again += [part[:middle], part[middle:]]
                    elif status in (400, 413):
                        refused.append(self._refused(part[0], f"HTTP {status}: {exc.info}"))
                    elif status in CLIENT_STATUSES:
                        again.append(part)
                        trouble = ("client", f"HTTP {status}: {exc.error}")
                    else:  # 429, 5xx, no answer (ConnectionError is a TransportError)
                        again.append(part)
                        trouble = ("wait", f"HTTP {exc.status_code}: {exc.error}")
                    continue
                self.requests += 1
                if not answer.get("errors"):
                    self.indexed += len(part)
                    continue
                retry: list[tuple[bytes, Document, bytes | None]] = []
                for item, result in zip(part, answer["items"], strict=True):
                    (outcome,) = result.values()
                    status = outcome.get("status", 500)
                    if 200 <= status < 300:
                        self.indexed += 1
                    elif status == 429 or status >= 500:
                        retry.append(item)
                        trouble = ("wait", f"item {status}: {_reason(outcome)}")
                    elif status in CLIENT_STATUSES:
                        retry.append(item)
                        trouble = ("client", f"item {status}: {_reason(outcome)}")
                    else:
                        refused.append(self._refused(item, orjson.dumps(outcome).decode()))
                if retry:
                    again.append(retry)
            waiting = again
            if trouble is not None and waiting:
                kind, reason = trouble
                if kind == "client":
                    self.health.refused(f"OpenSearch {self.url_shown}: {reason}")
                else:
                    self.health.waiting(f"OpenSearch {self.url_shown}: {reason}")
                await asyncio.sleep(backoff.next_wait())
        self.health.ok()
        return refused

    def _refused(self, item: tuple[bytes, Document, bytes | None], answer: str) -> RefusedOutput:
        action, document, key = item
        index = orjson.loads(action)["index"]["_index"]
        if self.dead_letters is None:
            raise AssertionError(f"OpenSearch refused {document.id}, and no dead-letter topic")
        return self.dead_letters.refused(self.name, f"index {index}", answer, key, document.source)

    async def put_template(self) -> None:
        """Put the kind's index template (``flattened`` instead of ``flat_object`` on
        Elasticsearch)."""
        assert self.client is not None
        try:
            about = await self.client.info()
            distribution = about.get("version", {}).get("distribution", "elasticsearch")
            flat = "flat_object" if distribution == "opensearch" else "flattened"
            body = indices.template(self.prefix, self.kind, self.settings.search_replicas, flat)
            await self.client.indices.put_index_template(
                name=indices.alias(self.prefix, self.kind), body=body
            )
        except TransportError as exc:
            raise _sorted(exc) from exc

    # -- retention -----------------------------------------------------------------------

    async def expire(self) -> list[str]:
        """Delete the daily indices of this kind past the retention now; returns them."""
        assert self.client is not None
        first_kept = indices.first_kept_day(self.settings.search_retention_days, self.today())
        pattern = f"{self.prefix}-{self.kind}-*"
        listed = await self.client.cat.indices(
            index=pattern, params={"format": "json", "h": "index", "expand_wildcards": "all"}
        )
        names = [entry["index"] for entry in listed]
        gone = indices.expired(names, self.prefix, self.kind, first_kept)
        for name in gone:
            await self.client.indices.delete(index=name, params={"ignore_unavailable": "true"})
            log.info("%s: deleted %s (past the retention of %d days)", self.name, name,
                     self.settings.search_retention_days)  # fmt: skip
        self.deleted_indices += gone
        return gone

    async def _expire_forever(self) -> None:
        while True:
            try:
                await self.expire()
            except (TimeoutError, TransportError, OSError) as exc:
                log.warning("%s: the retention's deletion failed, tried again in an hour: %s",
                            self.name, exc)  # fmt: skip
            await asyncio.sleep(EXPIRE_INTERVAL)


def _reason(outcome: dict[str, Any]) -> str:
    error = outcome.get("error")
    if isinstance(error, dict):
        return f"{error.get('type')}: {error.get('reason')}"
    return str(error)


def _sorted(exc: TransportError) -> Exception:
    """A failed request (other than a bulk's) as backpressure or a refusal of the client."""
    status = _status(exc)
    if status is not None and 400 <= status < 500 and status != 429:
        return RefusedByTarget(f"OpenSearch answered HTTP {status}: {exc.error} {exc.info}")
    return RetryLater(f"OpenSearch: HTTP {exc.status_code}: {exc.error}")
