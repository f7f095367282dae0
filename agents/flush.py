"""Flushes of the readings processor: the outputs durable before the state that produced them.

A flush drains each partition's state (closed windows, changed views, latest values and the
changelog delta) and writes it in the background: each sink on its own lane in flush order;
once every sink has the flush and the previous flush has handed its deltas over, its deltas
go to the changelog lane, which stores them in order (in rounds: on Apache Kafka one
transaction per partition, rounds at least TRANSACTION_INTERVAL apart), then the input
offsets are committed. A crash in between replays the same
records from the last delta and emits the same windows again, identical: outputs are
at-least-once with identical repeats, state is exactly-once. At most MAX_FLUSHES_IN_FLIGHT
flushes (MAX_WINDOWS_IN_FLIGHT closed windows) are in flight; beyond that processing waits for
the oldest, so a stalled Kafka holds back consumption and nothing is dropped. Redis, a mirror
of the state, is waited for only while it keeps up (MirrorLane): away, it is rewritten from
the state on its return.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import TopicPartition
from mode import Service

from models.alerts import Registry
from models.outputs import DeadLetter, Latest, OpenView
from pulse.changelog import ChangelogWriter, EncodedDelta
from pulse.metrics import WorkerMetrics
from pulse.settings import Settings
from pulse.sinks._base import FlushBatch, NewestPerKey, Sink, SinkHealth
from tables.partition_state import Drained, PartitionState

log = logging.getLogger(__name__)

MAX_FLUSHES_IN_FLIGHT = 64
MAX_WINDOWS_IN_FLIGHT = 200_000
"""Bounds on flushes written but not complete: memory, and how far a slow sink may lag."""
INPUT_PAUSE = 1.0
"""Seconds of fetches without a record after which the input counts as paused (see
FlushPipeline.close_spread_us)."""
TRANSACTION_INTERVAL = 1.0
"""Least time between two rounds of changelog transactions (see ChangelogLane)."""


FREEZE_VARIABLE = "PULSE_TEST_FREEZE_AT"
FREEZE_STEPS = ("sinks", "between_sinks", "changelog", "commit")


class FlushFreeze:
    """TEST-ONLY: a worker that stops itself at one step of a flush, as a paused process
    would (tests/integration/test_zombie.py). Off unless the environment sets
    ``PULSE_TEST_FREEZE_AT={step}:{n}`` (not a setting: never set it in production).

    Once, at ``step`` of the n-th flush holding closed windows, the process sends itself
    SIGSTOP (a test sends SIGCONT): ``sinks`` before any sink has the flush,
    ``between_sinks`` after the Kafka sink wrote it and before the Redis sink writes it,
    ``changelog`` after every sink wrote it and before its changelog deltas, ``commit`` after
    its deltas and before the offset commit.
    """

    def __init__(self, step: str | None, flush: int) -> None:
        self.step = step
        self.flush = flush

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FlushFreeze:
        text = env.get(FREEZE_VARIABLE, "")
        if not text:
            return cls(None, 0)
        step, _, flush = text.partition(":")
        if step not in FREEZE_STEPS or not flush.isdigit() or int(flush) < 1:
            raise ValueError(f"{FREEZE_VARIABLE}={text!r}: {{{'|'.join(FREEZE_STEPS)}}}:{{n >= 1}}")
        return cls(step, int(flush))

    def wanted(self, step: str, flush: int | None) -> bool:
        """Whether the process is to stop at ``step`` of flush number ``flush``."""
        return self.step == step and flush == self.flush

    def at(self, step: str, flush: int | None) -> None:
        """Stop the process here if this is the step and flush to stop at (once)."""
        if self.wanted(step, flush):
            self.step = None
            log.warning("test freeze (%s): SIGSTOP at %s of flush %s", FREEZE_VARIABLE, step, flush)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGSTOP)


class RegistrySource(Protocol):
    """Where the processor gets the registry it judges alerts by (pulse/registry's cache)."""

    def current(self) -> Registry | None:
        """The newest registry this process has loaded (None: none yet); no I/O."""

    async def at_version(self, version: int) -> Registry:
        """The registry exactly as of ``version`` (a recovered partition's); raises if it
        cannot be read now."""


class SinkLane:
    """One sink's writes, one at a time and in flush order.

    Batches submitted while a write is under way wait; the next write takes all of them as
    one merged batch (:meth:`FlushBatch.merge`), so a sink that fell behind catches up with
    fewer, larger writes (Redis then writes each key once, with its newest value).
    """

    def __init__(self, sink: Sink, observe: Callable[[float], None] | None = None) -> None:
        self.sink = sink
        self.observe = observe
        """Called with the seconds of each write that went through (pulse.metrics)."""
        self._waiting: list[
            tuple[FlushBatch, asyncio.Future[None], Callable[[], Awaitable[None]] | None]
        ] = []
        self._task: asyncio.Future[None] | None = None

    @property
    def idle(self) -> bool:
        return not self._waiting and (self._task is None or self._task.done())

    def submit(
        self, batch: FlushBatch, gate: Callable[[], Awaitable[None]] | None = None
    ) -> asyncio.Future[None]:
        """Queue a batch; the future is done once the sink has written it durably.
        ``gate`` (test only, see FlushFreeze) is awaited before the write that takes it."""
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((batch, written, gate))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._write_waiting())
        return written

    async def _write_waiting(self) -> None:
        while self._waiting:
            taken, self._waiting = self._waiting, []
            batches = [batch for batch, _, _ in taken]
            try:
                for _, _, gate in taken:
                    if gate is not None:
                        await gate()
                began = time.monotonic()
                await self.sink.write(
                    batches[0] if len(batches) == 1 else FlushBatch.merge(batches)
                )
                if self.observe is not None:
                    self.observe(time.monotonic() - began)
            except Exception as exc:  # a bug in a sink: every flush waiting on it fails
                for _, written, _ in taken + self._waiting:
                    if not written.done():
                        written.set_exception(exc)
                self._waiting = []
                return
            for _, written, _ in taken:
                if not written.done():
                    written.set_result(None)


class MirrorLane:
    """The lane of a sink that mirrors the state (``Sink.mirrors_state``: Redis).

    While its target answers it is a :class:`SinkLane`: writes in flush order, and a flush
    completes only once this sink wrote it. When a write fails (the sink's health leaves
    ``ok``, or a write has been under way for ``patience``) the lane detaches: every flush
    waiting on it completes at once, and the batches of later flushes are folded into the
    newest entry per key (:class:`NewestPerKey`, each fold costing only the batch it adds), so
    its memory is bounded by the keys however long the target is away or slow, and Kafka,
    InfluxDB and the changelog go on. Once the sink's retried write goes through, the lane
    writes the pending batch, then attaches again. When a write made a new connection (the
    server may be a restarted one that lost keys or holds older ones), the lane also writes
    every live key of the current state (``live_state``: latest values, open and sliding
    windows). The writes are fenced by version, so neither can take a key back.
    """

    def __init__(
        self,
        sink: Sink,
        live_state: Callable[[], FlushBatch],
        patience: float,
        observe: Callable[[float], None] | None = None,
    ) -> None:
        self.sink = sink
        self.live_state = live_state
        self.patience = patience
        self.observe = observe
        """Called with the seconds of each write that went through (pulse.metrics)."""
        self._waiting: list[
            tuple[FlushBatch, asyncio.Future[None], Callable[[], Awaitable[None]] | None]
        ] = []
        self._writing: list[asyncio.Future[None]] = []
        self._pending: NewestPerKey | None = None
        self.detached = False
        """Flushes complete without this sink (its target is away or being rewritten)."""
        self._rewrite_due = False
        self.rewrites = 0
        """Rewrites of the whole state done (for tests and logs)."""
        self._task: asyncio.Future[None] | None = None
        sink.health.listeners.append(self._health_changed)

    @property
    def idle(self) -> bool:
        return (
            not self._waiting
            and self._pending is None
            and not self._rewrite_due
            and (self._task is None or self._task.done())
        )

    def submit(
        self, batch: FlushBatch, gate: Callable[[], Awaitable[None]] | None = None
    ) -> asyncio.Future[None]:
        """Queue a batch; the future is done once the sink has written it, or at once while
        the lane is detached (``gate``: see SinkLane.submit; skipped while detached)."""
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.detached:
            self._fold(batch)
            written.set_result(None)
        else:
            self._waiting.append((batch, written, gate))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        return written

    async def close(self) -> None:
        """Stop writing (the worker stops): what is pending is left to the next rewrite."""
        if self._pending is not None or self._rewrite_due:
            log.warning(
                "%s: stopping while its target is away; its keys are rewritten when a worker "
                "that owns the partitions next finds the target back",
                self.sink.name,
            )
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _fold(self, batch: FlushBatch) -> None:
        if self._pending is None:
            self._pending = NewestPerKey()
        self._pending.add(batch)

    def _health_changed(self, state: str) -> None:
        if state != SinkHealth.OK:
            self._detach(f"its target is away or slow ({state})")

    def _detach(self, why: str) -> None:
        if self.detached:
            return
        self.detached = True
        log.warning(
            "%s sink: flushes go on without it, %s; its keys are written again when it keeps up",
            self.sink.name,
            why,
        )
        # The write under way is retried until it goes through; nothing waits for it.
        for written in self._writing:
            if not written.done():
                written.set_result(None)
        for batch, written, _ in self._waiting:
            self._fold(batch)
            if not written.done():
                written.set_result(None)
        self._waiting = []

    async def _run(self) -> None:
        while True:
            if self.detached and self._pending is None and not self._rewrite_due:
                if self.sink.health.state != SinkHealth.OK:
                    return  # the next submit goes on
                self.detached = False
                log.warning("%s sink: caught up, flushes wait for it again", self.sink.name)
            gates: list[Callable[[], Awaitable[None]]] = []
            if self.detached or self._rewrite_due:
                folded = NewestPerKey() if self._pending is None else self._pending
                self._pending = None
                if self._rewrite_due:
                    self._rewrite_due = False
                    folded.add(self.live_state())
                    self.rewrites += 1
                batch = folded.batch()
            elif self._waiting:
                taken, self._waiting = self._waiting, []
                self._writing = [written for _, written, _ in taken]
                batches = [batch for batch, _, _ in taken]
                batch = batches[0] if len(batches) == 1 else FlushBatch.merge(batches)
                gates = [gate for _, _, gate in taken if gate is not None]
            else:
                return
            connections = self.sink.connections
            try:
                for gate in gates:
                    await gate()
                await self._write(batch)
            except Exception as exc:  # a bug in the sink: every flush waiting on it fails
                for written in self._writing + [w for _, w, _ in self._waiting]:
                    if not written.done():
                        written.set_exception(exc)
                self._waiting, self._writing = [], []
                return
            for written in self._writing:
                if not written.done():
                    written.set_result(None)
            self._writing = []
            if connections and self.sink.connections > connections:
                # A new connection during the write: it may reach a restarted or failed-over
                # server that lost keys or holds older ones. Every key of the state again.
                log.info(
                    "%s sink: new connection (the server may be a restarted or failed-over "
                    "one that lacks the last writes): every live key is written again",
                    self.sink.name,
                )
                self._rewrite_due = True

    async def _write(self, batch: FlushBatch) -> None:
        """The sink's write; one under way longer than ``patience`` detaches the lane (a
        frozen target answers nothing, not even an error, until a timeout)."""
        began = time.monotonic()
        write = asyncio.ensure_future(self.sink.write(batch))
        try:
            if not self.detached:
                done, _ = await asyncio.wait({write}, timeout=self.patience)
                if not done:  # the sink says ok again once the write goes through
                    self.sink.health.waiting(f"a write under way for {self.patience:.1f} s")
            await write
            if self.observe is not None:
                self.observe(time.monotonic() - began)
        except asyncio.CancelledError:
            write.cancel()
            raise


class ChangelogLane:
    """The changelog's writes: deltas in flush order, one round at a time.

    A round writes every delta submitted since the previous one (:meth:`ChangelogWriter.write`:
    with transactions, one per partition). With transactions, rounds start at least
    ``interval`` apart unless :meth:`hurry` asks for the next one now: a transaction costs
    the broker and the worker far more than its records (docs/architecture.md), so flushes
    that come faster share one. A crash replays at most that much more input, with
    identical outputs.
    """

    def __init__(self, writer: ChangelogWriter, interval: float) -> None:
        self.writer = writer
        self.interval = interval
        self._waiting: list[tuple[list[EncodedDelta], asyncio.Future[set[int]]]] = []
        self._task: asyncio.Future[None] | None = None
        self._hurry = asyncio.Event()
        self._last_round = -math.inf

    def submit(self, deltas: list[EncodedDelta]) -> asyncio.Future[set[int]]:
        """Queue a flush's deltas; the future gives the partitions whose deltas are stored."""
        stored: asyncio.Future[set[int]] = asyncio.get_running_loop().create_future()
        self._waiting.append((deltas, stored))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._write_waiting())
        return stored

    def hurry(self) -> None:
        """Start the next round without waiting for the interval (a handover, a stop, or
        the in-flight bound waits for it)."""
        self._hurry.set()

    async def _write_waiting(self) -> None:
        while self._waiting:
            wait = self._last_round + self.interval - time.monotonic()
            if wait > 0 and not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), wait)
            self._hurry.clear()
            self._last_round = time.monotonic()
            taken, self._waiting = self._waiting, []
            try:
                stored = await self.writer.write([d for deltas, _ in taken for d in deltas])
            except Exception as exc:  # every flush waiting on it fails
                for _, future in taken + self._waiting:
                    if not future.done():
                        future.set_exception(exc)
                self._waiting = []
                return
            for _, future in taken:
                if not future.done():
                    future.set_result(stored)


class FlushPipeline(Service):
    """The flushing half of the readings processor (a base class of ReadingsProcessor).

    A flush is prepared synchronously under the processor's lock (drain the states, compute
    every output, serialise the deltas), then written while the loop goes on processing.
    While readings arrive, a flush spreads the closes of windows that end together over
    ``PULSE_CLOSE_SPREAD`` of event time (:meth:`close_spread_us`).
    """

    def __init__(
        self, settings: Settings, metrics: WorkerMetrics | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.metrics = WorkerMetrics() if metrics is None else metrics
        """What this processor counts for ``/metrics``, per fetch and per flush."""
        self.states: dict[int, PartitionState] = {}
        """The assigned partitions' states (see PartitionOwner)."""
        # Set up by ReadingsProcessor.on_start: the input's consumer (offsets are committed
        # through it), the changelog and the sinks.
        self.consumer: AIOKafkaConsumer | None = None
        self.writer: ChangelogWriter | None = None
        self.sinks: list[Sink] = []
        self._lock = asyncio.Lock()
        """Held while records are applied, a flush is prepared, or partitions change hands."""
        self._dead_letters: list[DeadLetter] = []
        """Rejected records for the next flush."""
        self._empty_since: float | None = 0.0
        """When the loop began the first of the fetches in a row that returned no record
        (None: the last fetch returned records)."""
        self._last_flush = time.monotonic()
        self._in_flight: deque[tuple[asyncio.Future[None], int]] = deque()
        """Flushes not yet complete (sinks, changelog, offsets), oldest first, with their
        closed-window counts."""
        self._windows_in_flight = 0
        self._flush_tail: asyncio.Future[None] | None = None
        """The newest flush's deltas handed to the changelog lane (or its failure)."""
        self._lanes: dict[int, SinkLane | MirrorLane] = {}
        self._changelog: ChangelogLane | None = None
        self.flushes = 0
        """Flushes whose deltas the changelog has acked."""
        self._closing_flushes = 0
        """Flushes submitted that held closed windows (numbered for FlushFreeze)."""
        self._freeze = FlushFreeze.from_env(os.environ)
        self._drain_timing = (time.monotonic(), 0.0)
        """When the last flush prepared began its drain, and the seconds the drain took."""
        self.registry_source: RegistrySource | None = None
        """The registry alerts are judged by (None: no registry, no alerts)."""
        self.registry_required = False
        """``PULSE_REGISTRY_REQUIRED``: readings of devices not in the registry are
        dead-lettered (PartitionState.use_registry)."""
        self._switching = False
        """The flush prepared last records a new registry version (see _prepare_flush)."""
        self.registry_switched: dict[int, float] = {}
        """Per partition, when (epoch seconds) it began to judge by the registry version it
        uses: the drain that switched to it, or the takeover that recovered it (for
        ``/metrics``: how long a change takes to be used, bench.registry_delay)."""

    @property
    def sinks_idle(self) -> bool:
        """Every sink that paces flushes (``Sink.paces_flushes``) has written every flush
        submitted to it."""
        return all(lane.idle for lane in self._lanes.values() if lane.sink.paces_flushes)

    def registry_pending(self) -> bool:
        """The registry source holds a version that some partition does not judge by yet:
        the next flush switches it (see _prepare_flush), so the loop need not wait for the
        flush interval (a change is used a loop turn after the cache loaded it)."""
        source = self.registry_source
        wanted = None if source is None else source.current()
        if wanted is None:
            return False
        version = wanted.version
        return any(
            state.registry_version != version or state.registry is None
            for state in self.states.values()
        )

    def note_fetch(self, began: float, got_records: bool) -> None:
        """Record a fetch that the loop began at ``began`` (monotonic seconds)."""
        if got_records:
            self._empty_since = None
        elif self._empty_since is None:
            self._empty_since = began

    def close_spread_us(self, now: float) -> int:
        """Event time over which a flush outside catch-up spreads windows that end together
        (``PULSE_CLOSE_SPREAD``; see PartitionState.close_ready).

        The epoch-aligned windows of every series end together; closed at once, such a burst
        saturates a small machine for seconds and the fresh values of the flushes behind it
        wait. No spreading (0) once fetches have found no record for INPUT_PAUSE seconds (at
        least a flush interval): with the input paused or ended there is nothing to keep
        fresh, and the watermark, which spreading follows, no longer advances. That time
        counts from the first of the empty fetches in a row: the loop's own work (a long
        flush in a burst) is no pause in the input, and after it the next fetch may find
        nothing prefetched yet. It is a second, not a flush interval, because on a saturated
        machine fetches come back empty for longer while records wait (see bench/README.md,
        "Closing windows that end together over event time").
        """
        empty_since = self._empty_since
        pause = max(INPUT_PAUSE, self.settings.flush_interval)
        if empty_since is not None and now - empty_since >= pause:
            return 0
        return self.settings.close_spread_us

    async def flush(self) -> None:
        """Flush now (outputs, changelog, offsets); returns when all are durable."""
        async with self._lock:
            await self._flush_now()

    async def _flush_now(self, partitions: set[int] | None = None) -> None:
        prepared = self._prepare_flush(partitions)
        if prepared is not None:
            self._submit_flush(*prepared)
        await self._settle(0)

    async def _start_flush(self, spread_closes: bool) -> None:
        await self._settle(MAX_FLUSHES_IN_FLIGHT - 1, MAX_WINDOWS_IN_FLIGHT)
        prepared = self._prepare_flush(spread_closes=spread_closes)
        if prepared is not None:
            self._submit_flush(*prepared)
        if self._switching:
            # A new registry version is in this flush's deltas: nothing judged by it may
            # reach a sink before they are stored (a replay must judge by it too), so the
            # loop waits for this flush, under the lock, before it applies more records.
            await self._settle(0)

    async def _settle(self, flushes: int, windows: int | None = None) -> None:
        """Wait for the oldest flushes until at most ``flushes`` (and ``windows`` closed
        windows) are in flight; raise what a finished flush raised."""
        in_flight = self._in_flight
        while in_flight and (
            len(in_flight) > flushes
            or in_flight[0][0].done()
            or (windows is not None and self._windows_in_flight > windows)
        ):
            finished, closed = in_flight[0]
            if not finished.done() and self._changelog is not None:
                self._changelog.hurry()
            await finished
            in_flight.popleft()
            self._windows_in_flight -= closed

    def _submit_flush(self, batch: FlushBatch, deltas: list[EncodedDelta]) -> None:
        number = None
        if batch.closed:
            self._closing_flushes += 1
            number = self._closing_flushes
        self._freeze.at("sinks", number)
        written: list[asyncio.Future[None]] = []
        if not batch.empty:
            by_name: dict[str, asyncio.Future[None]] = {}
            for index, sink in enumerate(self.sinks):
                lane = self._lanes.get(index)
                if lane is None or lane.sink is not sink:
                    observe = self.metrics.sink_write_seconds.labels(sink.name).observe
                    lane = self._lanes[index] = (
                        MirrorLane(sink, self.live_state, self._mirror_patience, observe)
                        if sink.mirrors_state
                        else SinkLane(sink, observe)
                    )
                gate = None
                if sink.name == "redis" and self._freeze.wanted("between_sinks", number):
                    gate = self._freeze_between_sinks(by_name.get("kafka"), number)
                written.append(lane.submit(batch, gate))
                by_name[sink.name] = written[-1]
        handed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Retrieved here, so that a failure is not reported again when no flush follows.
        handed.add_done_callback(lambda f: f.cancelled() or f.exception())
        finished = asyncio.ensure_future(
            self._complete_flush(
                self._flush_tail, written, deltas, handed, number, self._drain_timing
            )
        )
        self._flush_tail = handed
        self._in_flight.append((finished, len(batch.closed)))
        self._windows_in_flight += len(batch.closed)

    def _prepare_flush(
        self, partitions: set[int] | None = None, spread_closes: bool = False
    ) -> tuple[FlushBatch, list[EncodedDelta]] | None:
        assert self.writer is not None
        began = self._last_flush = time.monotonic()
        spread_us = self.close_spread_us(self._last_flush) if spread_closes else 0
        drains: list[Drained] = []
        deltas: list[EncodedDelta] = []
        closed: dict[int, int] = {}
        source = self.registry_source
        wanted = None if source is None else source.current()
        self._switching = False
        switched: list[int] = []
        for partition, state in self.states.items():
            if partitions is not None and partition not in partitions:
                continue
            switch = None
            if wanted is not None and (
                wanted.version != state.registry_version or state.registry is None
            ):
                switch = wanted
                self._switching = True
                switched.append(partition)
            drained = state.drain(self.writer.snapshot_due(partition), spread_us, switch)
            drains.append(drained)
            closed[partition] = len(drained.closed)
            delta = drained.delta
            if (
                delta.snapshot
                or not delta.empty
                or delta.to_offset != delta.from_offset
                or switch is not None
            ):
                deltas.append(self.writer.encode(partition, delta))
        if switched:
            assert wanted is not None
            now = time.time()
            for partition in switched:
                self.registry_switched[partition] = now
            log.info(
                "registry: partitions %s judge alerts by version %d from offsets %s on",
                switched,
                wanted.version,
                [self.states[p].next_offset for p in switched],
            )
        batch = FlushBatch.of(drains, self._dead_letters)
        self.metrics.count_flush(
            closed, ((letter.partition, letter.reason) for letter in self._dead_letters)
        )
        self._dead_letters = []
        self._drain_timing = (began, time.monotonic() - began)
        if batch.empty and not deltas:
            return None
        return batch, deltas

    @property
    def _mirror_patience(self) -> float:
        """How long a mirroring sink's write may take before flushes stop waiting for it:
        half the time the in-flight bound lets flushes queue, so that a frozen Redis never
        holds back consumption."""
        return MAX_FLUSHES_IN_FLIGHT * self.settings.flush_interval / 2

    def live_state(self) -> FlushBatch:
        """Every live output of the assigned partitions' states, as they are now (see
        PartitionState.live_views): what a mirroring sink's rewrite writes."""
        views: list[OpenView] = []
        latest: list[Latest] = []
        sliding: list[OpenView] = []
        for state in self.states.values():
            state_views, state_latest, state_sliding = state.live_views()
            views += state_views
            latest += state_latest
            sliding += state_sliding
        return FlushBatch((), views, latest, (), sliding)

    async def close_lanes(self) -> None:
        """Stop the mirroring lanes' writes (at stop, after the last flush)."""
        for lane in self._lanes.values():
            if isinstance(lane, MirrorLane):
                await lane.close()

    def _freeze_between_sinks(
        self, kafka_written: asyncio.Future[None] | None, number: int | None
    ) -> Callable[[], Awaitable[None]]:
        """FlushFreeze's ``between_sinks`` gate of the Redis lane: once the Kafka sink (listed
        before Redis) wrote the flush, stop before Redis writes it."""

        async def gate() -> None:
            if kafka_written is not None:
                await asyncio.shield(kafka_written)
            self._freeze.at("between_sinks", number)

        return gate

    async def _complete_flush(
        self,
        previous: asyncio.Future[None] | None,
        written: list[asyncio.Future[None]],
        deltas: list[EncodedDelta],
        handed: asyncio.Future[None],
        number: int | None = None,
        drain_timing: tuple[float, float] | None = None,
    ) -> None:
        """After every sink wrote this flush and the previous flush handed its deltas to the
        changelog lane: this flush's deltas (stored), then the input offsets.
        ``drain_timing``: when its drain began and how long it took (observed in
        pulse.metrics once the deltas are stored)."""
        try:
            if written:
                await asyncio.gather(*written)
            if previous is not None:
                await previous
        except BaseException as exc:
            handed.set_exception(exc)
            raise
        if not deltas:
            handed.set_result(None)
            return
        self._freeze.at("changelog", number)
        stored_future = self._changelog_lane().submit(deltas)
        handed.set_result(None)
        stored = await stored_future
        self.flushes += 1
        if drain_timing is not None:
            began, drain_seconds = drain_timing
            self.metrics.flush_seconds.observe(time.monotonic() - began)
            self.metrics.drain_seconds.observe(drain_seconds)
        self._freeze.at("commit", number)
        assert self.consumer is not None
        topic = self.settings.topic_readings
        offsets = {
            TopicPartition(topic, d.partition): d.to_offset for d in deltas if d.partition in stored
        }
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # Harmless: the changelog, not the group, says where to resume.
            log.info("offset commit skipped (%s); the changelog holds the position", exc)

    def _changelog_lane(self) -> ChangelogLane:
        writer = self.writer
        assert writer is not None
        lane = self._changelog
        if lane is None or lane.writer is not writer:
            interval = TRANSACTION_INTERVAL if writer.transactional else 0.0
            lane = self._changelog = ChangelogLane(writer, interval)
        return lane
