"""Running an agents.topic_writer.TopicWriter in a test until it has written what it should."""

from __future__ import annotations

import asyncio
import time
from typing import TypeVar

from agents.topic_writer import TopicWriter

W = TypeVar("W", bound=TopicWriter)


async def run_until_written(writer: W, records: int, timeout: float = 30.0) -> W:
    """Start ``writer``, wait until it has written and committed exactly ``records`` records
    (failing at once if it crashes or after ``timeout`` seconds), stop it and return it."""
    await writer.start()
    try:
        deadline = time.monotonic() + timeout
        while writer.written < records:
            assert time.monotonic() < deadline, f"wrote {writer.written} of {records} records"
            assert not writer.crashed, writer.crash_reason
            await asyncio.sleep(0.05)
        assert writer.written == records
    finally:
        await writer.stop()
    return writer
