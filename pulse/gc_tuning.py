"""The cyclic garbage collector of Pulse's long-running processes (worker, API, bridge).

A full collection walks every object the collector tracks while the event loop waits: in a
process that imported faust, aiohttp, redis-py and the rest, that is about a hundred
milliseconds, during which no answer goes out (bench/README.md's log). What start-up made
lives as long as the process, so :func:`freeze_startup` collects once and freezes it (never
scanned again), then sets the process's thresholds. Cycles made later (asyncio's tasks,
exceptions) are still collected. Each process's command says which thresholds and why
(``pulse.app.tune_gc``, ``pulse api`` in pulse/cli.py, ``pulse.bridge.tune_gc``); not a
library's business, so only a process's command calls it.
"""

from __future__ import annotations

import gc

SERVICE_THRESHOLDS = (20_000, 20, 100)
"""Thresholds for a worker or an API process (Python 3.11's defaults: 700, 10, 10): young
collections every 20,000 allocations, so that a flush's outputs or a request's objects are
mostly freed before one scans them, and older ones rarely."""


def freeze_startup(thresholds: tuple[int, int, int]) -> None:
    """Collect, freeze what the process made so far, and set ``thresholds``."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
