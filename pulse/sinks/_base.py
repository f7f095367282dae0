"""The sink contract: one flush's outputs in, written durably out."""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from models.alerts import AlertTransition
from models.outputs import ClosedWindow, DeadLetter, Latest, OpenView
from tables.partition_state import Drained

if TYPE_CHECKING:
    from pulse.sinks.dead_letters import OutputDeadLetters

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FlushBatch:
    """What one flush hands to every sink.

    ``closed``: windows that closed since the last flush, in close order per partition.
    ``open_views``: the newest open window of each series that changed (``state=None``:
    the series has no open window any more). ``latest``: changed latest values.
    ``dead_letters``: records rejected since the last flush. ``sliding``: changed sliding
    windows (``start`` exclusive, ``end`` inclusive: the key's latest event time).
    ``alerts``: the alert transitions since the last flush, in order per partition.
    """

    closed: Sequence[ClosedWindow] = ()
    open_views: Sequence[OpenView] = ()
    latest: Sequence[Latest] = ()
    dead_letters: Sequence[DeadLetter] = field(default_factory=tuple)
    sliding: Sequence[OpenView] = ()
    alerts: Sequence[AlertTransition] = ()

    @classmethod
    def of(cls, drains: Sequence[Drained], dead_letters: Sequence[DeadLetter]) -> FlushBatch:
        """One flush's outputs from the drains of its partitions and its rejected records."""
        return cls(
            [window for drained in drains for window in drained.closed],
            [view for drained in drains for view in drained.open_views],
            [latest for drained in drains for latest in drained.latest],
            dead_letters,
            [view for drained in drains for view in drained.sliding_views],
            [alert for drained in drains for alert in drained.alerts],
        )

    @classmethod
    def merge(cls, batches: Sequence[FlushBatch]) -> FlushBatch:
        """Consecutive batches as one, in order (a sink that fell behind writes them so).

        Closed windows and dead letters are all kept; for the live state (open views,
        latest values, sliding views) a later entry for the same key supersedes an earlier
        one, which a sink writing by key resolves by writing the last (see RedisSink).
        """
        return cls(
            [window for batch in batches for window in batch.closed],
            [view for batch in batches for view in batch.open_views],
            [latest for batch in batches for latest in batch.latest],
            [letter for batch in batches for letter in batch.dead_letters],
            [view for batch in batches for view in batch.sliding],
            [alert for batch in batches for alert in batch.alerts],
        )

    @classmethod
    def newest_per_key(cls, batches: Sequence[FlushBatch]) -> FlushBatch:
        """Consecutive batches as one that holds, per key of a target that keeps only the
        newest state per key (Redis), the newest entry (see :class:`NewestPerKey`)."""
        folded = NewestPerKey()
        for batch in batches:
            folded.add(batch)
        return folded.batch()

    @property
    def empty(self) -> bool:
        return not (
            self.closed
            or self.open_views
            or self.latest
            or self.dead_letters
            or self.sliding
            or self.alerts
        )


class NewestPerKey:
    """Batches folded one at a time into the newest entry per key of a target that keeps
    only the newest state per key (Redis): the last latest value per (device, metric), open
    and sliding view per (window, device, metric), and the closed window with the latest
    start per (window, device, metric) (ties: the later). Dead letters and alerts are left
    out. Its size is bounded by the keys however many batches it folds, and adding a batch
    costs that batch's entries only (a mirroring lane folds every flush while its target is
    away or slow; refolding what it held each time cost the worker more the longer that
    lasted)."""

    def __init__(self) -> None:
        self.latest: dict[tuple[str, str], Latest] = {}
        self.views: dict[tuple[str, str, str], OpenView] = {}
        self.sliding: dict[tuple[str, str, str], OpenView] = {}
        self.closed: dict[tuple[str, str, str], ClosedWindow] = {}

    def add(self, batch: FlushBatch) -> None:
        """Fold ``batch``, which comes after every batch folded before."""
        latest, views, sliding, closed = self.latest, self.views, self.sliding, self.closed
        for value in batch.latest:
            latest[(value.device, value.metric)] = value
        for view in batch.open_views:
            views[(view.window, view.device, view.metric)] = view
        for view in batch.sliding:
            sliding[(view.window, view.device, view.metric)] = view
        for window in batch.closed:
            key = (window.window, window.device, window.metric)
            before = closed.get(key)
            if before is None or before.start_us <= window.start_us:
                closed[key] = window

    def batch(self) -> FlushBatch:
        """What was folded, as one batch."""
        return FlushBatch(
            list(self.closed.values()),
            list(self.views.values()),
            list(self.latest.values()),
            (),
            list(self.sliding.values()),
        )


class SinkHealth:
    """A sink's state as ``/health`` and ``/metrics`` show it, and its log of changes.

    ``state``: ``ok`` (the last write went through), ``waiting`` (backpressure: the target
    asked to wait or could not be reached) or ``refused_by_target`` (it refused the client:
    an operator must act), with ``reason`` (the target's answer) and ``since`` (epoch
    seconds of the change). A change of state is logged once, not each retry: an outage of
    an hour is two lines in the log, not thousands. ``dead_letters``: the refused outputs
    this sink has stored in the output dead-letter topic. ``backpressure`` and ``refusals``:
    the failed tries of each kind so far (every retry counts, for ``/metrics``).
    """

    OK = "ok"
    WAITING = "waiting"
    REFUSED = "refused_by_target"

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = self.OK
        self.reason: str | None = None
        self.since = time.time()
        self.dead_letters = 0
        self.backpressure = 0
        self.refusals = 0
        self.listeners: list[Callable[[str], None]] = []
        """Called with the new state at each change (agents/flush.py's MirrorLane)."""

    def ok(self) -> None:
        if self.state != self.OK:
            log.warning(
                "%s sink: ok again after %.1f s %s",
                self.name,
                time.time() - self.since,
                "waiting" if self.state == self.WAITING else "refused",
            )
            self._set(self.OK, None)

    def waiting(self, reason: str) -> None:
        self.backpressure += 1
        if self.state != self.WAITING:
            log.warning(
                "%s sink: waiting (backpressure), outputs kept and retried: %s", self.name, reason
            )
            self._set(self.WAITING, reason)
        self.reason = reason

    def refused(self, reason: str) -> None:
        self.refusals += 1
        if self.state != self.REFUSED:
            log.error(
                "%s sink: refused by its target (fix the configuration or the target; outputs "
                "are kept and retried): %s",
                self.name,
                reason,
            )
            self._set(self.REFUSED, reason)
        self.reason = reason

    def _set(self, state: str, reason: str | None) -> None:
        self.state, self.reason, self.since = state, reason, time.time()
        for listener in self.listeners:
            listener(state)

    def document(self) -> dict[str, Any]:
        """What ``/health`` shows of this sink."""
        doc: dict[str, Any] = {"state": self.state, "since": self.since}
        if self.reason is not None:
            doc["reason"] = self.reason
        doc["dead_letters"] = self.dead_letters
        return doc


class Sink(abc.ABC):
    """Where flushed outputs go. A connector implements :meth:`write`; start/stop are optional.

    Guarantees a sink must give:

    * ``write`` returns only once the batch is durable in the target; it raises only for a
      programming error, never for a target that is slow, full, away or refusing. Backpressure
      (HTTP 429, ``Retry-After``, connection refused) and a refusal of the client (a bad
      token, a missing bucket) are reasons to wait and retry, never to drop (pulse/sinks/
      _retry.py), reported in :attr:`health`. An output the target refuses for its content
      is stored in the output dead-letter topic with the target's answer
      (pulse/sinks/dead_letters.py) and the rest of the batch written: one bad output never
      holds back the others.
    * ``write`` is idempotent: after a crash the same windows are flushed again with identical
      content, and the target must end up as if they were written once (overwrite by key, or
      identical repeats).
    * A batch may come late, from a worker that lost its partitions (a zombie), after newer
      ones of another worker: a target that keeps only the latest per key must not go back
      to it (the Redis sink writes each key only if its version is not older); a target of
      identical repeats needs nothing (docs/architecture.md, "Zombies").
    * Batches arrive one at a time, in order; a sink needs no locking of its own. A sink that
      fell behind gets the batches that waited as one (:meth:`FlushBatch.merge`): entries for
      the same key may then repeat, and the last one is the newest.
    """

    name: str = "sink"
    mirrors_state: bool = False
    """True for a sink whose target holds only the newest state per key, rewritable from the
    worker's state (Redis): while its target is away, flushes complete without it and,
    once it answers again, it gets every key of the state rewritten (agents/flush.py,
    MirrorLane). Every other sink's outputs are durable before the state moves on."""

    paces_flushes: bool = True
    """Whether flushes come sooner while this sink has written the previous ones (see
    ``PULSE_FLUSH_INTERVAL``). False for a sink whose lane catches up with merged batches
    when it falls behind (Redis's window keys): waiting for it would slow the flushes that
    keep the latest values fresh."""

    @property
    def connections(self) -> int:
        """Connections made to the target so far (0: not counted; for a Redis Cluster, the
        readings of its layout). A new one may reach a restarted or failed-over server that
        lost what it held (agents/flush.py, MirrorLane)."""
        return 0

    @property
    def health(self) -> SinkHealth:
        """This sink's state (see :class:`SinkHealth`), made on first use."""
        health: SinkHealth | None = self.__dict__.get("_health")
        if health is None:
            health = self.__dict__["_health"] = SinkHealth(self.name)
        return health

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect. Called once before the first write."""

    @abc.abstractmethod
    async def write(self, batch: FlushBatch) -> None:
        """Write one flush's outputs durably (see the class docstring)."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Called once after the last write."""


Item = TypeVar("Item")


class RecordSink(Sink, Generic[Item]):
    """A sink written from an output topic read back rather than by the flush
    (agents/topic_writer.py: InfluxDB and the Redis history from ``aggregates``, the alerts'
    Redis keys and InfluxDB measurement from ``alerts``): each record is first read into the
    sink's own item (:meth:`read_record`), then a fetch's items are written together
    (:meth:`write_records`), under the guarantees of :meth:`Sink.write`. A record the sink
    cannot read (no record of its topic's contract) goes to ``dead_letters`` as
    ``unreadable``; the rest are written.
    """

    dead_letters: OutputDeadLetters | None = None

    @abc.abstractmethod
    def read_record(self, value: bytes | None) -> Item:
        """The item of one record's value; ValueError (saying why) for a value that is not a
        record of the topic's contract."""

    @abc.abstractmethod
    async def write_records(self, items: Sequence[Item], keys: Sequence[bytes | None]) -> None:
        """Write ``items`` (``keys[i]``: the record key of ``items[i]``, the device), in
        order; returns once every one is durable or, refused for its content,
        dead-lettered."""
