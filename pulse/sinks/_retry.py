"""Waiting out a target that is away or pushing back, without dropping anything.

A target's answer is one of three kinds, and each sink sorts its target's answers into them:

* backpressure (:class:`RetryLater`: HTTP 429 and 5xx, a connection refused or timed out, a
  broker away): wait, with backoff and jitter or as long as ``Retry-After`` says, and try the
  same output again; the sink's state is ``waiting``;
* a refusal of the client itself (:class:`RefusedByTarget`: a bad token, a missing bucket or
  topic, no permission): an operator's problem; keep the outputs and try again with backoff
  until it is fixed; the state is ``refused_by_target``, with the reason;
* a refusal of the content (:class:`ContentRefused`: a line or record the target will not
  take): not retried here; the sink splits the batch to find what is refused, writes the
  rest and dead-letters the refused outputs with the answer (pulse/sinks/dead_letters.py).
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pulse.sinks._base import SinkHealth

T = TypeVar("T")

MAX_RETRY_DELAY = 5.0
"""The longest backoff between two tries: after a target comes back, output resumes within
about this long (a wait that kept doubling would leave a sink asleep long after an outage
ended), while a target that is away gets a try every few seconds, which costs little."""
FIRST_RETRY_DELAY = 0.1
MAX_RETRY_AFTER = 300.0
"""The longest wait a ``Retry-After`` gets: the target's word is honoured, but a date far
in the future (a clock gone wrong) must not put the sink to sleep for good."""

log = logging.getLogger(__name__)


class RetryLater(Exception):
    """Backpressure: the target asked to repeat later (HTTP 429, 503) or could not be
    reached. ``retry_after``: seconds it asked to wait, if it said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RefusedByTarget(Exception):
    """The target refused the client itself (credentials, permissions, a missing bucket or
    topic): retried with backoff until an operator fixes it; nothing is dropped."""


class ContentRefused(Exception):
    """The target refused (some of) the content it was sent; ``answer`` is what it said.
    ``too_large``: it refused the request's size (smaller requests may pass)."""

    def __init__(self, answer: str, *, too_large: bool = False) -> None:
        super().__init__(answer)
        self.answer = answer
        self.too_large = too_large


class Backoff:
    """Waits between tries: exponential from FIRST_RETRY_DELAY up to ``max_delay``, each wait
    drawn between half and all of the current delay (jitter, so that the requests of many
    sinks and workers that failed together do not all come back together)."""

    def __init__(self, max_delay: float = MAX_RETRY_DELAY) -> None:
        self.max_delay = max_delay
        self.delay = FIRST_RETRY_DELAY
        self.failures = 0

    def next_wait(self, retry_after: float | None = None) -> float:
        """The wait before the next try (``retry_after``: what the target asked for, honoured
        up to MAX_RETRY_AFTER instead of the backoff)."""
        self.failures += 1
        if retry_after is not None:
            wait = min(max(retry_after, 0.0), MAX_RETRY_AFTER)
        else:
            wait = self.delay * random.uniform(0.5, 1.0)
        self.delay = min(self.delay * 2, self.max_delay)
        return wait


async def retry_forever(
    what: str,
    attempt: Callable[[], Awaitable[T]],
    retryable: tuple[type[BaseException], ...],
    health: SinkHealth,
    *,
    max_delay: float = MAX_RETRY_DELAY,
) -> T:
    """Run ``attempt`` until it succeeds, reporting each kind of failure to ``health``.

    :class:`RetryLater` and the exceptions in ``retryable`` (connection errors) are
    backpressure; :class:`RefusedByTarget` a refusal of the client: both are retried with
    :class:`Backoff`, logged once per change of state (by ``health``) and at debug level per
    try. Anything else (:class:`ContentRefused`, a bug) propagates.
    """
    backoff = Backoff(max_delay)
    while True:
        try:
            result = await attempt()
        except RefusedByTarget as exc:
            health.refused(str(exc))
            wait = backoff.next_wait()
        except (RetryLater, *retryable) as exc:  # type: ignore[misc]
            health.waiting(str(exc) or type(exc).__name__)
            wait = backoff.next_wait(exc.retry_after if isinstance(exc, RetryLater) else None)
        else:
            health.ok()
            return result
        log.debug("%s failed (try %d), retrying in %.2fs", what, backoff.failures, wait)
        await asyncio.sleep(wait)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, in either of its forms (RFC 9110):
    delta-seconds (``120``) or an HTTP date (``Wed, 21 Oct 2015 07:28:00 GMT``; a date in
    the past is 0). None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)  # delta-seconds (some servers send fractions: taken too)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # the obsolete asctime form has no zone: HTTP dates are GMT
        when = when.replace(tzinfo=datetime.UTC)
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)
