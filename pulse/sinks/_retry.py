"""Waiting out a target that is away or pushing back, without dropping anything."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

MAX_RETRY_DELAY = 5.0
"""The longest wait between two tries: after a target comes back, output resumes within
about this long (a wait that kept doubling would leave a sink asleep long after an outage
ended), while a target that is away gets a try every few seconds, which costs little."""

log = logging.getLogger(__name__)


class RetryLater(Exception):
    """Raised by an attempt that the target asked to repeat later (e.g. HTTP 429)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


async def retry_forever(
    what: str,
    attempt: Callable[[], Awaitable[T]],
    retryable: tuple[type[BaseException], ...],
    *,
    first_delay: float = 0.1,
    max_delay: float = MAX_RETRY_DELAY,
) -> T:
    """Run ``attempt`` until it succeeds; wait between tries, honouring ``Retry-After``.

    Exceptions in ``retryable`` (and :class:`RetryLater`) are logged and retried with
    exponential backoff capped at ``max_delay``; anything else propagates.
    """
    delay = first_delay
    failures = 0
    while True:
        try:
            return await attempt()
        except (RetryLater, *retryable) as exc:  # type: ignore[misc]
            failures += 1
            wait = delay
            if isinstance(exc, RetryLater) and exc.retry_after is not None:
                wait = max(exc.retry_after, 0.0)
            log.warning("%s failed (try %d), retrying in %.2fs: %s", what, failures, wait, exc)
            await asyncio.sleep(wait)
            delay = min(delay * 2, max_delay)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form); None if absent or a date."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None
