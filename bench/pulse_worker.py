"""The Pulse worker as production runs it, instrumented to time one pass over the dataset.

``python -m bench.pulse_worker --expected N --work-dir DIR --result-file FILE`` runs exactly
what ``pulse worker`` runs (Faust's worker CLI on ``pulse.app:app``, configured by the
``PULSE_*`` environment the parent sets), with two changes: ``agents.readings.ReadingsProcessor``
is replaced, before the app is built, by :class:`BenchProcessor`, a subclass that only
observes, and ``agents.influx_writer.InfluxWriter`` by :class:`BenchWriter`, which only makes
itself known to it. Nothing on the per-record path changes: it counts the records of each
fetch, adds a sink that counts the closed windows (and dead letters) of each flush, and reads
the clocks around fetches and offset commits. Every record, window, sink write, changelog delta and
offset commit is Pulse's own.

What it measures (wall clock ``perf_counter`` and process CPU ``getrusage``, all threads),
observed only through interfaces that Pulse documents: the consumer's ``getmany`` and
``commit`` (the last step of every flush: sinks durable, then changelog acked, then the input
offsets committed), the processor's sink list and ``PartitionState.advance_idle``:

* **start** S: the first fetch that returns records, at the later of the call of that
  ``getmany`` and the end of the partition assignment (so the group join never counts, but the
  first fetch does, as for the ceiling).
* **caught up** C: the first offset commit that covers every fetched reading, once all ``N``
  were fetched: every reading's effect is in Redis, the aggregates topic and the changelog,
  and every window the data itself closes has been emitted (no partition has
  windows waiting to be closed: while readings arrive outside catch-up, windows that end
  together close spread over ``PULSE_CLOSE_SPREAD`` of event time, so over several flushes).
* The windows still open then (the last 10 s and 1 m window of each series, and those within
  the grace) close only when ``PULSE_IDLE_CLOSE`` finds a partition quiet. That wait is
  configured idleness, not work, so it is left out: after C, each stretch from an idle close
  that raised a watermark (of a partition with open windows) to the commit of the flush that
  emitted the last of its windows is added instead.

* VictoriaMetrics is written by the InfluxDB writer from the aggregates topic, after the
  flushes: once the last window is emitted, the wait until the writer (the same process) has
  written and committed every emitted window is added too, so the run still counts every
  output.

``seconds = (C - S) + the idle-close stretches after C + the writer's wait``; ``cpu_seconds``
the same in CPU time,
and ``servers_cpu_seconds`` the same in each local server's CPU time (``BENCH_SERVER_PIDS``).
The raw interval from S to the last window, idle wait included, is in the note. The process
stops itself (SIGTERM, Faust's graceful shutdown) once no partition has an open window left
and the flush that emitted the last ones has committed.

With ``--expected 0`` it is a plain Pulse worker that runs until it is sent SIGTERM (the
latency measurement uses ``python -m pulse worker`` directly instead).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from typing import Any

from agents import influx_writer, readings
from bench.measure import (
    RunResult,
    cpu_spent,
    process_cpu_seconds,
    server_pids,
    servers_cpu_seconds,
    write_result,
)
from pulse.sinks._base import FlushBatch, Sink
from tables.partition_state import PartitionState

Clock = tuple[float, float, dict[str, float]]
"""(perf_counter, process CPU seconds, each local server's CPU seconds)"""

_SERVERS = server_pids()


def _clock() -> Clock:
    return time.perf_counter(), process_cpu_seconds(), servers_cpu_seconds(_SERVERS)


class _WindowCounter(Sink):
    """A sink that only counts the closed windows each flush hands to every sink."""

    name = "bench-counter"

    def __init__(self, processor: BenchProcessor) -> None:
        self.processor = processor

    async def write(self, batch: FlushBatch) -> None:
        self.processor.windows_emitted += len(batch.closed)
        self.processor.dead_lettered += len(batch.dead_letters)


class BenchProcessor(readings.ReadingsProcessor):
    """Pulse's readings processor plus clock readings; behaviour unchanged."""

    expected = 0
    result_file = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.consumed = 0
        self.dead_lettered = 0
        self.windows_emitted = 0
        self._fetched_to: dict[int, int] = {}  # partition -> last fetched offset + 1
        self._committed_to: dict[int, int] = {}
        self._assigned_at: Clock | None = None
        self._start: Clock | None = None
        self._caught_up: Clock | None = None
        self._idle_since: Clock | None = None  # an idle close after C not yet flushed
        self._windows_at_idle = 0
        self._tail_wall = 0.0
        self._tail_cpu = 0.0
        self._tail_servers = dict.fromkeys(_SERVERS, 0.0)
        self._last_emit: Clock | None = None
        self._finished = False

    async def on_start(self) -> None:
        global _processor
        _processor = self
        await super().on_start()
        self.sinks.append(_WindowCounter(self))
        consumer = self.consumer
        assert consumer is not None
        getmany, commit = consumer.getmany, consumer.commit

        async def timed_getmany(*partitions: Any, **kwargs: Any) -> Any:
            called = _clock()
            batches = await getmany(*partitions, **kwargs)
            # Records of a partition whose state is not installed yet are dropped by Pulse
            # and fetched again after the assignment's seek: only the others count.
            for tp, records in batches.items():
                if tp.partition in self.states:
                    if self._start is None:
                        self._start = max(called, self._assigned_at or called, key=lambda c: c[0])
                    self.consumed += len(records)
                    self._fetched_to[tp.partition] = records[-1].offset + 1
            return batches

        async def timed_commit(*args: Any, **kwargs: Any) -> Any:
            try:
                return await commit(*args, **kwargs)
            finally:
                offsets = args[0] if args else kwargs.get("offsets") or {}
                for tp, offset in offsets.items():
                    self._committed_to[tp.partition] = offset
                self._after_commit()

        consumer.getmany = timed_getmany
        consumer.commit = timed_commit
        self.add_future(self._report_progress())

    async def _on_assigned(self, assigned: Any) -> None:
        await super()._on_assigned(assigned)
        self._assigned_at = _clock()

    def idle_closed(self, state: PartitionState) -> None:
        """An idle close raised the watermark of ``state`` (it has open windows)."""
        if self._caught_up is not None and self._idle_since is None and not self._finished:
            self._idle_since = _clock()
            self._windows_at_idle = self.windows_emitted

    def _after_commit(self) -> None:
        if self._finished or not self.expected or self.consumed < self.expected:
            return
        now = _clock()
        # Windows the watermark passed but a drain has not closed yet are still to emit.
        closing = any(state.closing for state in self.states.values())
        if self._caught_up is None:
            if closing or any(
                self._committed_to.get(p, -1) < end for p, end in self._fetched_to.items()
            ):
                return
            self._caught_up = now
            self._last_emit = now
        elif (
            self._idle_since is not None
            and self.windows_emitted > self._windows_at_idle
            and not closing
        ):
            self._tail_wall += now[0] - self._idle_since[0]
            self._tail_cpu += now[1] - self._idle_since[1]
            for name, spent in cpu_spent(self._idle_since[2], now[2]).items():
                self._tail_servers[name] += spent
            self._idle_since = None
            self._last_emit = now
        if self._idle_since is None and all(s.open_windows == 0 for s in self.states.values()):
            self._finish()

    async def _report_progress(self) -> None:
        while not self.should_stop:
            await asyncio.sleep(10.0)
            print(
                f"bench: {self.consumed:,} readings fetched, "
                f"{sum(s.open_windows for s in self.states.values()):,} windows open, "
                f"{self.windows_emitted:,} emitted, {self.dead_lettered:,} dead letters",
                flush=True,
            )

    def _finish(self) -> None:
        self._finished = True
        self.add_future(self._finish_after_influx(_clock()))

    async def _finish_after_influx(self, emitted: Clock) -> None:
        """Once the InfluxDB writer has written every emitted window: the result, then stop."""
        while _writer is None or _writer.written < self.windows_emitted:
            await asyncio.sleep(0.02)
        now = _clock()
        self._tail_wall += now[0] - emitted[0]
        self._tail_cpu += now[1] - emitted[1]
        for name, spent in cpu_spent(emitted[2], now[2]).items():
            self._tail_servers[name] += spent
        assert self._start is not None and self._caught_up is not None
        start, caught, last = self._start, self._caught_up, self._last_emit or self._caught_up
        seconds = caught[0] - start[0] + self._tail_wall
        cpu = caught[1] - start[1] + self._tail_cpu
        servers = {
            name: round(spent + self._tail_servers[name], 3)
            for name, spent in cpu_spent(start[2], caught[2]).items()
        }
        note = (
            f"Faust worker; idle-close wait left out (first record to last window with it: "
            f"{last[0] - start[0]:.2f} s); {self.dead_lettered} dead letters; "
            f"{self.flushes} flushes"
        )
        write_result(
            self.result_file,
            RunResult(
                system="pulse",
                readings=self.consumed,
                seconds=round(seconds, 4),
                cpu_seconds=round(cpu, 3),
                servers_cpu_seconds=servers,
                windows_emitted=self.windows_emitted,
                note=note,
            ),
        )
        print(f"bench: pulse done, {note}", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)


_processor: BenchProcessor | None = None
_writer: BenchWriter | None = None
_advance_idle = PartitionState.advance_idle


class BenchWriter(influx_writer.InfluxWriter):
    """The InfluxDB writer, made known to BenchProcessor (it reads ``written``)."""

    async def on_start(self) -> None:
        global _writer
        await super().on_start()
        _writer = self


def _observed_advance_idle(self: PartitionState, floor_us: int) -> None:
    before = self.watermark
    _advance_idle(self, floor_us)
    if _processor is not None and self.watermark != before and self.open_windows:
        _processor.idle_closed(self)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expected", type=int, required=True, help="readings to process")
    parser.add_argument("--work-dir", required=True, help="Faust's data directory goes here")
    parser.add_argument("--result-file", required=True)
    args = parser.parse_args()
    BenchProcessor.expected = args.expected
    BenchProcessor.result_file = os.path.abspath(args.result_file)
    os.chdir(args.work_dir)
    # create_app() discovers agents.readings, whose register() builds
    # ``readings.ReadingsProcessor(settings)``: it gets this one.
    readings.ReadingsProcessor = BenchProcessor  # type: ignore[misc]
    influx_writer.InfluxWriter = BenchWriter  # type: ignore[misc]
    PartitionState.advance_idle = _observed_advance_idle  # type: ignore[method-assign]

    from pulse.cli import main as pulse_cli

    pulse_cli(["worker", "-l", os.environ.get("BENCH_PULSE_LOGLEVEL", "warn")])


if __name__ == "__main__":
    main()
