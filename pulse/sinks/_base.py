"""The sink contract: one flush's outputs in, written durably out."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field

from models.outputs import ClosedWindow, DeadLetter, Latest, OpenView
from tables.partition_state import Drained


@dataclass(frozen=True, slots=True)
class FlushBatch:
    """What one flush hands to every sink.

    ``closed``: windows that closed since the last flush, in close order per partition.
    ``open_views``: the newest open window of each series that changed (``state=None``:
    the series has no open window any more). ``latest``: changed latest values.
    ``dead_letters``: records rejected since the last flush. ``sliding``: changed sliding
    windows (``start`` exclusive, ``end`` inclusive: the key's latest event time).
    """

    closed: Sequence[ClosedWindow] = ()
    open_views: Sequence[OpenView] = ()
    latest: Sequence[Latest] = ()
    dead_letters: Sequence[DeadLetter] = field(default_factory=tuple)
    sliding: Sequence[OpenView] = ()

    @classmethod
    def of(cls, drains: Sequence[Drained], dead_letters: Sequence[DeadLetter]) -> FlushBatch:
        """One flush's outputs from the drains of its partitions and its rejected records."""
        return cls(
            [window for drained in drains for window in drained.closed],
            [view for drained in drains for view in drained.open_views],
            [latest for drained in drains for latest in drained.latest],
            dead_letters,
            [view for drained in drains for view in drained.sliding_views],
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
        )

    @property
    def empty(self) -> bool:
        return not (
            self.closed or self.open_views or self.latest or self.dead_letters or self.sliding
        )


class Sink(abc.ABC):
    """Where flushed outputs go. A connector implements :meth:`write`; start/stop are optional.

    Guarantees a sink must give:

    * ``write`` returns only once the batch is durable in the target; it raises only for a
      programming error, never for a target that is slow, full or away. Backpressure
      (HTTP 429, ``Retry-After``, connection refused) is a reason to wait and retry, never to
      drop: the processor stops consuming while a write is pending.
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

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect. Called once before the first write."""

    @abc.abstractmethod
    async def write(self, batch: FlushBatch) -> None:
        """Write one flush's outputs durably (see the class docstring)."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Called once after the last write."""
