"""Alert transitions from the ``alerts`` topic to the registry's webhooks (``pulse notifier``).

The notifier (agents/notifier.py, consumer group ``{PULSE_APP_ID}-notifier``) reads the topic
with :func:`pulse.sinks.alerts.alert_record` and hands each fetch to :class:`WebhookSink`,
then commits. The sink sends every transition that is not silenced to each webhook of the
registry snapshot in use (``RegistryCache.snapshot``, kept current by NOTIFY) that matches
it (:meth:`models.registry.Webhook.matches`: its rule, or its severity, or every alert), and
returns once each such delivery has succeeded or is in the output dead-letter topic.
Silenced transitions are sent nowhere (the history records them); a fetch waits while the
process has no registry snapshot at all (PostgreSQL and Redis away at start), never
dropping what it holds.

One delivery is an HTTP ``POST`` of the transition's JSON exactly as the topic holds it,
with the headers:

* ``Content-Type: application/json``;
* ``Idempotency-Key: {id}:{state}``: the same for every try and every repeat of one
  transition (after a crash, a rebalance, a repeat in the topic), different for any other.
  The alert's id alone (``Pulse-Alert-Id``) does not tell a transition: an absence rule's
  resolution at a reading and its next firing from that reading share it;
* ``Pulse-Alert-Id`` (the alert's id: ``hash(rule, device, window, start)``),
  ``Pulse-Alert-State`` (``firing`` or ``resolved``), ``User-Agent: pulse-notifier``.

A URL's user info (``https://user:secret@host/...``) is sent as HTTP basic authentication
and never shown: dead letters, logs and metrics name a webhook by its id and its URL
without user info, query or fragment.

The receiver's answer decides:

* 2xx: delivered;
* 429 (with or without ``Retry-After``), and 503 with ``Retry-After``: the receiver asks to
  wait; the delivery waits as long as it says (up to 300 s) or with backoff, and tries
  again, however often: never a reason to give up;
* a connection error, a timeout (``PULSE_NOTIFIER_TIMEOUT``), 5xx, 408: a failed try; tried
  again after ``PULSE_NOTIFIER_RETRY_DELAY``, doubling with jitter up to
  ``PULSE_NOTIFIER_MAX_RETRY_DELAY``, ``PULSE_NOTIFIER_MAX_ATTEMPTS`` tries in all; then it
  goes to the output dead-letter topic as ``undeliverable`` with the last answer;
* any other answer (3xx: redirects are not followed; 4xx): the receiver refuses it; to the
  dead-letter topic at once as ``refused``, with the status and the start of the body.

Order: per webhook, the transitions of one device are delivered one after another in the
topic's order (a device's records are in one partition), so a firing reaches a receiver
before its resolution, and a dead-lettered one before those after it are tried. Devices are
delivered side by side, ``PULSE_NOTIFIER_CONCURRENCY`` at a time per webhook, and webhooks
side by side; a fetch is committed once every delivery of it is done, so a receiver that
keeps answering 429 holds the notifier (and the records wait in Kafka, not in memory).

A webhook removed from the registry while its deliveries are retried stops being tried (they
are counted ``cancelled``); a webhook added receives the transitions delivered from then on,
including older ones still waiting in the topic.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from models.outputs import RefusedOutput
from models.registry import RegistrySnapshot, Webhook
from pulse.settings import REDACTED, Settings
from pulse.sinks._base import FlushBatch, RecordSink, SinkHealth
from pulse.sinks._retry import MAX_RETRY_AFTER, parse_retry_after
from pulse.sinks.alerts import AlertRecord, alert_record
from pulse.sinks.dead_letters import OutputDeadLetters

log = logging.getLogger(__name__)

ANSWER_BYTES = 1024
"""How much of a receiver's body a failure keeps (for the dead letter and the log)."""
SNAPSHOT_WAIT = 0.5
"""Seconds between two looks for a first registry snapshot."""
USER_AGENT = "pulse-notifier"


class SnapshotSource(Protocol):
    """Where the sink reads the webhooks: pulse.registry.cache.RegistryCache."""

    @property
    def snapshot(self) -> RegistrySnapshot | None:
        """The registry snapshot in use (None: none loaded yet)."""


def shown_url(url: str) -> str:
    """``url`` as it may be shown: without user info (a password), query or fragment (where
    tokens travel too)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _scrub(url: str, text: str) -> str:
    """``text`` (an error message) without ``url``'s user info, query or fragment."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    for secret in sorted((userinfo, parts.query, parts.fragment), key=len, reverse=True):
        if secret:
            text = text.replace(secret, REDACTED)
    return text


@dataclass
class WebhookState:
    """One webhook's counts and health (``/metrics``, ``/health``), kept per process."""

    webhook: Webhook
    health: SinkHealth
    delivered: int = 0
    """Deliveries the receiver took (2xx)."""
    failed: int = 0
    """Failed tries (each try counts: connection errors, timeouts, 5xx, 408, refusals)."""
    waits: int = 0
    """Answers that asked to wait (429, 503 with Retry-After): not failures."""
    cancelled: int = 0
    """Deliveries given up because the webhook was removed meanwhile."""
    retrying: set[tuple[str, str]] = field(default_factory=set)
    """The transitions (id, state) whose delivery is failing now: the health is ``ok`` again
    once none is."""

    @property
    def dead_lettered(self) -> int:
        return self.health.dead_letters


@dataclass(frozen=True, slots=True)
class _Answer:
    """One try's outcome: ``status`` None for a connection error or timeout."""

    status: int | None
    text: str
    retry_after: float | None = None


class WebhookSink(RecordSink[AlertRecord]):
    """Alert transitions to the webhooks that match them (see the module doc)."""

    name = "webhooks"

    def __init__(
        self,
        settings: Settings,
        registry: SnapshotSource,
        dead_letters: OutputDeadLetters | None = None,
        sink_health: list[SinkHealth] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.dead_letters = dead_letters
        self.sink_health = sink_health
        """Where each webhook's health is added when first used (the process's list)."""
        self.webhooks: dict[int, WebhookState] = {}
        self.silenced = 0
        """Silenced transitions read (recorded by the history, sent nowhere)."""
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.notifier_timeout),
            connector=aiohttp.TCPConnector(limit=0),
            headers={"User-Agent": USER_AGENT},
        )

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def read_record(self, value: bytes | None) -> AlertRecord:
        return alert_record(value)

    async def write(self, batch: FlushBatch) -> None:
        """Nothing: this sink is written from the alerts topic, never by a flush."""

    async def write_records(
        self, records: Sequence[AlertRecord], keys: Sequence[bytes | None]
    ) -> None:
        snapshot = await self._snapshot()
        loud = [r for r in records if not r.silenced]
        self.silenced += len(records) - len(loud)
        deliveries = []
        for hook in snapshot.webhooks:
            mine = [r for r in loud if hook.matches(r.rule, r.severity)]
            if mine:
                deliveries.append(self._deliver_all(hook, mine))
        await asyncio.gather(*deliveries)

    async def _snapshot(self) -> RegistrySnapshot:
        """The snapshot in use; waits (``waiting``) while there is none."""
        while (snapshot := self.registry.snapshot) is None:
            self.health.waiting(
                "no registry snapshot yet (PostgreSQL and Redis away, or no schema): "
                "transitions wait in Kafka"
            )
            await asyncio.sleep(SNAPSHOT_WAIT)
        self.health.ok()
        return snapshot

    def state_of(self, hook: Webhook) -> WebhookState:
        """``hook``'s counts and health, made on first use."""
        state = self.webhooks.get(hook.id)
        if state is None:
            state = WebhookState(hook, SinkHealth(f"webhook-{hook.id}"))
            self.webhooks[hook.id] = state
            if self.sink_health is not None:
                self.sink_health.append(state.health)
        return state

    async def _deliver_all(self, hook: Webhook, records: list[AlertRecord]) -> None:
        """Deliver ``records`` to ``hook``: per device in order, devices side by side."""
        state = self.state_of(hook)
        chains: dict[str, list[AlertRecord]] = {}
        for record in records:
            chains.setdefault(record.device, []).append(record)
        slots = asyncio.Semaphore(self.settings.notifier_concurrency)

        async def chain(items: list[AlertRecord]) -> None:
            async with slots:
                for item in items:
                    await self._deliver(hook, state, item)

        await asyncio.gather(*(chain(items) for items in chains.values()))

    def _wanted(self, hook: Webhook) -> bool:
        snapshot = self.registry.snapshot
        return snapshot is None or hook in snapshot.webhooks

    async def _deliver(self, hook: Webhook, state: WebhookState, record: AlertRecord) -> None:
        """One transition to one webhook: until delivered, dead-lettered or the webhook is
        removed (module doc)."""
        s = self.settings
        transition = (record.id, record.state)
        tries = 0
        delay = s.notifier_retry_delay
        try:
            while True:
                if not self._wanted(hook):
                    state.cancelled += 1
                    log.info(
                        "webhook %d (%s) was removed: delivery of %s %s given up",
                        hook.id, shown_url(hook.url), record.id, record.state,
                    )  # fmt: skip
                    return
                answer = await self._post(hook, record)
                status = answer.status
                if status is not None and 200 <= status < 300:
                    state.delivered += 1
                    return
                wait_asked = status == 429 or (status == 503 and answer.retry_after is not None)
                if wait_asked:
                    state.waits += 1
                    state.retrying.add(transition)
                    state.health.waiting(f"{shown_url(hook.url)}: {answer.text}")
                    if answer.retry_after is not None:
                        wait = min(answer.retry_after, MAX_RETRY_AFTER)
                    else:
                        wait, delay = _jittered(delay), min(delay * 2, s.notifier_max_retry_delay)
                    await asyncio.sleep(wait)
                    continue
                state.failed += 1
                tries += 1
                retryable = status is None or status == 408 or status >= 500
                if not retryable:
                    await self._dead_letter(hook, state, record, "refused", answer.text)
                    return
                if tries >= s.notifier_max_attempts:
                    await self._dead_letter(
                        hook, state, record, "undeliverable",
                        f"{tries} tries failed; the last: {answer.text}",
                    )  # fmt: skip
                    return
                state.retrying.add(transition)
                state.health.waiting(f"{shown_url(hook.url)}: {answer.text}")
                log.debug("webhook %d: try %d of %s failed: %s", hook.id, tries, record.id,
                          answer.text)  # fmt: skip
                wait, delay = _jittered(delay), min(delay * 2, s.notifier_max_retry_delay)
                await asyncio.sleep(wait)
        finally:
            state.retrying.discard(transition)
            if not state.retrying and state.health.state != SinkHealth.OK:
                state.health.ok()

    async def _post(self, hook: Webhook, record: AlertRecord) -> _Answer:
        session = self.session
        assert session is not None, "start() the sink first"
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": f"{record.id}:{record.state}",
            "Pulse-Alert-Id": record.id,
            "Pulse-Alert-State": record.state,
        }
        try:
            async with session.post(
                hook.url, data=record.json, headers=headers, allow_redirects=False
            ) as response:
                body = await response.content.read(ANSWER_BYTES)
                text = f"HTTP {response.status} {response.reason or ''}".rstrip()
                excerpt = body.decode("utf-8", "replace").strip()
                if excerpt:
                    text += f": {excerpt}"
                if 300 <= response.status < 400 and "Location" in response.headers:
                    where = shown_url(response.headers["Location"])
                    text += f" (redirect to {where}, not followed)"
                return _Answer(
                    response.status,
                    _scrub(hook.url, text),
                    parse_retry_after(response.headers.get("Retry-After")),
                )
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            detail = str(exc) or "no answer"
            if isinstance(exc, TimeoutError):
                detail = f"no answer within {self.settings.notifier_timeout:g} s"
            return _Answer(None, _scrub(hook.url, f"{type(exc).__name__}: {detail}"))

    async def _dead_letter(
        self, hook: Webhook, state: WebhookState, record: AlertRecord, reason: str, answer: str
    ) -> None:
        assert self.dead_letters is not None, "a failed delivery needs the dead letters"
        letter = RefusedOutput(
            self.name,
            f"webhook {hook.id} {shown_url(hook.url)}",
            reason,
            answer,
            record.device.encode(),
            record.json,
            self.settings.max_message_bytes,
        )
        await self.dead_letters.store([letter], state.health)


def _jittered(delay: float) -> float:
    """A wait of half to all of ``delay`` (so that deliveries that failed together do not
    all come back together)."""
    return delay * random.uniform(0.5, 1.0)
