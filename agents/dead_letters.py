"""A Faust agent over the dead-letter topic: counts per reason and the latest rejections.

Low volume, one event at a time, as Faust agents are meant to be used. Redis keys:
``P:dlq:counts`` hash (reason -> count) and ``P:dlq:recent`` list (newest first, at most
:data:`RECENT`). The counts are a monitor, at-least-once: a crash can count a record twice.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable

import faust
import orjson

from pulse.app import pulse_agent
from pulse.redis_clients import redis_client
from pulse.settings import Settings

log = logging.getLogger(__name__)

RECENT = 100


@pulse_agent
def register(app: faust.App, settings: Settings) -> None:
    """Add the dead-letter monitor to ``app``."""
    topic = app.topic(settings.topic_dlq, value_serializer="raw", key_serializer="raw")
    counts_key = f"{settings.redis_prefix}:dlq:counts"
    recent_key = f"{settings.redis_prefix}:dlq:recent"
    client = redis_client(settings)

    @app.agent(topic, name="dead-letter-monitor")
    async def monitor_dead_letters(letters: AsyncIterable[bytes]) -> None:
        async for raw in letters:
            try:
                reason = str(orjson.loads(raw)["reason"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                reason = "unreadable"
            pipe = client.pipeline(transaction=False)
            pipe.hincrby(counts_key, reason, 1)
            pipe.lpush(recent_key, raw)
            pipe.ltrim(recent_key, 0, RECENT - 1)
            pipe.expire(counts_key, settings.state_ttl)
            pipe.expire(recent_key, settings.state_ttl)
            await pipe.execute()
